// Argument checks shared by the kernels of every backend. Messages name the op, the argument,
// the tensor's position in its list and the offending value.
#pragma once

#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/core/LegacyTypeDispatch.h>

#include <cstdint>
#include <string>
#include <utility>

namespace pyprune_fast {

// Every kernel entry holds one. The ops have no autograd kernel: the dispatcher's fallback passes them
// below autograd, but the ATen calls inside a kernel would go through autograd again and refuse inputs
// that require grad (a model's own weights). Worker threads take it over with the caller's state.
using BelowAutograd = at::AutoDispatchBelowADInplaceOrView;

// A list argument given once per tensor or once for all of them.
inline void check_list_length(const char* op, const char* name, size_t got, size_t n, bool optional = false) {
  TORCH_CHECK_VALUE(
      got == n || got == 1 || (optional && got == 0), op, ": ", name, " must hold one entry per tensor (", n,
      ") or one for all", optional ? " (or none)" : "", ", got ", got);
}

template <class T>
const T& entry(c10::ArrayRef<T> list, size_t i) {
  return list.size() == 1 ? list[0] : list[i];
}

// All of `xs` on one device; returns it (CPU for an empty list).
inline c10::Device common_device(const char* op, at::TensorList xs) {
  if (xs.empty()) return c10::Device(c10::kCPU);
  for (size_t i = 1; i < xs.size(); ++i) {
    TORCH_CHECK_VALUE(
        xs[i].device() == xs[0].device(), op, ": all tensors must be on one device, but xs[0] is on ",
        xs[0].device(), " and xs[", i, "] is on ", xs[i].device());
  }
  return xs[0].device();
}

inline void check_on_device(const char* op, const char* name, size_t i, const at::Tensor& t, c10::Device d) {
  TORCH_CHECK_VALUE(
      t.device() == d, op, ": ", name, "[", i, "] is on ", t.device(), " but the tensors are on ", d);
}

// The bytes [first, last) that a strided tensor's elements lie in (strides are never negative).
inline std::pair<uintptr_t, uintptr_t> byte_span(const at::Tensor& t) {
  const auto first = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  uintptr_t last = 1;
  for (int64_t d = 0; d < t.dim(); ++d) last += static_cast<uintptr_t>(t.size(d) - 1) * t.stride(d);
  return {first, first + last * t.element_size()};
}

// `other` may not share memory with `written`, which the op modifies while it reads `other`: their byte
// spans are disjoint, or they are provably apart within one storage.
inline void check_no_overlap(const char* op, const char* written, size_t i, const at::Tensor& w, const char* name,
                             size_t j, const at::Tensor& other) {
  if (w.numel() == 0 || other.numel() == 0 || w.device() != other.device()) return;
  const auto [a0, a1] = byte_span(w);
  const auto [b0, b1] = byte_span(other);
  const bool apart = a1 <= b0 || b1 <= a0 ||
                     (w.storage().is_alias_of(other.storage()) &&
                      at::get_overlap_status(w, other) == at::MemOverlapStatus::No);
  TORCH_CHECK_VALUE(apart, op, ": ", name, "[", j, "] and ", written, "[", i, "] share memory, and the op writes ",
                    written, "[", i, "]; pass a copy (.clone())");
}

// Wraps a possibly negative dim of xs[i]; an error names the tensor and the dim.
inline int64_t wrap_dim(const char* op, size_t i, const at::Tensor& x, int64_t dim) {
  const int64_t nd = x.dim();
  TORCH_CHECK_VALUE(
      nd > 0 && dim >= -nd && dim < nd, op, ": dim ", dim, " is out of range for xs[", i, "] with ", nd,
      " dimension(s)");
  return dim < 0 ? dim + nd : dim;
}

// A 1-D integer tensor, returned as int64.
inline at::Tensor as_index(const char* op, const char* name, size_t i, const at::Tensor& t, c10::Device d) {
  TORCH_CHECK_TYPE(
      t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, op, ": ", name, "[", i,
      "] must be an int64 or int32 tensor, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 1, op, ": ", name, "[", i, "] must be 1-D, got ", t.dim(), "-D");
  check_on_device(op, name, i, t, d);
  return t.to(at::kLong);
}

// The dtype kernels accumulate in: float for float/half/bfloat16, double for double.
inline at::ScalarType accumulate_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// x viewed as [outer, channels, inner] around `dim`.
struct ChannelView {
  int64_t outer, channels, inner;
};

inline ChannelView channel_view(const at::Tensor& x, int64_t dim) {
  ChannelView v{1, x.size(dim), 1};
  for (int64_t d = 0; d < dim; ++d) v.outer *= x.size(d);
  for (int64_t d = dim + 1; d < x.dim(); ++d) v.inner *= x.size(d);
  return v;
}

}  // namespace pyprune_fast
