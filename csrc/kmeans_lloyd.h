// The backend-independent half of kmeans_lloyd: argument checks, and the batched Lloyd loop (ATen ops on
// any device) that the CUDA kernel runs with its fused assignment epilogue, and that the private op
// _kmeans_lloyd_batched runs on any device with ATen ops alone (so that the loop is tested on the CPU).
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <tuple>
#include <utility>
#include <vector>

#include "checks.h"

namespace pyprune_fast {

// Every element of every tensor of the named lists finite (NaN propagates through aminmax: one pass each,
// one host read for all the lists); otherwise a ValueError naming the first bad tensor, a bad entry and its value.
inline void check_finite(const char* op, std::initializer_list<std::pair<const char*, at::TensorList>> lists) {
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

// xs[i] (N x D) and centroids[i] (k x D): one floating dtype, one device (returned), k >= 1 when N > 0.
inline c10::Device check_kmeans_args(at::TensorList xs, at::TensorList centroids, int64_t niter) {
  const char* op = "kmeans_lloyd";
  TORCH_CHECK_VALUE(xs.size() == centroids.size(), op, ": got ", xs.size(), " problems but ", centroids.size(),
                    " centroid tensors");
  TORCH_CHECK_VALUE(niter >= 0, op, ": niter must be >= 0, got ", niter);
  const auto device = common_device(op, xs);
  for (size_t i = 0; i < xs.size(); ++i) {
    const auto &x = xs[i], &c = centroids[i];
    TORCH_CHECK_VALUE(x.dim() == 2, op, ": xs[", i, "] must be 2-D (points x features), got ", x.dim(), "-D");
    TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op, ": xs[", i,
                     "] must be float32 or float64, got ", x.scalar_type());
    TORCH_CHECK_TYPE(c.scalar_type() == x.scalar_type(), op, ": centroids[", i, "] is ", c.scalar_type(), " but xs[", i,
                     "] is ", x.scalar_type());
    check_on_device(op, "centroids", i, c, device);
    TORCH_CHECK_VALUE(c.dim() == 2 && c.size(1) == x.size(1) && (c.size(0) >= 1 || x.size(0) == 0), op,
                      ": centroids[", i, "] must be k x ", x.size(1), " with k >= 1, got shape ", c.sizes());
  }
  check_finite(op, {{"xs", xs}, {"centroids", centroids}});
  return device;
}

// (labels (N_i,) int64, centroids (k_i x D_i), inertia (len(xs),) float64), all on the inputs' device.
using KmeansResult = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor>;

// The end of an assignment step, for a bucket of B problems with N points and k centroids each: from
// dots = X C^T (B x N x k), |c|^2 (B x k) and |x|^2 (B x N), the points of the problems with active[b] get
// label = argmin_j |c_j|^2 - 2 x.c_j (ties to the lower j) and mind = max(0, |x|^2 + that minimum), written
// in place into labels (B x N int64) and mind (B x N); other problems are left alone. Returns (B,) bool:
// active and some label changed. All tensors contiguous.
using AssignEpilogue = at::Tensor (*)(const at::Tensor& dots, const at::Tensor& cnorm, const at::Tensor& xnorm,
                                      const at::Tensor& active, at::Tensor& labels, at::Tensor& mind);

// kmeans_lloyd for every problem, batched: problems of one (N, D, k, dtype) are stacked and run as one
// batch (one batched product per assignment, one segmented sum per update). Whether each problem's labels
// changed is kept on the device; every `sync_every` iterations one host read of these flags, for all
// batches together, retires the converged problems (a converged problem's centroids and labels are frozen
// until then, so the result never depends on sync_every). `epilogue` replaces the ATen ops that end an
// assignment (null: ATen only).
KmeansResult kmeans_lloyd_batched(at::TensorList xs, at::TensorList centroids, int64_t niter, bool spherical,
                                  int64_t sync_every, AssignEpilogue epilogue = nullptr);

}  // namespace pyprune_fast
