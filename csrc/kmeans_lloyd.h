// The backend-independent half of kmeans_lloyd: argument checks, and the batched Lloyd loop (ATen ops on
// any device) that the CUDA kernel runs with its fused assignment epilogue, and that the private op
// _kmeans_lloyd_batched (testing_ops.cpp) runs on any device with ATen ops alone (so that the loop is tested
// on the CPU).
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <utility>
#include <vector>

#include "checks.h"

namespace pyprune_fast {

// xs[i] (N x D) and centroids[i] (k x D, or k >= 1 int64 indices in [0, N) of the rows of xs[i] to start
// from): one floating dtype, one device (returned), k >= 1 when N > 0, every value finite; grams empty or one
// per problem, each empty or N x N in xs[i]'s dtype on that device (X X^T, read only with row indices);
// otherwise a ValueError or TypeError naming the argument.
c10::Device check_kmeans_args(at::TensorList xs, at::TensorList centroids, int64_t niter, at::TensorList grams = {});

// Whether problem i runs from its Gram matrix: grams[i] given, centroids[i] row indices (k <= N), not spherical,
// and an iteration from it (N^2 gathers) costs less than one from the points (an N k D product): 24 N <= k D.
bool use_gram(at::TensorList xs, at::TensorList centroids, at::TensorList grams, size_t i, bool spherical);

// Centroids c of points x as a k x D tensor: row indices become those rows of x.
at::Tensor centroid_rows(const at::Tensor& x, const at::Tensor& c);

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
// Centroids given as row indices start from those rows; grams are checked, not read (the iterations run from
// the points).
KmeansResult kmeans_lloyd_batched(at::TensorList xs, at::TensorList centroids, int64_t niter, bool spherical,
                                  int64_t sync_every, AssignEpilogue epilogue = nullptr, at::TensorList grams = {});

}  // namespace pyprune_fast
