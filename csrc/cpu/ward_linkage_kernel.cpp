// Ward linkage by the nearest-neighbour chain, in scipy.cluster.hierarchy.linkage's format and order.
// Tie rules and arithmetic follow scipy's, so on the same distances the result is the same bit for bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define PYPRUNE_WARD_AVX2 1
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <utility>
#include <vector>

#include "checks.h"
#include "cpu/parallel_rows.h"
#include "ward_linkage.h"

namespace pyprune_fast {
namespace {

constexpr const char* kOp = "ward_linkage";
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kMaxDistance = 1e150;  // squares stay far from overflow
constexpr double kCompactAt = 0.75;     // drop merged-away rows once fewer than this share is alive

// Ward distance from cluster i to x ∪ y (Lance–Williams on Euclidean distances), in scipy's operation
// order. It cannot go negative for a Euclidean matrix but rounding could; the clamp keeps NaN out.
inline double ward_distance(double d_xi, double d_yi, double d_xy, double nx, double ny, double ni) {
  const double t = 1.0 / (nx + ny + ni);
  const double v = (ni + nx) * t * d_xi * d_xi + (ni + ny) * t * d_yi * d_yi - ni * t * d_xy * d_xy;
  return std::sqrt(v > 0 ? v : 0.0);
}

inline double min_plus(double m, double a, double b) {
  const double v = a + b;
  return v < m ? v : m;
}

#if defined(PYPRUNE_WARD_AVX2)
// The two hot loops below, four lanes wide: the same IEEE operations in the same order (no FMA), so
// the same bits as the scalar code.
__attribute__((target("avx2"))) void update_row_avx2(const double* rx, double* ry, const double* sizes, double h,
                                                     double nx, double ny, int64_t n) {
  const __m256d vnx = _mm256_set1_pd(nx), vny = _mm256_set1_pd(ny), vnxy = _mm256_set1_pd(nx + ny);
  const __m256d vh = _mm256_set1_pd(h), one = _mm256_set1_pd(1.0), zero = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    const __m256d ni = _mm256_loadu_pd(sizes + i), dx = _mm256_loadu_pd(rx + i), dy = _mm256_loadu_pd(ry + i);
    const __m256d t = _mm256_div_pd(one, _mm256_add_pd(vnxy, ni));
    const __m256d a = _mm256_mul_pd(_mm256_mul_pd(_mm256_mul_pd(_mm256_add_pd(ni, vnx), t), dx), dx);
    const __m256d b = _mm256_mul_pd(_mm256_mul_pd(_mm256_mul_pd(_mm256_add_pd(ni, vny), t), dy), dy);
    const __m256d c = _mm256_mul_pd(_mm256_mul_pd(_mm256_mul_pd(ni, t), vh), vh);
    _mm256_storeu_pd(ry + i, _mm256_sqrt_pd(_mm256_max_pd(_mm256_sub_pd(_mm256_add_pd(a, b), c), zero)));
  }
  for (; i < n; ++i) ry[i] = ward_distance(rx[i], ry[i], h, nx, ny, sizes[i]);
}

__attribute__((target("avx2"))) double row_min_avx2(const double* row, const double* pen, int64_t n) {
  __m256d m0 = _mm256_set1_pd(kInf), m1 = m0;
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    m0 = _mm256_min_pd(_mm256_add_pd(_mm256_loadu_pd(row + i), _mm256_loadu_pd(pen + i)), m0);
    m1 = _mm256_min_pd(_mm256_add_pd(_mm256_loadu_pd(row + i + 4), _mm256_loadu_pd(pen + i + 4)), m1);
  }
  alignas(32) double lanes[4];
  _mm256_store_pd(lanes, _mm256_min_pd(m0, m1));
  double m = std::min(std::min(lanes[0], lanes[1]), std::min(lanes[2], lanes[3]));
  for (; i < n; ++i) m = min_plus(m, row[i], pen[i]);
  return m;
}

const bool kHasAvx2 = (__builtin_cpu_init(), __builtin_cpu_supports("avx2"));
#endif

// Row y becomes the distances to x ∪ y, from rows x and y. Merged-away clusters (size 0) get finite
// values nobody reads; the diagonal stays +inf.
void update_row(const double* rx, double* ry, const double* sizes, double h, double nx, double ny, int64_t n) {
#if defined(PYPRUNE_WARD_AVX2)
  if (kHasAvx2) return update_row_avx2(rx, ry, sizes, h, nx, ny, n);
#endif
  for (int64_t i = 0; i < n; ++i) ry[i] = ward_distance(rx[i], ry[i], h, nx, ny, sizes[i]);
}

