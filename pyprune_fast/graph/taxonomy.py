"""One taxonomy of op names (as `ir.op_name` gives them: a torch function's, an F function's or a Tensor
method's name), read by the graph's rules, the MAC count (`flops`) and LRP relevance alike."""

from __future__ import annotations

__all__ = ["ACTIVATIONS", "CATS", "COMPARISONS", "CONV_TRANSPOSES", "CONVS", "COPIES", "DETACHES", "DROPOUTS",
           "EXPANDS", "FILLED", "LIKES", "MATH", "MATMULS", "MAX_POOLS", "OTHER_ELEMENTWISE", "PERMUTES", "POOLS",
           "PRODUCTS", "QUOTIENTS", "REDUCTIONS", "RELUS", "RESHAPES", "SIZE_READS", "SPLITS", "SPREADS", "SUMS"]

# Elementwise on one tensor, shape kept.
RELUS = {"relu", "relu_"}
ACTIVATIONS = {
    "relu6", "gelu", "silu", "silu_", "hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_", "sigmoid", "sigmoid_",
    "tanh", "tanh_", "elu", "elu_", "selu", "celu", "leaky_relu", "leaky_relu_", "hardtanh", "hardtanh_", "mish",
    "softplus", "softsign", "logsigmoid", "clamp", "clamp_", "clamp_min", "clamp_max", "clip",
}
DROPOUTS = {"dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout"}
COPIES = {"clone", "contiguous", "to", "float", "half", "double", "bfloat16", "type", "type_as"}
DETACHES = {"detach", "data", "requires_grad_"}  # the same values, cut from autograd
MATH = {"abs", "neg", "exp", "sqrt", "rsqrt", "square", "erf", "log", "sin", "cos", "reciprocal", "pow"}

# Elementwise on several tensors, broadcasting.
SUMS = {"add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__", "rsub"}
PRODUCTS = {"mul", "mul_", "__mul__", "__rmul__", "__imul__"}
QUOTIENTS = {"div", "div_", "__truediv__", "__rtruediv__", "__itruediv__", "true_divide"}
OTHER_ELEMENTWISE = {"where", "maximum", "minimum", "addcmul", "lerp"}
COMPARISONS = {"gt", "lt", "ge", "le", "eq", "ne", "greater", "less", "greater_equal", "less_equal", "not_equal",
               "__gt__", "__lt__", "__ge__", "__le__", "__eq__", "__ne__", "logical_and", "logical_or", "logical_xor",
               "__and__", "__or__", "__xor__"}  # true or false: a dead channel's result may be true

# Moving values around.
RESHAPES = {"view", "reshape", "flatten", "unflatten", "squeeze", "squeeze_", "unsqueeze", "unsqueeze_", "view_as",
            "reshape_as"}
PERMUTES = {"permute", "transpose", "swapaxes", "swapdims", "t", "T", "mT", "movedim"}
EXPANDS = {"expand", "expand_as", "broadcast_to"}
CATS = {"cat", "concat", "concatenate"}
SPLITS = {"split", "chunk", "unbind", "narrow", "select", "tensor_split", "split_with_sizes"}

# Along the spatial dims (channels first).
POOLS = {"avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d",
         "interpolate", "upsample"}
MAX_POOLS = {
    "max_pool1d", "max_pool2d", "max_pool3d", "_max_pool1d", "_max_pool2d", "_max_pool3d", "max_pool1d_with_indices",
    "max_pool2d_with_indices", "max_pool3d_with_indices", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "_adaptive_max_pool1d", "_adaptive_max_pool2d", "_adaptive_max_pool3d",
}

# Reductions over some dims.
REDUCTIONS = {"mean", "sum", "amax", "amin", "nansum", "nanmean"}
SPREADS = {"std", "var"}

# New tensors.
FILLED = {"zeros": 0, "ones": 0, "empty": 0, "full": 0, "new_zeros": 1, "new_ones": 1, "new_empty": 1,
          "new_full": 1}  # new tensors of a shape given in numbers: where the sizes start in the arguments
LIKES = {"zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like", "randint_like"}

SIZE_READS = {"size", "shape", "numel", "__len__"}  # recorded with no outputs; they return `sizes.Size` numbers

# Multiply-accumulates.
CONVS = {"conv1d", "conv2d", "conv3d"}
CONV_TRANSPOSES = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
MATMULS = {"matmul", "bmm", "__matmul__", "einsum"}
