#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

#include "channel_args.h"

namespace pyprune_fast {
namespace {

std::vector<at::Tensor> gather_channels_cpu(at::TensorList xs, at::TensorList indices, at::IntArrayRef dims) {
  GatherArgs args = prepare_gather(xs, indices, dims);
  std::vector<at::Tensor> outs;
  for (size_t i = 0; i < args.xs.size(); ++i) {
    const auto& x = args.xs[i];
    const auto v = channel_view(x, args.dims[i]);
    const int64_t picked = args.indices[i].numel();
    auto sizes = x.sizes().vec();
    sizes[args.dims[i]] = picked;
    auto out = at::empty(sizes, x.options());
    outs.push_back(out);
    if (out.numel() == 0) continue;
    // Every (outer, picked channel) pair is one contiguous row of `inner` elements: a memcpy.
    const int64_t row = v.inner * x.element_size();
    const auto* src = static_cast<const char*>(x.const_data_ptr());
    auto* dst = static_cast<char*>(out.mutable_data_ptr());
    const int64_t* idx = args.indices[i].const_data_ptr<int64_t>();
    at::parallel_for(0, v.outer * picked, std::max<int64_t>(1, 32768 / row), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const int64_t o = r / picked, k = r % picked;
        std::memcpy(dst + r * row, src + (o * v.channels + idx[k]) * row, row);
      }
    });
  }
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CPU, m) {
  m.impl("gather_channels", &gather_channels_cpu);
}

}  // namespace pyprune_fast
