#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <map>

#include "merge_channels.h"
#include "cuda/launch.cuh"

namespace pyprune_fast {
namespace {

struct MergeJob {
  void* x;
  const int64_t* members;
  const int64_t* offsets;
  const int64_t* keep;
  const void* weights;  // nullptr, or the accumulate type
  int64_t outer, channels, clusters, inner;
};

// One thread per (outer, cluster, inner) element: the members summed in ascending order (no atomics,
// so bitwise deterministic). A kept channel belongs to its own cluster only, so no thread reads an
// element another thread writes.
template <class scalar_t, class acc_t>
__global__ void merge_channels_kernel(const MergeJob* __restrict__ jobs) {
  const MergeJob job = jobs[blockIdx.y];
  auto* x = static_cast<scalar_t*>(job.x);
  const auto* w = static_cast<const acc_t*>(job.weights);
  const int64_t total = job.outer * job.clusters * job.inner;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t inner = e % job.inner, row = e / job.inner;
    const int64_t g = row % job.clusters, o = row / job.clusters;
    acc_t acc = 0;
    for (int64_t p = job.offsets[g]; p < job.offsets[g + 1]; ++p) {
      const int64_t m = job.members[p];
      const acc_t v = static_cast<acc_t>(x[(o * job.channels + m) * job.inner + inner]);
      acc += w ? w[m] * v : v;
    }
    x[(o * job.channels + job.keep[g]) * job.inner + inner] = static_cast<scalar_t>(acc);
  }
}

void merge_channels_cuda(at::TensorList xs, at::TensorList assignments, at::TensorList keep, at::IntArrayRef dims,
                         const c10::List<std::optional<at::Tensor>>& weights) {
  const BelowAutograd below_autograd;
  MergeArgs args = prepare_merge(xs, assignments, keep, dims, weights);
  if (xs.empty()) return;
  c10::cuda::OptionalCUDAGuard guard(xs[0].device());
  std::vector<at::Tensor> work(xs.size());  // contiguous tensors the kernel writes
  std::map<at::ScalarType, std::pair<std::vector<MergeJob>, int64_t>> by_dtype;  // dtype -> jobs, largest
  for (size_t i = 0; i < xs.size(); ++i) {
    const int64_t clusters = args.keep[i].numel();
    if (xs[i].numel() == 0 || clusters == 0) continue;
    work[i] = xs[i].contiguous();
    const auto v = channel_view(work[i], args.dims[i]);
    auto& [jobs, largest] = by_dtype[xs[i].scalar_type()];
    jobs.push_back({work[i].mutable_data_ptr(), args.members[i].const_data_ptr<int64_t>(),
                    args.offsets[i].const_data_ptr<int64_t>(), args.keep[i].const_data_ptr<int64_t>(),
                    args.weights[i].defined() ? args.weights[i].const_data_ptr() : nullptr, v.outer, v.channels,
                    clusters, v.inner});
    largest = std::max(largest, v.outer * clusters * v.inner);
  }
  constexpr int kThreads = 256;
  for (const auto& item : by_dtype) {
    const std::vector<MergeJob>& jobs = item.second.first;
    const int64_t largest = item.second.second;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, item.first, "merge_channels_cuda", [&] {
      launch_in_chunks(jobs, xs[0].device(), [&](const MergeJob* table, unsigned int count) {
        dim3 grid(grid_stride_blocks(largest, kThreads), count);
        merge_channels_kernel<scalar_t, at::opmath_type<scalar_t>>
            <<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(table);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  for (size_t i = 0; i < xs.size(); ++i) {
    if (work[i].defined() && !work[i].is_same(xs[i])) xs[i].copy_(work[i]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CUDA, m) {
  m.impl("merge_channels_", &merge_channels_cuda);
}

}  // namespace pyprune_fast
