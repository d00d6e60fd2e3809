// kmeans_lloyd's argument checks, and its batched Lloyd loop in ATen ops for any device (see kmeans_lloyd.h).
// The loop follows the CPU kernel step for step: an assignment, then up to niter times an update and an assignment, a
// problem stopping once no label changes; ties go to the lower centroid index, cluster sums run in point
// order, empty clusters take the farthest points. Nothing here reads device memory from the host except
// the convergence flags, once per `sync_every` iterations for all problems together.
#include "kmeans_lloyd.h"

#include <c10/core/DeviceGuard.h>

#include <initializer_list>
#include <map>
#include <numeric>

namespace pyprune_fast {
namespace {

// Every element of every tensor of the named lists finite (NaN propagates through aminmax: one pass each,
// one host read for all the lists); otherwise a ValueError naming the first bad tensor, a bad entry and its value.
void check_finite(const char* op, std::initializer_list<std::pair<const char*, at::TensorList>> lists) {
  std::vector<at::Tensor> flags;
  std::vector<std::pair<const char*, size_t>> which;  // (list name, position) of each flag
  std::vector<at::Tensor> tensors;
  for (const auto& [name, ts] : lists) {
    for (size_t i = 0; i < ts.size(); ++i) {
      if (ts[i].numel() == 0) continue;
      const auto [lo, hi] = at::aminmax(ts[i]);
      flags.push_back(at::isfinite(lo).logical_and(at::isfinite(hi)));
      which.emplace_back(name, i);
      tensors.push_back(ts[i]);
    }
  }
  if (flags.empty()) return;
  const auto host = at::stack(flags).cpu();
  for (size_t f = 0; f < flags.size(); ++f) {
    if (host[f].item<bool>()) continue;
    const auto t = tensors[f].cpu();
    const auto where = at::logical_not(at::isfinite(t)).nonzero()[0];  // (row, column)
    const int64_t r = where[0].item<int64_t>(), c = where[1].item<int64_t>();
    const char* name = which[f].first;
    const size_t i = which[f].second;
    TORCH_CHECK_VALUE(false, op, ": ", name, "[", i, "] holds ", t[r][c].item<double>(), " at [", r, ", ", c,
                      "] (problem ", i, "); values must be finite");
  }
}

// The problems of one shape, stacked: row b of every tensor belongs to problem ids[b].
struct Bucket {
  std::vector<int64_t> ids;
  at::Tensor x, xnorm;      // (B, N, D) points, (B, N) their squared norms
  at::Tensor c;             // (B, k, D) centroids
  at::Tensor labels, mind;  // (B, N) int64 nearest centroid, (B, N) squared distance to it
  at::Tensor active;        // (B,) bool: not converged yet
};

struct Outputs {
  std::vector<at::Tensor> labels, centroids;
  at::Tensor inertia;
};

// Host indices on `device`; through pinned memory and an asynchronous copy on an accelerator (no host sync).
at::Tensor to_device(const std::vector<int64_t>& v, c10::Device device) {
  auto t = at::tensor(v, at::kLong);
  return device.is_cpu() ? t : t.pin_memory().to(device, /*non_blocking=*/true);
}

Bucket stack_bucket(at::TensorList xs, at::TensorList centroids, const std::vector<int64_t>& ids) {
  std::vector<at::Tensor> x, c;
  for (int64_t i : ids) x.push_back(xs[i]), c.push_back(centroids[i]);
  Bucket b{ids, at::stack(x), {}, at::stack(c), {}, {}, {}};
  b.xnorm = (b.x * b.x).sum(2);
  b.labels = at::full(b.xnorm.sizes(), -1, b.xnorm.options().dtype(at::kLong));
  b.mind = at::zeros_like(b.xnorm);
  b.active = at::ones({b.x.size(0)}, b.x.options().dtype(at::kBool));
  return b;
}

// Labels and squared distances of the active problems from one batched product, |c|^2 - 2 x.c (its
// minimum plus |x|^2 is the distance); returns which of them changed a label.
at::Tensor assign(Bucket& b, AssignEpilogue epilogue) {
  const auto cnorm = (b.c * b.c).sum(2);
  const auto ct = b.c.transpose(1, 2);
  if (epilogue) return epilogue(at::bmm(b.x, ct), cnorm, b.xnorm, b.active, b.labels, b.mind);
  auto [best, labels] = at::baddbmm(cnorm.unsqueeze(1), b.x, ct, /*beta=*/1, /*alpha=*/-2).min(2);  // first minimum
  const auto active = b.active.unsqueeze(1);
  auto changed = ((labels != b.labels) & active).any(1);
  b.labels = at::where(active, labels, b.labels);
  b.mind = at::where(active, (best + b.xnorm).clamp_min(0), b.mind);
  return changed;
}

// New centroids of the active problems: each cluster's mean, its points summed in point order by one
// segmented sum over the bucket (deterministic: a fixed order, no atomics); the r-th empty cluster of a
// problem (in cluster order) takes the problem's r-th farthest point from its centroid (stable sort: ties
// to the lower point index) while there are points, and keeps its centroid after that; spherical: unit rows.
void update(Bucket& b, bool spherical) {
  if (b.c.numel() == 0) return;  // D == 0: nothing to move
  const int64_t batch = b.x.size(0), n = b.x.size(1), dim = b.x.size(2), k = b.c.size(1);
  const auto first = at::arange(batch, b.labels.options()).unsqueeze(1);
  const auto points = b.x.view({batch * n, dim});
  auto [keys, order] = (b.labels + first * k).view(-1).sort(/*stable=*/true, 0, /*descending=*/false);
  const auto offsets = at::searchsorted(keys, at::arange(batch * k + 1, keys.options()));  // no host read
  const auto sums = at::segment_reduce(points.index_select(0, order), "sum", {}, {}, offsets, 0, /*unsafe=*/true);
  const auto counts = offsets.diff();
  const auto size = counts.view({batch, k, 1});
  const auto empty = (counts == 0).view({batch, k});
  const auto rank = empty.cumsum(1) - 1;
  const auto far = std::get<1>(b.mind.sort(/*stable=*/true, 1, /*descending=*/true));
  const auto seeds = points.index_select(0, (far.gather(1, rank.clamp(0, n - 1)) + first * n).view(-1));
  auto c = at::where(empty.unsqueeze(2), at::where((rank < n).unsqueeze(2), seeds.view_as(b.c), b.c),
                     sums.view_as(b.c) / size.clamp_min(1).to(b.c.scalar_type()));
  if (spherical) c = c / c.norm(2, 2, /*keepdim=*/true).clamp_min(1e-12);
  b.c = at::where(b.active.view({batch, 1, 1}), c, b.c);
}

// Hands over the results of rows `rows` of the bucket (copies: no two outputs share memory).
void emit(const Bucket& b, const std::vector<int64_t>& rows, Outputs& out) {
  std::vector<int64_t> ids;
  for (int64_t r : rows) {
    ids.push_back(b.ids[r]);
    out.labels[ids.back()] = b.labels[r].clone();
    out.centroids[ids.back()] = b.c[r].clone();
  }
  const auto device = b.x.device();
  const auto totals = b.mind.index_select(0, to_device(rows, device)).to(at::kDouble).sum(1);
  out.inertia.index_copy_(0, to_device(ids, device), totals);
}

// One host read of the flags of every bucket: the converged problems hand over their results and leave.
void retire_converged(std::vector<Bucket>& buckets, Outputs& out) {
  std::vector<at::Tensor> flags;
  for (const auto& b : buckets) flags.push_back(b.active);
  const auto host = at::cat(flags).cpu();
  const bool* active = host.const_data_ptr<bool>();
  std::vector<Bucket> left;
  for (auto& b : buckets) {
    std::vector<int64_t> done, going;
    for (size_t r = 0; r < b.ids.size(); ++r) (*active++ ? going : done).push_back(r);
    if (done.empty()) {
      left.push_back(std::move(b));
      continue;
    }
    emit(b, done, out);
    if (going.empty()) continue;
    const auto idx = to_device(going, b.x.device());
    for (at::Tensor* t : {&b.x, &b.xnorm, &b.c, &b.labels, &b.mind, &b.active}) *t = t->index_select(0, idx);
    std::vector<int64_t> ids;
    for (int64_t r : going) ids.push_back(b.ids[r]);
    b.ids = std::move(ids);
    left.push_back(std::move(b));
  }
  buckets = std::move(left);
}

}  // namespace

c10::Device check_kmeans_args(at::TensorList xs, at::TensorList centroids, int64_t niter, at::TensorList grams) {
  const char* op = "kmeans_lloyd";
  TORCH_CHECK_VALUE(xs.size() == centroids.size(), op, ": got ", xs.size(), " problems but ", centroids.size(),
                    " centroid tensors");
  TORCH_CHECK_VALUE(grams.empty() || grams.size() == xs.size(), op, ": got ", xs.size(), " problems but ",
                    grams.size(), " Gram matrices (give one per problem, or none)");
  TORCH_CHECK_VALUE(niter >= 0, op, ": niter must be >= 0, got ", niter);
  const auto device = common_device(op, xs);
  std::vector<at::Tensor> points, bounds;  // float centroids; [min, max] of the row indices of each problem
  std::vector<size_t> indexed;
  for (size_t i = 0; i < xs.size(); ++i) {
    const auto &x = xs[i], &c = centroids[i];
    TORCH_CHECK_VALUE(x.dim() == 2, op, ": xs[", i, "] must be 2-D (points x features), got ", x.dim(), "-D");
    TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": xs[", i,
                     "] must be float32 or float64, got ", x.scalar_type());
    check_on_device(op, "centroids", i, c, device);
    if (c.scalar_type() == at::kLong) {  // row indices
      TORCH_CHECK_VALUE(c.dim() == 1 && c.numel() >= 1 && x.size(0) > 0, op, ": centroids[", i,
                        "] as row indices must be 1-D with k >= 1 entries into N = ", x.size(0),
                        " > 0 points, got shape ", c.sizes());
      const auto [lo, hi] = at::aminmax(c);
      bounds.push_back(at::stack({lo, hi}));
      indexed.push_back(i);
    } else {
      TORCH_CHECK_TYPE(c.scalar_type() == x.scalar_type(), op, ": centroids[", i, "] is ", c.scalar_type(),
                       " but xs[", i, "] is ", x.scalar_type(), " (or int64 row indices)");
      TORCH_CHECK_VALUE(c.dim() == 2 && c.size(1) == x.size(1) && (c.size(0) >= 1 || x.size(0) == 0), op,
                        ": centroids[", i, "] must be k x ", x.size(1), " with k >= 1, got shape ", c.sizes());
      points.push_back(c);
    }
    if (grams.empty() || grams[i].numel() == 0) continue;
    const auto& g = grams[i];
    check_on_device(op, "grams", i, g, device);
    TORCH_CHECK_TYPE(g.scalar_type() == x.scalar_type(), op, ": grams[", i, "] is ", g.scalar_type(), " but xs[", i,
                     "] is ", x.scalar_type());
    TORCH_CHECK_VALUE(g.dim() == 2 && g.size(0) == x.size(0) && g.size(1) == x.size(0), op, ": grams[", i,
                      "] must be N x N with N = ", x.size(0), " (X X^T), got shape ", g.sizes());
  }
  if (!bounds.empty()) {  // one host read for all of them
    const auto host = at::stack(bounds).cpu();
    const int64_t* b = host.const_data_ptr<int64_t>();
    for (size_t r = 0; r < indexed.size(); ++r) {
      const int64_t low = b[2 * r], high = b[2 * r + 1], n = xs[indexed[r]].size(0);
      TORCH_CHECK_VALUE(low >= 0 && high < n, op, ": centroids[", indexed[r], "] holds row index ",
                        low < 0 ? low : high, ", out of [0, ", n, ")");
    }
  }
  check_finite(op, {{"xs", xs}, {"centroids", points}});
  return device;
}

