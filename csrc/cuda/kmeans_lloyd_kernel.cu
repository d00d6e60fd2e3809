// kmeans_lloyd on CUDA: the batched loop of kmeans_lloyd.cpp, with the end of every assignment fused into
// one kernel below. Problems of one (N, D, k) are stacked and run as one batch: per iteration and shape,
// one batched product X C^T (cuBLAS), this kernel (row minimum over the centroids, norms added, labels,
// distances and per-problem "a label changed" flags written), one stable sort and one segmented sum for
// the new centroids, and a few elementwise ATen ops. The host reads the convergence flags of all problems
// once per iteration, with one copy; converged problems then leave their batch. Same algorithm, order and
// re-seeding rule as the CPU kernel; deterministic (no floating-point atomics: cluster sums run in point
// order). The private op _kmeans_lloyd_batched runs the same loop with ATen ops alone, on any device.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <torch/library.h>

#include <climits>

#include "cuda/launch.cuh"
#include "kmeans_lloyd.h"

namespace pyprune_fast {
namespace {

// Host reads of the convergence flags: every iteration, one for all problems together. A read costs one
// drain of the launch queue (microseconds); reading less often would carry converged problems, frozen,
// through more batched products.
constexpr int64_t kSyncEvery = 1;
constexpr int kWarp = 32;
constexpr int kThreads = 256;

// One warp per point: lanes scan centroids j = lane, lane + 32, ... keeping their first minimum of
// |c_j|^2 - 2 x.c_j, then the warp reduces with ties to the lower j (as at::min and the CPU kernel do).
template <class scalar_t>
__global__ void assign_epilogue_kernel(const scalar_t* __restrict__ dots, const scalar_t* __restrict__ cnorm,
                                       const scalar_t* __restrict__ xnorm, const bool* __restrict__ active,
                                       int64_t* __restrict__ labels, scalar_t* __restrict__ mind,
                                       bool* __restrict__ changed, int64_t rows, int64_t n, int k) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x / kWarp);
  for (int64_t row = static_cast<int64_t>(blockIdx.x) * (blockDim.x / kWarp) + threadIdx.x / kWarp; row < rows;
       row += warps) {
    const int64_t b = row / n;
    if (!active[b]) continue;  // uniform across the warp
    const scalar_t* d = dots + row * k;
    const scalar_t* cn = cnorm + b * k;
    scalar_t best = 0;
    int arg = k;  // k: none yet
    for (int j = lane; j < k; j += kWarp) {
      const scalar_t v = cn[j] - 2 * d[j];
      if (arg == k || v < best) best = v, arg = j;
    }
    for (int offset = kWarp / 2; offset > 0; offset /= 2) {
      const scalar_t other = __shfl_down_sync(0xffffffffu, best, offset);
      const int other_arg = __shfl_down_sync(0xffffffffu, arg, offset);
      if (other_arg < k && (arg == k || other < best || (other == best && other_arg < arg))) {
        best = other, arg = other_arg;
      }
    }
    if (lane == 0) {
      const scalar_t dist = xnorm[row] + best;
      mind[row] = scalar_t(0) < dist ? dist : scalar_t(0);
      if (labels[row] != arg) {
        labels[row] = arg;
        changed[b] = true;  // every writer stores the same value
      }
    }
  }
}

// The AssignEpilogue of kmeans_lloyd.h.
at::Tensor assign_epilogue_cuda(const at::Tensor& dots, const at::Tensor& cnorm, const at::Tensor& xnorm,
                                const at::Tensor& active, at::Tensor& labels, at::Tensor& mind) {
  const int64_t batch = dots.size(0), n = dots.size(1), k = dots.size(2);
  TORCH_CHECK(k <= INT_MAX - kWarp, "kmeans_lloyd: ", k, " centroids exceed the CUDA kernel's 32-bit index");
  TORCH_INTERNAL_ASSERT(dots.is_contiguous() && cnorm.is_contiguous() && xnorm.is_contiguous() &&
                        active.is_contiguous() && labels.is_contiguous() && mind.is_contiguous());
  auto changed = at::zeros({batch}, active.options());
  const int64_t rows = batch * n;
  if (rows == 0) return changed;
  AT_DISPATCH_FLOATING_TYPES(dots.scalar_type(), "kmeans_lloyd_cuda", [&] {
    assign_epilogue_kernel<scalar_t>
        <<<grid_stride_blocks(rows, kThreads / kWarp), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            dots.const_data_ptr<scalar_t>(), cnorm.const_data_ptr<scalar_t>(), xnorm.const_data_ptr<scalar_t>(),
            active.const_data_ptr<bool>(), labels.mutable_data_ptr<int64_t>(), mind.mutable_data_ptr<scalar_t>(),
            changed.mutable_data_ptr<bool>(), rows, n, static_cast<int>(k));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return changed;
}

// Checks, the device guard and the early return for empty problems are in kmeans_lloyd_batched.
// Gram matrices are not read here: the batched iterations already cost one batched product each.
KmeansResult kmeans_lloyd_cuda(at::TensorList xs, at::TensorList centroids, int64_t niter, bool spherical,
                               at::TensorList grams) {
  const BelowAutograd below_autograd;
  return kmeans_lloyd_batched(xs, centroids, niter, spherical, kSyncEvery, &assign_epilogue_cuda, grams);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CUDA, m) {
  m.impl("kmeans_lloyd", &kmeans_lloyd_cuda);
}

}  // namespace pyprune_fast
