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

// Nearest centroid of every point from dots = x.c (n x k, row-major), |c|^2 and |x|^2 (xn[i * xn_stride]):
// argmin |c|^2 - 2 x.c, ties to the lower centroid index, and the squared distance, clamped at 0. Returns the
// sum of the squared distances, in point order (the same sum on every run).
template <class scalar_t>
double nearest(const scalar_t* d, const scalar_t* cn, const scalar_t* xn, int64_t xn_stride, int64_t n, int64_t k,
               int64_t* labels, scalar_t* mind) {
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
      mind[i] = std::max(scalar_t(0), xn[i * xn_stride] + best_d);
    }
  });
  double total = 0;
  for (int64_t i = 0; i < n; ++i) total += mind[i];
  return total;
}

// Nearest centroid of every point, from one matrix product: |x|^2 + |c|^2 - 2 x.c.
template <class scalar_t>
double assign(const at::Tensor& x, const at::Tensor& xnorm, const at::Tensor& c, int64_t* labels, scalar_t* mind) {
  const auto dots = at::mm(x, c.t());  // n x k
  const auto cnorm = (c * c).sum(1);
  return nearest<scalar_t>(dots.const_data_ptr<scalar_t>(), cnorm.const_data_ptr<scalar_t>(),
                           xnorm.const_data_ptr<scalar_t>(), 1, x.size(0), c.size(0), labels, mind);
}

// Cluster sizes as offsets (count[j + 1] - count[j] points in cluster j) and the points in cluster order
// (in point order within a cluster).
void members(const int64_t* labels, int64_t n, int64_t k, std::vector<int64_t>& count, std::vector<int64_t>& order) {
  count.assign(k + 1, 0);
  order.resize(n);
  for (int64_t i = 0; i < n; ++i) ++count[labels[i] + 1];
  std::partial_sum(count.begin(), count.end(), count.begin());
  std::vector<int64_t> fill(count.begin(), count.end() - 1);
  for (int64_t i = 0; i < n; ++i) order[fill[labels[i]]++] = i;
}

// The point that re-seeds each empty cluster (-1 for the others): the points farthest from their centroids
// (mind), farthest first (ties to the lower index), taken by the empty clusters in cluster order.
template <class scalar_t>
std::vector<int64_t> reseeds(const std::vector<int64_t>& count, const scalar_t* mind, int64_t n) {
  const int64_t k = static_cast<int64_t>(count.size()) - 1;
  std::vector<int64_t> seed(k, -1), far;
  size_t taken = 0;
  for (int64_t j = 0; j < k; ++j) {
    if (count[j + 1] > count[j]) continue;
    if (far.empty()) {
      far.resize(n);
      std::iota(far.begin(), far.end(), 0);
      std::stable_sort(far.begin(), far.end(), [&](int64_t a, int64_t b) { return mind[a] > mind[b]; });
    }
    if (taken == far.size()) break;
    seed[j] = far[taken++];
  }
  return seed;
}

// New centroids: the mean of each cluster's points, summed in point order (deterministic); each empty
// cluster is re-seeded with the point farthest from its centroid (the farthest first, for clusters in
// index order).
template <class scalar_t>
void update(const at::Tensor& x, const int64_t* labels, const scalar_t* mind, at::Tensor& c, bool spherical) {
  const int64_t n = x.size(0), k = c.size(0), dim = x.size(1);
  std::vector<int64_t> count, order;
  members(labels, n, k, count, order);
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
  const auto seed = reseeds(count, mind, n);
  for (int64_t j = 0; j < k; ++j) {
    if (seed[j] >= 0) std::copy(xp + seed[j] * dim, xp + (seed[j] + 1) * dim, cp + j * dim);
  }
  if (spherical) c.div_(c.norm(2, 1, true).clamp_min(1e-12));
}

