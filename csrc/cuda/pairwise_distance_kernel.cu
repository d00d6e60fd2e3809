#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <map>
#include <utility>

#include "checks.h"
#include "cuda/launch.cuh"
#include "pairwise_distance.h"

namespace pyprune_fast {
namespace {

constexpr int kTile = 32;
constexpr int kRowsPerPass = 8;

// One matrix of the batch: its Gram block, size, first tile in the launch and output.
struct DistanceJob {
  int64_t gram_offset;
  int64_t n;
  int64_t first_tile;
  void* out;
  const bool* bad;  // null or the matrix's non-finite rows (see Prepared)
  int exponent;
};

// One launch for every matrix: block b takes tile b of the concatenated tile lists. G[j, i] is read
// through shared memory so that both reads and the write are coalesced.
template <class scalar_t, class acc_t>
__global__ void distance_epilogue_kernel(const acc_t* __restrict__ gram, const DistanceJob* __restrict__ jobs,
                                         int64_t num_jobs, Metric metric) {
  __shared__ acc_t transposed[kTile][kTile + 1];
  __shared__ acc_t diag_i[kTile], diag_j[kTile];

  const int64_t tile = blockIdx.x;
  int64_t lo = 0, hi = num_jobs - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (jobs[mid].first_tile <= tile) lo = mid; else hi = mid - 1;
  }
  const DistanceJob job = jobs[lo];
  const int64_t n = job.n;
  const int64_t tiles_per_row = (n + kTile - 1) / kTile;
  const int64_t ti = (tile - job.first_tile) / tiles_per_row, tj = (tile - job.first_tile) % tiles_per_row;
  const acc_t* g = gram + job.gram_offset;
  scalar_t* out = static_cast<scalar_t*>(job.out);
  const int tx = threadIdx.x;

  // transposed[a][b] = G[tj*T + b, ti*T + a]
  for (int y = threadIdx.y; y < kTile; y += kRowsPerPass) {
    const int64_t r = tj * kTile + y, c = ti * kTile + tx;
    if (r < n && c < n) transposed[tx][y] = g[r * n + c];
  }
  if (threadIdx.y == 0) {
    const int64_t i = ti * kTile + tx, j = tj * kTile + tx;
    if (i < n) diag_i[tx] = g[i * n + i];
    if (j < n) diag_j[tx] = g[j * n + j];
  }
  __syncthreads();
  for (int y = threadIdx.y; y < kTile; y += kRowsPerPass) {
    const int64_t i = ti * kTile + y, j = tj * kTile + tx;
    if (i < n && j < n) {
      const bool nonfinite = job.bad != nullptr && (job.bad[i] || job.bad[j]);
      const acc_t d = distance_from_gram<acc_t>(diag_i[y], diag_j[tx], g[i * n + j], transposed[y][tx], i == j, metric,
                                                nonfinite, job.exponent);
      out[i * n + j] = static_cast<scalar_t>(d);
    }
  }
}

// Gram matrices of every input, back to back in one flat buffer: one batched product per distinct shape.
struct GramBatch {
  at::Tensor gram;                // accumulate dtype
  std::vector<int64_t> offsets;   // start of input i's N x N block
};

GramBatch batched_gram(at::TensorList xs, Metric metric) {
  GramBatch out;
  out.offsets.resize(xs.size());
  std::map<std::pair<int64_t, int64_t>, std::vector<size_t>> groups;
  for (size_t i = 0; i < xs.size(); ++i) groups[{xs[i].size(0), xs[i].size(1)}].push_back(i);
  int64_t total = 0;
  for (const auto& [shape, members] : groups) {
    for (size_t i : members) {
      out.offsets[i] = total;
      total += shape.first * shape.first;
    }
  }
  out.gram = at::empty({total}, xs[0].options().dtype(accumulate_type(xs[0].scalar_type())));
  for (const auto& [shape, members] : groups) {
    const int64_t rows = shape.first, batch = static_cast<int64_t>(members.size());
    if (rows == 0) continue;
    std::vector<at::Tensor> parts;
    for (size_t i : members) parts.push_back(xs[i]);
    auto x = gram_rows(at::stack(parts), metric);  // [batch, rows, cols]
    auto block = out.gram.narrow(0, out.offsets[members[0]], batch * rows * rows).view({batch, rows, rows});
    at::bmm_out(block, x, x.transpose(1, 2));
  }
  return out;
}

std::vector<at::Tensor> pairwise_distance_cuda(at::TensorList inputs, c10::string_view metric_name,
                                               at::OptionalIntArrayRef blocks) {
  const BelowAutograd below_autograd;
  const Metric metric = parse_metric(std::string_view(metric_name.data(), metric_name.size()));
  const auto device = check_pairwise_inputs(inputs);
  if (inputs.empty()) return {};
  c10::cuda::OptionalCUDAGuard guard(device);
  std::vector<at::Tensor> xs;  // one matrix per problem: its column blocks side by side
  for (const auto& parts : split_problems(inputs, blocks)) xs.push_back(parts.size() == 1 ? parts[0] : at::cat(parts, 1));
  // Every problem's max |x| in one host read; the rare non-finite or badly scaled problem is rewritten.
  std::vector<at::Tensor> maxima;
  for (const auto& x : xs) maxima.push_back(max_abs({x}));
  const auto host_max = at::stack(maxima).cpu();
  std::vector<Prepared> prepared;
  for (size_t i = 0; i < xs.size(); ++i) {
    prepared.push_back(prepare_problem({xs[i]}, host_max[i].item<double>()));
    xs[i] = prepared.back().parts[0];
  }
  GramBatch batch = batched_gram(xs, metric);

  std::vector<at::Tensor> outs;
  std::vector<DistanceJob> jobs;
  int64_t tiles = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const int64_t n = xs[i].size(0);
    outs.push_back(at::empty({n, n}, xs[i].options().dtype(inputs[0].scalar_type())));  // xs[i] may be rescaled
    if (n == 0) continue;
    const bool* bad = prepared[i].bad.defined() ? prepared[i].bad.const_data_ptr<bool>() : nullptr;
    jobs.push_back({batch.offsets[i], n, tiles, outs.back().mutable_data_ptr(), bad, prepared[i].exponent});
    tiles += ((n + kTile - 1) / kTile) * ((n + kTile - 1) / kTile);
  }
  if (jobs.empty()) return outs;
  TORCH_CHECK(tiles < (int64_t(1) << 31), "pairwise_distance: ", tiles, " tiles exceed one launch");
  auto table = upload_jobs(jobs, device);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, inputs[0].scalar_type(), "pairwise_distance_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    distance_epilogue_kernel<scalar_t, acc_t>
        <<<static_cast<unsigned int>(tiles), dim3(kTile, kRowsPerPass), 0, at::cuda::getCurrentCUDAStream()>>>(
            batch.gram.const_data_ptr<acc_t>(), reinterpret_cast<const DistanceJob*>(table.const_data_ptr()),
            static_cast<int64_t>(jobs.size()), metric);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CUDA, m) {
  m.impl("pairwise_distance", &pairwise_distance_cuda);
}

}  // namespace pyprune_fast