// min over i of row[i] + pen[i], where pen is 0 for live clusters and +inf for merged-away ones.
double row_min(const double* row, const double* pen, int64_t n) {
#if defined(PYPRUNE_WARD_AVX2)
  if (kHasAvx2) return row_min_avx2(row, pen, n);
#endif
  double m[4] = {kInf, kInf, kInf, kInf};  // four independent chains
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int l = 0; l < 4; ++l) m[l] = min_plus(m[l], row[i + l], pen[i + l]);
  }
  for (; i < n; ++i) m[0] = min_plus(m[0], row[i], pen[i]);
  return std::min(std::min(m[0], m[1]), std::min(m[2], m[3]));
}

[[noreturn]] void bad_entry(const at::Tensor& src, size_t index) {
  const auto d = src.to(at::kDouble);  // kMaxDistance is inf in float32
  const auto bad = at::logical_not(at::logical_and(d.ge(0), d.le(kMaxDistance))).nonzero();
  const int64_t r = bad[0][0].item<int64_t>(), c = bad[0][1].item<int64_t>();
  TORCH_CHECK_VALUE(false, kOp, ": dists[", index, "] holds ", src[r][c].item<double>(), " at [", r, ", ", c,
                    "]; distances must be finite, >= 0 and <= ", kMaxDistance);
}

// d = src (n x n, contiguous) as float64 with its strict upper triangle mirrored onto the lower one and
// +inf on the diagonal. Returns whether every entry of src was valid.
template <class scalar_t>
bool load(const scalar_t* src, int64_t n, double* d) {
  bool ok = true;
  for (int64_t e = 0; e < n * n; ++e) {
    const double v = static_cast<double>(src[e]);
    ok &= (v >= 0) & (v <= kMaxDistance);  // false for NaN
    d[e] = v;
  }
  constexpr int64_t kTile = 16;  // row j of a tile is filled from column j of its mirror image
  for (int64_t jb = 0; jb < n; jb += kTile) {
    for (int64_t ib = 0; ib <= jb; ib += kTile) {
      for (int64_t j = jb; j < std::min(n, jb + kTile); ++j) {
        for (int64_t i = ib; i < std::min(j, ib + kTile); ++i) d[j * n + i] = d[i * n + j];
      }
    }
  }
  for (int64_t i = 0; i < n; ++i) d[i * n + i] = kInf;
  return ok;
}

struct Merge {
  int64_t a, b;  // original indices (slots) of the two clusters, a < b; the union keeps slot b
  double height;
};

// The chain on d (dim x dim at row stride dim, symmetric, +inf diagonal; overwritten): n - 1 merges in
// the order found. Clusters live at positions; merged-away positions are dropped from time to time,
// order kept, so "lowest position" stays "lowest slot" for ties.
std::vector<Merge> nn_chain(double* d, int64_t n) {
  int64_t dim = n, alive = n;
  std::vector<double> size(n, 1.0), pen(n, 0.0);
  std::vector<int64_t> slot(n), chain, keep, position(n);
  std::iota(slot.begin(), slot.end(), 0);
  chain.reserve(n);
  keep.reserve(n);
  std::vector<Merge> merges(n - 1);
  for (int64_t k = 0; k < n - 1; ++k) {
    if (alive < kCompactAt * dim && dim > 64) {
      // Rows and columns of live clusters moved up in place (a destination never passes its source).
      keep.clear();
      for (int64_t p = 0; p < dim; ++p) {
        if (pen[p] == 0) {
          position[p] = static_cast<int64_t>(keep.size());
          keep.push_back(p);
        }
      }
      for (int64_t a = 0; a < alive; ++a) {
        const double* src = d + keep[a] * dim;
        double* dst = d + a * alive;
        for (int64_t b = 0; b < alive; ++b) dst[b] = src[keep[b]];
        size[a] = size[keep[a]];
        slot[a] = slot[keep[a]];
        pen[a] = 0;
      }
      for (auto& c : chain) c = position[c];
      dim = alive;
    }
    if (chain.empty()) chain.push_back(std::find(pen.begin(), pen.begin() + dim, 0.0) - pen.begin());
    // Grow the chain until its last two entries are each other's nearest neighbours. The nearest is
    // the lowest position at the least distance, but the previous entry wins unless something is
    // strictly nearer (scipy's rule; it also keeps ties from cycling).
    int64_t x = 0, y = 0;
    double h = 0;
    for (;;) {
      x = chain.back();
      const double* row = d + x * dim;
      const double m = row_min(row, pen.data(), dim);
      if (chain.size() > 1) {
        y = chain[chain.size() - 2];
        h = row[y];
        if (!(m < h)) break;
      }
      int64_t i = 0;
      while (row[i] + pen[i] != m) ++i;
      chain.push_back(i);
    }
    chain.resize(chain.size() - 2);
    if (x > y) std::swap(x, y);
    const double nx = size[x], ny = size[y];
    merges[k] = {slot[x], slot[y], h};
    size[x] = 0;
    pen[x] = kInf;
    size[y] = nx + ny;
    --alive;
    double* ry = d + y * dim;
    update_row(d + x * dim, ry, size.data(), h, nx, ny, dim);
    for (int64_t i = 0; i < dim; ++i) d[i * dim + y] = ry[i];
  }
  return merges;
}

