#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "cpu/parallel_rows.h"
#include "kmeans_lloyd.h"

namespace pyprune_fast {
namespace {

// Nearest centroid of every point, from one matrix product: |x|^2 + |c|^2 - 2 x.c. Returns the sum of
// the squared distances; ties go to the lower centroid index.
template <class scalar_t>
double assign(const at::Tensor& x, const at::Tensor& xnorm, const at::Tensor& c, int64_t* labels, scalar_t* mind) {
  const int64_t n = x.size(0), k = c.size(0);
  const auto dots = at::mm(x, c.t());  // n x k
  const auto cnorm = (c * c).sum(1);
  const scalar_t* d = dots.const_data_ptr<scalar_t>();
  const scalar_t* cn = cnorm.const_data_ptr<scalar_t>();
  const scalar_t* xn = xnorm.const_data_ptr<scalar_t>();
  at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* row = d + i * k;
      int64_t best = 0;
      scalar_t best_d = cn[0] - 2 * row[0];
      for (int64_t j = 1; j < k; ++j) {
        const scalar_t dj = cn[j] - 2 * row[j];
        if (dj < best_d) best_d = dj, best = j;
      }
      labels[i] = best;
      mind[i] = std::max(scalar_t(0), xn[i] + best_d);
    }
  });
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += mind[i];  // in point order: the same sum on every run
  return total;
}

// New centroids: the mean of each cluster's points, summed in point order (deterministic); each empty
// cluster is re-seeded with the point farthest from its centroid (the farthest first, for clusters in
// index order).
template <class scalar_t>
void update(const at::Tensor& x, const int64_t* labels, const scalar_t* mind, at::Tensor& c, bool spherical) {
  const int64_t n = x.size(0), k = c.size(0), dim = x.size(1);
  std::vector<int64_t> count(k + 1, 0), order(n);
  for (int64_t i = 0; i < n; ++i) ++count[labels[i] + 1];
  std::partial_sum(count.begin(), count.end(), count.begin());  // offsets
  std::vector<int64_t> fill(count.begin(), count.end() - 1);
  for (int64_t i = 0; i < n; ++i) order[fill[labels[i]]++] = i;
  const scalar_t* xp = x.const_data_ptr<scalar_t>();
  scalar_t* cp = c.mutable_data_ptr<scalar_t>();
  at::parallel_for(0, k, 4, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      const int64_t size = count[j + 1] - count[j];
      if (size == 0) continue;
      scalar_t* row = cp + j * dim;
      std::fill(row, row + dim, scalar_t(0));
      for (int64_t p = count[j]; p < count[j + 1]; ++p) {
        const scalar_t* src = xp + order[p] * dim;
        for (int64_t e = 0; e < dim; ++e) row[e] += src[e];
      }
      for (int64_t e = 0; e < dim; ++e) row[e] /= static_cast<scalar_t>(size);
    }
  });
  std::vector<int64_t> far;  // points by distance to their centroid, farthest first; taken in this order
  size_t taken = 0;
  for (int64_t j = 0; j < k; ++j) {
    if (count[j + 1] > count[j]) continue;
    if (far.empty()) {
      far.resize(n);
      std::iota(far.begin(), far.end(), 0);
      std::stable_sort(far.begin(), far.end(), [&](int64_t a, int64_t b) { return mind[a] > mind[b]; });
    }
    if (taken == far.size()) break;
    std::copy(xp + far[taken] * dim, xp + (far[taken] + 1) * dim, cp + j * dim);
    ++taken;
  }
  if (spherical) c.div_(c.norm(2, 1, true).clamp_min(1e-12));
}

// Lloyd's iterations on one problem: labels and centroids (c, updated in place); returns the inertia.
double lloyd(const at::Tensor& x, at::Tensor& c, at::Tensor& lab, int64_t niter, bool spherical) {
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "kmeans_lloyd_cpu", [&] {
    const int64_t n = x.size(0);
    if (n == 0) return;
    const auto xnorm = (x * x).sum(1);
    std::vector<scalar_t> mind(n);
    std::vector<int64_t> prev(n, -1);
    int64_t* lp = lab.mutable_data_ptr<int64_t>();
    total = assign<scalar_t>(x, xnorm, c, lp, mind.data());
    for (int64_t it = 0; it < niter; ++it) {
      update<scalar_t>(x, lp, mind.data(), c, spherical);
      std::copy(lp, lp + n, prev.begin());
      total = assign<scalar_t>(x, xnorm, c, lp, mind.data());
      if (std::equal(lp, lp + n, prev.begin())) break;  // converged: another update changes nothing
    }
  });
  return total;
}

struct NoScratch {};

// Problems side by side, one thread each (see parallel_problems): each iteration of a small problem
// would otherwise open several parallel regions, and on a busy machine every region waits for its
// slowest thread. A problem's result does not depend on the threads it ran on.
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> kmeans_lloyd_cpu(
    at::TensorList xs, at::TensorList centroids, int64_t niter, bool spherical) {
  const BelowAutograd below_autograd;
  check_kmeans_args(xs, centroids, niter);
  std::vector<at::Tensor> points, labels, cents;
  std::vector<double> work;
  for (size_t i = 0; i < xs.size(); ++i) {
    points.push_back(xs[i].contiguous());
    cents.push_back(centroids[i].clone(at::MemoryFormat::Contiguous));
    labels.push_back(at::empty({xs[i].size(0)}, xs[i].options().dtype(at::kLong)));
    work.push_back(static_cast<double>(xs[i].size(0)) * (cents[i].size(0) + 4) * (xs[i].size(1) + 4));
  }
  auto inertia = at::zeros({static_cast<int64_t>(xs.size())}, at::kDouble);
  double* out = inertia.mutable_data_ptr<double>();
  parallel_problems<NoScratch>(work, 1 << 20, [&](size_t i, NoScratch&) {
    out[i] = lloyd(points[i], cents[i], labels[i], niter, spherical);
  });
  return {labels, cents, inertia};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CPU, m) {
  m.impl("kmeans_lloyd", &kmeans_lloyd_cpu);
}

}  // namespace pyprune_fast
