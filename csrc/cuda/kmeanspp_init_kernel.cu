// kmeanspp_init on CUDA: every problem in one launch, one block per problem (the draws of a problem are
// sequential). Per draw the block's warps compute the float64 squared distances of all points to the last
// drawn one (a warp per point, lanes along the features) and lower the nearest-distance array; then each
// thread sums its contiguous chunk of points, a block scan gives the chunks' running sums and the total,
// and the first point whose running sum exceeds u * total is found by an atomic minimum over the threads.
// Same drawing rule as the CPU kernel; the running sums are grouped by chunk, so a draw that lands within
// rounding of a boundary may pick the neighbouring point.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cub/block/block_scan.cuh>
#include <tuple>

#include "cuda/launch.cuh"
#include "kmeanspp_init.h"

namespace pyprune_fast {
namespace {

constexpr int kWarp = 32;
constexpr int kThreads = 256;

template <class scalar_t>
struct Job {
  const scalar_t* x;  // n x d, contiguous
  int64_t n, d, k;
  int64_t* out;   // k drawn indices
  double* norms;  // n squared norms (scratch)
  double* d2;     // n squared distances to the nearest drawn point (scratch)
};

__device__ inline int64_t uniform_index(double u, int64_t n) {
  const auto i = static_cast<int64_t>(u * static_cast<double>(n));
  return i < n - 1 ? i : n - 1;
}

// The float64 dot product of rows a and b: in lane 0 of the calling warp.
template <class scalar_t>
__device__ double warp_dot(const scalar_t* a, const scalar_t* b, int64_t d, int lane) {
  double s = 0;
  for (int64_t e = lane; e < d; e += kWarp) s += static_cast<double>(a[e]) * static_cast<double>(b[e]);
  for (int offset = kWarp / 2; offset > 0; offset /= 2) s += __shfl_down_sync(0xffffffffu, s, offset);
  return s;
}

template <class scalar_t>
__global__ void __launch_bounds__(kThreads) kmeanspp_kernel(const Job<scalar_t>* jobs, const double* __restrict__ u) {
  using Scan = cub::BlockScan<double, kThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ unsigned long long chosen;
  const Job<scalar_t> job = jobs[blockIdx.y];
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  constexpr int warps = kThreads / kWarp;
  const int64_t n = job.n, d = job.d;
  for (int64_t i = warp; i < n; i += warps) {
    const double s = warp_dot(job.x + i * d, job.x + i * d, d, lane);
    if (lane == 0) job.norms[i] = s;
  }
  if (threadIdx.x == 0) {
    chosen = uniform_index(u[0], n);
    job.out[0] = static_cast<int64_t>(chosen);
  }
  __syncthreads();
  const int64_t chunk = (n + kThreads - 1) / kThreads;
  const int64_t lo = static_cast<int64_t>(threadIdx.x) * chunk < n ? threadIdx.x * chunk : n;
  const int64_t hi = lo + chunk < n ? lo + chunk : n;
  for (int64_t t = 1; t < job.k; ++t) {
    const auto c = static_cast<int64_t>(chosen);
    const double nc = job.norms[c];
    for (int64_t i = warp; i < n; i += warps) {
      const double dot = warp_dot(job.x + i * d, job.x + c * d, d, lane);
      if (lane == 0) {
        double v = (job.norms[i] - 2 * dot) + nc;
        v = v > 0 ? v : 0;
        job.d2[i] = t == 1 || v < job.d2[i] ? v : job.d2[i];
      }
    }
    __syncthreads();
    double part = 0;
    for (int64_t i = lo; i < hi; ++i) part += job.d2[i];
    double before, total;
    Scan(scan_storage).ExclusiveSum(part, before, total);
    if (threadIdx.x == 0) chosen = total > 0 ? static_cast<unsigned long long>(n) : uniform_index(u[t], n);
    __syncthreads();
    if (total > 0) {  // the first point whose running sum exceeds the target: the lowest thread's find
      const double target = u[t] * total;
      double run = before;
      for (int64_t i = lo; i < hi; ++i) {
        run += job.d2[i];
        if (run > target) {
          atomicMin(&chosen, static_cast<unsigned long long>(i));
          break;
        }
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      if (chosen >= static_cast<unsigned long long>(n)) chosen = n - 1;  // rounding left every sum below
      job.out[t] = static_cast<int64_t>(chosen);
    }
    __syncthreads();
  }
}

// The draws read no Gram matrix here: every grams[i] is empty, with return_gram too.
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> kmeanspp_init_cuda(
    at::TensorList xs, at::IntArrayRef k, const at::Tensor& uniforms, bool return_gram) {
  const BelowAutograd below_autograd;
  const auto device = check_kmeanspp_args(xs, k, uniforms);
  std::vector<at::Tensor> out, grams;
  for (const auto& x : xs) grams.push_back(at::empty({0}, x.options()));
  if (xs.empty()) return {out, grams};
  const c10::cuda::CUDAGuard guard(device);
  const auto u = uniforms.contiguous();
  std::vector<at::Tensor> points;
  int64_t rows = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    points.push_back(xs[i].contiguous());
    out.push_back(at::empty({k[i]}, xs[i].options().dtype(at::kLong)));
    rows += xs[i].size(0);
  }
  auto scratch = at::empty({2 * rows}, xs[0].options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES(xs[0].scalar_type(), "kmeanspp_init_cuda", [&] {
    std::vector<Job<scalar_t>> jobs;
    double* s = scratch.mutable_data_ptr<double>();
    for (size_t i = 0; i < xs.size(); ++i) {
      const int64_t n = points[i].size(0);
      jobs.push_back({points[i].const_data_ptr<scalar_t>(), n, points[i].size(1), k[i],
                      out[i].mutable_data_ptr<int64_t>(), s, s + n});
      s += 2 * n;
    }
    launch_in_chunks(jobs, device, [&](const Job<scalar_t>* table, unsigned int count) {
      kmeanspp_kernel<scalar_t><<<dim3(1, count), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          table, u.const_data_ptr<double>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, grams};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CUDA, m) {
  m.impl("kmeanspp_init", &kmeanspp_init_cuda);
}

}  // namespace pyprune_fast
