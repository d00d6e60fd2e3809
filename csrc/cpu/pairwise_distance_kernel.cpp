#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "pairwise_distance.h"

namespace pyprune_fast {
namespace {

// Fills out from the Gram block, tile pair by tile pair: each (i, j) with i < j is computed once and
// written to both places, so out is exactly symmetric; tiles keep the transposed reads in cache.
template <class scalar_t, class acc_t>
void distance_epilogue(const acc_t* g, scalar_t* out, int64_t n, Metric metric) {
  constexpr int64_t kTile = 64;
  const int64_t tiles = (n + kTile - 1) / kTile;
  at::parallel_for(0, tiles * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t ti = t / tiles, tj = t % tiles;
      if (ti > tj) continue;
      for (int64_t i = ti * kTile; i < std::min(n, (ti + 1) * kTile); ++i) {
        const int64_t j0 = ti == tj ? i : tj * kTile;
        for (int64_t j = j0; j < std::min(n, (tj + 1) * kTile); ++j) {
          const auto d = static_cast<scalar_t>(
              distance_from_gram<acc_t>(g[i * n + i], g[j * n + j], g[i * n + j], g[j * n + i], i == j, metric));
          out[i * n + j] = d;
          out[j * n + i] = d;
        }
      }
    }
  });
}

std::vector<at::Tensor> pairwise_distance_cpu(at::TensorList xs, c10::string_view metric_name) {
  const Metric metric = parse_metric(std::string_view(metric_name.data(), metric_name.size()));
  check_pairwise_inputs(xs);
  GramBatch batch = batched_gram(xs, metric);
  for (size_t i = 0; i < xs.size(); ++i) {
    auto& out = batch.outputs[i];
    const int64_t n = out.size(0);
    if (n == 0) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "pairwise_distance_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      distance_epilogue<scalar_t, acc_t>(batch.gram.data_ptr<acc_t>() + batch.offsets[i], out.data_ptr<scalar_t>(), n,
                                         metric);
    });
  }
  return batch.outputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CPU, m) {
  m.impl("pairwise_distance", &pairwise_distance_cpu);
}

}  // namespace pyprune_fast
