// kmeanspp_init on the CPU: problems in parallel (largest first, one worker per thread), each drawn
// sequentially. A problem's squared distances to a drawn point come from one row of its Gram matrix X X^T
// (its upper block triangle by matrix products in the input dtype, when that is cheaper than k matrix-vector
// products and small enough), else from one matrix-vector product per draw; distances, their running sums
// (in point order, as torch.cumsum) and the draws in float64.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "cpu/parallel_rows.h"
#include "kmeanspp_init.h"

namespace pyprune_fast {
namespace {

constexpr int64_t kGramEntries = int64_t(1) << 23;  // at most 32 MB (float32) per worker
constexpr int64_t kGramBlock = 128;                 // rows per product of symmetric_gram
constexpr double kSerialBelow = 1 << 20;            // multiply-adds in all below which one thread does all

// Whether problem (n points, k draws) reads its distances from a Gram matrix: half an n x n product at matrix
// speed costs less than k memory-bound matrix-vector products when k >= n / 4 (a cautious bound).
bool use_gram(int64_t n, int64_t k) { return n * n <= kGramEntries && 4 * k >= n; }

struct Scratch {
  std::vector<double> d2;  // squared distance of every point to the nearest drawn one
  at::Tensor gram;         // reused between problems of one worker
};

// The index that uniform u in [0, 1) picks: by inverse CDF of d2 (the first point whose running sum, in point
// order, exceeds u * total), or uniformly when the total is 0.
int64_t draw(const std::vector<double>& d2, double total, double u) {
  const auto n = static_cast<int64_t>(d2.size());
  if (!(total > 0)) return std::min(static_cast<int64_t>(u * n), n - 1);
  const double target = u * total;
  double run = 0;
  for (int64_t i = 0; i < n; ++i) {
    run += d2[i];
    if (run > target) return i;
  }
  return n - 1;
}

// d2 = min(d2, squared distances to the point with squared norm nc, given its dot products with every point);
// the first call (`first`) sets d2. Returns the sum of d2 in point order.
template <class scalar_t>
double lower(std::vector<double>& d2, const scalar_t* norms, int64_t norm_stride, const scalar_t* dots, double nc,
             bool first) {
  double total = 0;
  for (size_t i = 0; i < d2.size(); ++i) {
    double v = (static_cast<double>(norms[i * norm_stride]) - 2 * static_cast<double>(dots[i])) + nc;
    v = v > 0 ? v : 0;
    d2[i] = first || v < d2[i] ? v : d2[i];
    total += d2[i];
  }
  return total;
}

// x x^T (n x n) into `gram`: its upper block triangle by one matrix product per block of rows (about half the
// multiply-adds of the whole product), the rest mirrored.
template <class scalar_t>
void symmetric_gram(const at::Tensor& x, at::Tensor& gram) {
  const int64_t n = x.size(0);
  for (int64_t b = 0; b < n; b += kGramBlock) {
    const int64_t rows = std::min(kGramBlock, n - b);
    auto out = gram.narrow(0, b, rows).narrow(1, b, n - b);
    at::mm_out(out, x.narrow(0, b, rows), x.narrow(0, b, n - b).t());
  }
  constexpr int64_t tile = 32;  // the lower block triangle, rows [b, b + block) x columns [0, b), in tiles
  scalar_t* g = gram.mutable_data_ptr<scalar_t>();
  for (int64_t b = kGramBlock; b < n; b += kGramBlock) {
    for (int64_t i0 = b; i0 < std::min(b + kGramBlock, n); i0 += tile) {
      for (int64_t j0 = 0; j0 < b; j0 += tile) {
        for (int64_t i = i0; i < std::min(i0 + tile, n); ++i) {
          for (int64_t j = j0; j < j0 + tile; ++j) g[i * n + j] = g[j * n + i];
        }
      }
    }
  }
}

// Draws problem `points`; with `keep`, the Gram matrix it read (if any) goes to *kept instead of the scratch.
template <class scalar_t>
void seed_problem(const at::Tensor& points, int64_t k, const double* u, int64_t* out, Scratch& s, bool keep,
                  at::Tensor* kept) {
  const auto x = points.contiguous();
  const int64_t n = x.size(0);
  s.d2.assign(n, 0);
  out[0] = std::min(static_cast<int64_t>(u[0] * n), n - 1);
  if (k == 1) return;
  const bool gram = use_gram(n, k);
  at::Tensor norms_t;
  const scalar_t* g = nullptr;
  if (gram) {  // norms from the Gram diagonal: equal rows are exactly 0 apart
    if (keep) {
      *kept = at::empty({n, n}, x.options());
    } else if (!s.gram.defined() || s.gram.numel() < n * n || s.gram.scalar_type() != x.scalar_type()) {
      s.gram = at::empty({n * n}, x.options());
    }
    auto view = keep ? *kept : s.gram.narrow(0, 0, n * n).view({n, n});
    symmetric_gram<scalar_t>(x, view);
    g = view.const_data_ptr<scalar_t>();
  } else {
    norms_t = (x * x).sum(1);
  }
  const scalar_t* norms = gram ? g : norms_t.const_data_ptr<scalar_t>();
  const int64_t norm_stride = gram ? n + 1 : 1;
  at::Tensor row;
  for (int64_t t = 1; t < k; ++t) {
    const int64_t c = out[t - 1];
    if (!gram) row = at::mv(x, x[c]);
    const scalar_t* dots = gram ? g + c * n : row.const_data_ptr<scalar_t>();
    const double total = lower(s.d2, norms, norm_stride, dots, static_cast<double>(norms[c * norm_stride]), t == 1);
    out[t] = draw(s.d2, total, u[t]);
  }
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>> kmeanspp_init_cpu(
    at::TensorList xs, at::IntArrayRef k, const at::Tensor& uniforms, bool return_gram) {
  const BelowAutograd below_autograd;
  check_kmeanspp_args(xs, k, uniforms);
  const auto u = uniforms.contiguous();
  std::vector<at::Tensor> out, grams;
  std::vector<double> work;
  for (size_t i = 0; i < xs.size(); ++i) {
    out.push_back(at::empty({k[i]}, xs[i].options().dtype(at::kLong)));
    grams.push_back(at::empty({0}, xs[i].options()));
    const double n = xs[i].size(0), d = std::max<int64_t>(xs[i].size(1), 1);
    work.push_back((use_gram(xs[i].size(0), k[i]) ? n : k[i]) * n * d);
  }
  double all = 0;
  for (double w : work) all += w;
  parallel_queue<Scratch>(largest_first(work), all, kSerialBelow, [&](size_t i, Scratch& s) {
    AT_DISPATCH_FLOATING_TYPES(xs[i].scalar_type(), "kmeanspp_init_cpu", [&] {
      seed_problem<scalar_t>(xs[i], k[i], u.const_data_ptr<double>(), out[i].mutable_data_ptr<int64_t>(), s,
                             return_gram, &grams[i]);
    });
  });
  return {out, grams};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CPU, m) {
  m.impl("kmeanspp_init", &kmeanspp_init_cpu);
}

}  // namespace pyprune_fast
