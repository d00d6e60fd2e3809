// kmeanspp_init's argument checks (see kmeanspp_init.h).
#include "kmeanspp_init.h"

#include <algorithm>

namespace pyprune_fast {

c10::Device check_kmeanspp_args(at::TensorList xs, at::IntArrayRef k, const at::Tensor& uniforms) {
  const char* op = "kmeanspp_init";
  TORCH_CHECK_VALUE(xs.size() == k.size(), op, ": got ", xs.size(), " problems but ", k.size(), " values of k");
  const auto device = common_device(op, xs);
  int64_t most = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const auto& x = xs[i];
    TORCH_CHECK_VALUE(x.dim() == 2, op, ": xs[", i, "] must be 2-D (points x features), got ", x.dim(), "-D");
    TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": xs[", i,
                     "] must be float32 or float64, got ", x.scalar_type());
    TORCH_CHECK_TYPE(x.scalar_type() == xs[0].scalar_type(), op, ": all tensors must have one dtype, but xs[0] is ",
                     xs[0].scalar_type(), " and xs[", i, "] is ", x.scalar_type());
    TORCH_CHECK_VALUE(k[i] >= 1 && k[i] <= x.size(0), op, ": k[", i, "] must be in [1, N] with N = ", x.size(0),
                      " points in xs[", i, "], got ", k[i]);
    most = std::max(most, k[i]);
  }
  TORCH_CHECK_TYPE(uniforms.scalar_type() == at::kDouble, op, ": uniforms must be float64, got ",
                   uniforms.scalar_type());
  TORCH_CHECK_VALUE(uniforms.dim() == 1 && uniforms.numel() >= most, op,
                    ": uniforms must be 1-D with at least max k = ", most, " entries, got shape ", uniforms.sizes());
  TORCH_CHECK_VALUE(xs.empty() || uniforms.device() == device, op, ": uniforms is on ", uniforms.device(),
                    " but the tensors are on ", device);
  return device;
}

}  // namespace pyprune_fast
