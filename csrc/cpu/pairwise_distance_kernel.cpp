#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "checks.h"
#include "cpu/parallel_rows.h"
#include "pairwise_distance.h"

namespace pyprune_fast {
namespace {

// Rows per block of the upper block triangle: small enough that the skipped lower triangle saves most of
// half the multiply-adds, large enough for full-speed products (measured with MKL on AVX-512).
int64_t gram_block(int64_t n) { return std::clamp<int64_t>(n / 8, 64, 256); }

// Adds (or, for the first block of columns, writes) the upper block triangle of rows @ rows.T into
// gram; the lower one is never read.
void add_upper_gram(at::Tensor& gram, const at::Tensor& rows, bool first) {
  const auto product = [first](at::Tensor out, const at::Tensor& a, const at::Tensor& b) {
    if (first) {
      at::mm_out(out, a, b.t());
    } else {
      out.addmm_(a, b.t());
    }
  };
  const int64_t n = rows.size(0), block = gram_block(n);
  if (n <= 2 * block) return product(gram, rows, rows);
  for (int64_t i = 0; i < n; i += block) {
    const int64_t bi = std::min(block, n - i);
    product(gram.narrow(0, i, bi).narrow(1, i, n - i), rows.narrow(0, i, bi), rows.narrow(0, i, n - i));
  }
}

// Distances from the upper triangle of the Gram matrix, tile by tile; each (i, j) with i < j is
// computed once and written to both places, so out is exactly symmetric. bad: null or the problem's
// non-finite rows; exponent: see Prepared.
template <class scalar_t, class acc_t>
void distance_epilogue(const acc_t* g, scalar_t* out, int64_t n, Metric metric, const bool* bad, int exponent) {
  constexpr int64_t kTile = 64;
  const int64_t tiles = (n + kTile - 1) / kTile;
  at::parallel_for(0, tiles * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t ti = t / tiles, tj = t % tiles;
      if (ti > tj) continue;
      for (int64_t i = ti * kTile; i < std::min(n, (ti + 1) * kTile); ++i) {
        const int64_t j0 = ti == tj ? i : tj * kTile;
        for (int64_t j = j0; j < std::min(n, (tj + 1) * kTile); ++j) {
          const acc_t gij = g[i * n + j];
          const bool nonfinite = bad != nullptr && (bad[i] || bad[j]);
          const auto d = static_cast<scalar_t>(
              distance_from_gram<acc_t>(g[i * n + i], g[j * n + j], gij, gij, i == j, metric, nonfinite, exponent));
          out[i * n + j] = d;
          out[j * n + i] = d;
        }
      }
    }
  });
}

// Buffers a thread reuses from problem to problem (fresh pages cost a fault each, about 2 us here).
struct Scratch {
  at::Tensor gram, rows;
};

// One problem: its column blocks add up their Gram matrices (no concatenated copy), then the epilogue.
void distances(const std::vector<at::Tensor>& parts, Metric metric, at::Tensor& out, Scratch& scratch) {
  const int64_t n = out.size(0);
  if (n == 0) return;
  const auto p = prepare_problem(parts, max_abs(parts).item<double>());
  auto gram = reuse(scratch.gram, n * n, out.options().dtype(accumulate_type(out.scalar_type()))).view({n, n});
  for (size_t b = 0; b < p.parts.size(); ++b) {
    add_upper_gram(gram, gram_rows(p.parts[b], metric, &scratch.rows), b == 0);
  }
  const bool* bad = p.bad.defined() ? p.bad.const_data_ptr<bool>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "pairwise_distance_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    distance_epilogue<scalar_t, acc_t>(gram.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), n, metric, bad,
                                       p.exponent);
  });
}

// Problems side by side, one thread each (MKL's products of these sizes run faster that way than one
// product split over threads), except those too big to share: more than a thread's fair share of all
// the work left. Those run first, alone, on every thread. A product gives the same bits on one thread
// as on several, so a problem's distances do not depend on its batch-mates.
std::vector<at::Tensor> pairwise_distance_cpu(at::TensorList xs, c10::string_view metric_name,
                                              at::OptionalIntArrayRef blocks) {
  const BelowAutograd below_autograd;
  const Metric metric = parse_metric(std::string_view(metric_name.data(), metric_name.size()));
  check_pairwise_inputs(xs);
  const auto problems = split_problems(xs, blocks);
  std::vector<at::Tensor> outs;
  std::vector<double> work;
  for (const auto& parts : problems) {
    const int64_t n = parts[0].size(0);
    int64_t cols = 0;
    for (const auto& b : parts) cols += b.size(1);
    outs.push_back(at::empty({n, n}, parts[0].options()));
    work.push_back(static_cast<double>(n) * n * (cols + 8));  // the epilogue's share: a few columns' worth
  }
  parallel_problems<Scratch>(work, 1 << 20,
                             [&](size_t p, Scratch& mine) { distances(problems[p], metric, outs[p], mine); });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CPU, m) {
  m.impl("pairwise_distance", &pairwise_distance_cpu);
}

}  // namespace pyprune_fast
