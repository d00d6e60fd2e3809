#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdint>
#include <map>

#include "gather_channels.h"
#include "cuda/launch.cuh"

namespace pyprune_fast {
namespace {

struct GatherJob {
  const void* src;
  void* dst;
  const int64_t* index;
  int64_t outer, channels, picked, inner;
};

// blockIdx.y picks the tensor; elements are copied as raw words of the tensor's element size, so one
// instantiation per size serves every dtype.
template <class word_t>
__global__ void gather_channels_kernel(const GatherJob* __restrict__ jobs) {
  const GatherJob job = jobs[blockIdx.y];
  const auto* src = static_cast<const word_t*>(job.src);
  auto* dst = static_cast<word_t*>(job.dst);
  const int64_t total = job.outer * job.picked * job.inner;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t inner = e % job.inner, row = e / job.inner;
    const int64_t k = row % job.picked, o = row / job.picked;
    dst[e] = src[(o * job.channels + job.index[k]) * job.inner + inner];
  }
}

template <class word_t>
void launch(const std::vector<GatherJob>& jobs, int64_t largest, c10::Device device) {
  constexpr int kThreads = 256;
  launch_in_chunks(jobs, device, [&](const GatherJob* table, unsigned int count) {
    dim3 grid(grid_stride_blocks(largest, kThreads), count);
    gather_channels_kernel<word_t><<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(table);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

std::vector<at::Tensor> gather_channels_cuda(at::TensorList xs, at::TensorList indices, at::IntArrayRef dims) {
  const BelowAutograd below_autograd;
  GatherArgs args = prepare_gather(xs, indices, dims);
  std::vector<at::Tensor> outs;
  if (args.xs.empty()) return outs;
  c10::cuda::OptionalCUDAGuard guard(args.xs[0].device());
  std::map<int64_t, std::pair<std::vector<GatherJob>, int64_t>> by_size;  // element size -> jobs, largest
  for (size_t i = 0; i < args.xs.size(); ++i) {
    const auto& x = args.xs[i];
    const auto v = channel_view(x, args.dims[i]);
    const int64_t picked = args.indices[i].numel();
    auto sizes = x.sizes().vec();
    sizes[args.dims[i]] = picked;
    outs.push_back(at::empty(sizes, x.options()));
    if (outs.back().numel() == 0) continue;
    auto& [jobs, largest] = by_size[x.element_size()];
    jobs.push_back({x.const_data_ptr(), outs.back().mutable_data_ptr(), args.indices[i].const_data_ptr<int64_t>(),
                    v.outer, v.channels, picked, v.inner});
    largest = std::max(largest, outs.back().numel());
  }
  for (const auto& [size, entry] : by_size) {
    switch (size) {
      case 1: launch<uint8_t>(entry.first, entry.second, args.xs[0].device()); break;
      case 2: launch<uint16_t>(entry.first, entry.second, args.xs[0].device()); break;
      case 4: launch<uint32_t>(entry.first, entry.second, args.xs[0].device()); break;
      case 8: launch<uint64_t>(entry.first, entry.second, args.xs[0].device()); break;
      case 16: launch<uint4>(entry.first, entry.second, args.xs[0].device()); break;
      default: TORCH_CHECK_TYPE(false, "gather_channels: unsupported element size ", size, " bytes");
    }
  }
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CUDA, m) {
  m.impl("gather_channels", &gather_channels_cuda);
}

}  // namespace pyprune_fast
