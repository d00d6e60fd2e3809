// The backend-independent half of kmeans_lloyd: argument checks.
#pragma once

#include <ATen/ATen.h>

#include "checks.h"

namespace pyprune_fast {

// xs[i] (N x D) and centroids[i] (k x D): one floating dtype, one device, k >= 1 when N > 0.
inline void check_kmeans_args(at::TensorList xs, at::TensorList centroids, int64_t niter) {
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
}

}  // namespace pyprune_fast