bool use_gram(at::TensorList xs, at::TensorList centroids, at::TensorList grams, size_t i, bool spherical) {
  if (spherical || grams.empty() || grams[i].numel() == 0 || centroids[i].scalar_type() != at::kLong) return false;
  const int64_t n = xs[i].size(0), k = centroids[i].size(0), d = xs[i].size(1);
  // Measured on one core: an iteration's Gram gathers (N^2) cost about as much as its product (N k D) at
  // D ~ 24 N / k (D ~ 48 for k = N / 2); the distance minimum (N k) is common to both.
  return k <= n && 24 * n <= k * d;
}

at::Tensor centroid_rows(const at::Tensor& x, const at::Tensor& c) {
  return c.scalar_type() == at::kLong ? x.index_select(0, c) : c;
}

KmeansResult kmeans_lloyd_batched(at::TensorList xs, at::TensorList seeds, int64_t niter, bool spherical,
                                  int64_t sync_every, AssignEpilogue epilogue, at::TensorList grams) {
  const auto device = check_kmeans_args(xs, seeds, niter, grams);
  std::vector<at::Tensor> centroids;
  for (size_t i = 0; i < xs.size(); ++i) centroids.push_back(centroid_rows(xs[i], seeds[i]));
  TORCH_CHECK_VALUE(sync_every >= 1, "kmeans_lloyd: sync_every must be >= 1, got ", sync_every);
  c10::OptionalDeviceGuard guard(device);
  const auto count = static_cast<int64_t>(xs.size());
  Outputs out{std::vector<at::Tensor>(count), std::vector<at::Tensor>(count),
              at::zeros({count}, at::TensorOptions(at::kDouble).device(device))};
  std::map<std::tuple<int64_t, int64_t, int64_t, at::ScalarType>, std::vector<int64_t>> shapes;
  for (int64_t i = 0; i < count; ++i) {
    const auto& x = xs[i];
    if (x.size(0) > 0) {
      shapes[{x.size(0), x.size(1), centroids[i].size(0), x.scalar_type()}].push_back(i);
    } else {
      out.labels[i] = at::empty({0}, x.options().dtype(at::kLong));
      out.centroids[i] = centroids[i].clone(at::MemoryFormat::Contiguous);
    }
  }
  std::vector<Bucket> buckets;
  for (const auto& [shape, ids] : shapes) buckets.push_back(stack_bucket(xs, centroids, ids));
  for (auto& b : buckets) assign(b, epilogue);
  for (int64_t it = 1; it <= niter && !buckets.empty(); ++it) {
    for (auto& b : buckets) {
      update(b, spherical);
      b.active = assign(b, epilogue);
    }
    if (it % sync_every == 0 && it < niter) retire_converged(buckets, out);
  }
  for (const auto& b : buckets) {
    std::vector<int64_t> rows(b.ids.size());
    std::iota(rows.begin(), rows.end(), 0);
    emit(b, rows, out);
  }
  return {out.labels, out.centroids, out.inertia};
}

}  // namespace pyprune_fast
