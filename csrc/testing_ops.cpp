// Private ops for tests, kept out of the public schema file: a fragment of the pyprune_fast library.
#include <torch/library.h>

#include "kmeans_lloyd.h"

namespace pyprune_fast {
namespace {

KmeansResult kmeans_lloyd_batched_op(at::TensorList xs, at::TensorList centroids, int64_t niter, bool spherical,
                                     int64_t sync_every) {
  const BelowAutograd below_autograd;
  return kmeans_lloyd_batched(xs, centroids, niter, spherical, sync_every);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pyprune_fast, m) {
  // kmeans_lloyd's batched loop (what the CUDA kernel runs) in ATen ops alone, on any device, so that tests
  // compare it with the CPU kernel and the reference; the host reads the convergence flags every `sync_every`
  // iterations (results do not depend on it).
  m.def(
      "_kmeans_lloyd_batched(Tensor[] xs, Tensor[] centroids, int niter, bool spherical, int sync_every=1) -> "
      "(Tensor[] labels, Tensor[] centroids, Tensor inertia)");
}

TORCH_LIBRARY_IMPL(pyprune_fast, CompositeExplicitAutograd, m) {
  m.impl("_kmeans_lloyd_batched", &kmeans_lloyd_batched_op);
}

}  // namespace pyprune_fast