// Rows sorted by height (stably: the chain's order breaks ties) and named as scipy does: the cluster
// made by row r is n + r, a row names the current clusters holding its two slots, and its size is
// theirs added up. Sorting can move a merge before the one that grew one of its clusters (rounding
// ties in Lance–Williams); sizes from the tree, not the chain, keep the matrix valid, as scipy's do.
void label(const std::vector<Merge>& merges, int64_t n, double* out) {
  std::vector<int64_t> order(n - 1), parent(2 * n - 1);
  std::vector<double> size(2 * n - 1, 1.0);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t p, int64_t q) { return merges[p].height < merges[q].height; });
  std::iota(parent.begin(), parent.end(), 0);
  auto find = [&](int64_t v) {
    int64_t root = v;
    while (parent[root] != root) root = parent[root];
    while (parent[v] != root) v = std::exchange(parent[v], root);
    return root;
  };
  for (int64_t r = 0; r < n - 1; ++r) {
    const Merge& m = merges[order[r]];
    const int64_t a = find(m.a), b = find(m.b);
    parent[a] = parent[b] = n + r;
    size[n + r] = size[a] + size[b];
    double* row = out + 4 * r;
    row[0] = static_cast<double>(std::min(a, b));
    row[1] = static_cast<double>(std::max(a, b));
    row[2] = m.height;
    row[3] = size[n + r];
  }
}

}  // namespace

std::vector<at::Tensor> ward_linkage_cpu(at::TensorList dists) {
  const BelowAutograd below_autograd;
  check_ward_dists(dists);
  std::vector<at::Tensor> outs;
  std::vector<double> work;
  for (const auto& d : dists) {
    const int64_t n = d.size(0);
    outs.push_back(at::empty({std::max<int64_t>(n - 1, 0), 4}, d.options().dtype(at::kDouble)));
    work.push_back(static_cast<double>(n) * n);
  }
  std::vector<size_t> order;  // the problems with merges to do, largest first
  for (size_t p : largest_first(work)) {
    if (dists[p].size(0) > 1) order.push_back(p);
  }
  struct Scratch {
    std::unique_ptr<double[]> data;  // sized by the worker's first problem, its largest
    int64_t capacity = 0;
  };
  const double total = std::accumulate(work.begin(), work.end(), 0.0);
  parallel_queue<Scratch>(order, total, 65536, [&](size_t p, Scratch& scratch) {
    const auto src = dists[p].contiguous();
    const int64_t n = src.size(0);
    if (n * n > scratch.capacity) {
      scratch.data.reset(new double[n * n]);
      scratch.capacity = n * n;
    }
    bool ok = true;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, src.scalar_type(), "ward_linkage_cpu", [&] {
      ok = load(src.const_data_ptr<scalar_t>(), n, scratch.data.get());
    });
    if (!ok) bad_entry(src, p);
    label(nn_chain(scratch.data.get(), n), n, outs[p].mutable_data_ptr<double>());
  });
  return outs;
}

TORCH_LIBRARY_IMPL(pyprune_fast, CPU, m) {
  m.impl("ward_linkage", &ward_linkage_cpu);
}

}  // namespace pyprune_fast