// An update in Gram space (g = x x^T, n x n): every centroid is the mean of its cluster's points, or the point
// that re-seeds it when empty (as in update), so x_i.c_j (dots, n x k) is the mean of row i of g over cluster
// j (summed in point order) and |c_j|^2 (cn) the mean of x_i.c_j over the points i of cluster j.
template <class scalar_t>
void gram_update(const scalar_t* g, int64_t n, const int64_t* labels, const scalar_t* mind, scalar_t* dots,
                 scalar_t* cn, int64_t k) {
  std::vector<int64_t> count, order;
  members(labels, n, k, count, order);
  const auto seed = reseeds(count, mind, n);
  for (int64_t i = 0; i < n; ++i) {  // gathers in cluster order (a scatter would chain through memory)
    const scalar_t* row = g + i * n;
    scalar_t* out = dots + i * k;
    for (int64_t j = 0; j < k; ++j) {
      if (seed[j] >= 0) {
        out[j] = row[seed[j]];
        continue;
      }
      scalar_t sum = 0;
      for (int64_t p = count[j]; p < count[j + 1]; ++p) sum += row[order[p]];
      out[j] = sum / static_cast<scalar_t>(count[j + 1] - count[j]);
    }
  }
  for (int64_t j = 0; j < k; ++j) {
    if (seed[j] >= 0) {
      cn[j] = g[seed[j] * (n + 1)];
      continue;
    }
    scalar_t sum = 0;
    for (int64_t p = count[j]; p < count[j + 1]; ++p) sum += dots[order[p] * k + j];
    cn[j] = sum / static_cast<scalar_t>(count[j + 1] - count[j]);
  }
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

// lloyd's iterations from the Gram matrix g = x x^T and the rows `seeds` of x as the first centroids: each
// iteration O(n^2 + n k) instead of O(n k d) (see gram_update); the centroids (c, k x d) are formed once, at
// the end, from the labels and distances of the last update. Returns the inertia.
double gram_lloyd(const at::Tensor& x, const at::Tensor& gram, const at::Tensor& seeds, at::Tensor& c,
                  at::Tensor& lab, int64_t niter) {
  double total = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "kmeans_lloyd_cpu", [&] {
    const int64_t n = x.size(0), k = seeds.size(0);
    const auto gt = gram.contiguous();
    const scalar_t* g = gt.const_data_ptr<scalar_t>();
    const int64_t* s = seeds.const_data_ptr<int64_t>();
    std::vector<scalar_t> dots(n * k), cn(k), mind(n), last_mind(n);
    for (int64_t i = 0; i < n; ++i) {
      for (int64_t j = 0; j < k; ++j) dots[i * k + j] = g[i * n + s[j]];
    }
    for (int64_t j = 0; j < k; ++j) cn[j] = g[s[j] * (n + 1)];
    std::vector<int64_t> last(n);
    int64_t* lp = lab.mutable_data_ptr<int64_t>();
    total = nearest<scalar_t>(dots.data(), cn.data(), g, n + 1, n, k, lp, mind.data());
    bool moved = false;
    for (int64_t it = 0; it < niter; ++it) {
      gram_update<scalar_t>(g, n, lp, mind.data(), dots.data(), cn.data(), k);
      std::copy(lp, lp + n, last.begin());
      std::copy(mind.begin(), mind.end(), last_mind.begin());
      moved = true;
      total = nearest<scalar_t>(dots.data(), cn.data(), g, n + 1, n, k, lp, mind.data());
      if (std::equal(lp, lp + n, last.begin())) break;
    }
    if (moved) {
      update<scalar_t>(x, last.data(), last_mind.data(), c, false);
    } else {
      c.copy_(x.index_select(0, seeds));
    }
  });
  return total;
}

struct NoScratch {};

// Problems side by side, one thread each (see parallel_problems): each iteration of a small problem
// would otherwise open several parallel regions, and on a busy machine every region waits for its
// slowest thread. A problem's result does not depend on the threads it ran on. Problems with a Gram matrix
// and row indices run gram_lloyd where that is cheaper (use_gram).
std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> kmeans_lloyd_cpu(
    at::TensorList xs, at::TensorList centroids, int64_t niter, bool spherical, at::TensorList grams) {
  const BelowAutograd below_autograd;
  check_kmeans_args(xs, centroids, niter, grams);
  std::vector<at::Tensor> points, labels, cents;
  std::vector<bool> gram;
  std::vector<double> work;
  for (size_t i = 0; i < xs.size(); ++i) {
    gram.push_back(use_gram(xs, centroids, grams, i, spherical));
    points.push_back(xs[i].contiguous());
    const auto& c = centroids[i];
    cents.push_back(gram[i] ? at::empty({c.size(0), xs[i].size(1)}, xs[i].options())
                            : centroid_rows(xs[i], c).clone(at::MemoryFormat::Contiguous));
    labels.push_back(at::empty({xs[i].size(0)}, xs[i].options().dtype(at::kLong)));
    const double n = xs[i].size(0), k = c.size(0), d = xs[i].size(1);
    work.push_back(gram[i] ? 24 * n * (n + k) : n * (k + 4) * (d + 4));  // in product multiply-adds (use_gram)
  }
  auto inertia = at::zeros({static_cast<int64_t>(xs.size())}, at::kDouble);
  double* out = inertia.mutable_data_ptr<double>();
  parallel_problems<NoScratch>(work, 1 << 20, [&](size_t i, NoScratch&) {
    out[i] = gram[i] ? gram_lloyd(points[i], grams[i], centroids[i].contiguous(), cents[i], labels[i], niter)
                     : lloyd(points[i], cents[i], labels[i], niter, spherical);
  });
  return {labels, cents, inertia};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CPU, m) {
  m.impl("kmeans_lloyd", &kmeans_lloyd_cpu);
}

}  // namespace pyprune_fast
