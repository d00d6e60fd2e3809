// Every public operator schema of pyprune_fast, in one place. Each op's checks are in <op>.cpp, its kernels in
// cpu/<op>_kernel.cpp and cuda/<op>_kernel.cu; private ops for tests are in testing_ops.cpp.
#include <torch/library.h>

TORCH_LIBRARY(pyprune_fast, m) {
  // Pairwise distances between the rows of each problem (one N x N matrix per problem). A problem is one
  // 2-D tensor, or with `blocks`, blocks[p] consecutive tensors of one row count: its columns side by side.
  m.def("pairwise_distance(Tensor[] xs, str metric, int[]? blocks=None) -> Tensor[]");
  // Compact copies holding channels `indices[i]` of xs[i] along dims[i].
  // `indices` and `dims` hold one entry per tensor, or one entry for all of them.
  m.def("gather_channels(Tensor[] xs, Tensor[] indices, int[] dims) -> Tensor[]");
  // Channel addition in place: channel keep[g] of xs[i] along dims[i] becomes the (weighted) sum of
  // the channels c with assignments[c] == g. List arguments: one entry per tensor or one for all.
  m.def(
      "merge_channels_(Tensor(a!)[] xs, Tensor[] assignments, Tensor[] keep, int[] dims, "
      "Tensor?[] weights) -> ()");
  // Ward linkage of each N x N Euclidean distance matrix (upper triangle read), CPU only:
  // (N - 1) x 4 float64 rows [cluster a, cluster b, height, size] in scipy's linkage format and order.
  m.def("ward_linkage(Tensor[] dists) -> Tensor[]");
  // Lloyd iterations for many k-means problems at once: xs[i] (N_i x D_i) from centroids[i] (k_i x D_i, or
  // k_i int64 indices of rows of xs[i]). With row indices, grams[i] = xs[i] xs[i]^T (N_i x N_i; empty, or
  // an empty list: none) lets the iterations run from it where that is cheaper. Returns (labels (N_i,) int64,
  // centroids (k_i x D_i), inertia (len(xs),) float64).
  m.def(
      "kmeans_lloyd(Tensor[] xs, Tensor[] centroids, int niter, bool spherical, Tensor[] grams) -> "
      "(Tensor[] labels, Tensor[] centroids, Tensor inertia)");
  // k-means++ seeding of many problems at once: k[i] indices of rows of xs[i] (N_i x D_i), int64. Draw t of
  // every problem uses uniforms[t] (float64): the first uniformly, each next one by inverse CDF of the squared
  // distances to the nearest row drawn so far (uniformly again when they are all zero). With return_gram,
  // grams[i] is the Gram matrix xs[i] xs[i]^T the draws read (N_i x N_i, input dtype), or empty where they
  // read matrix-vector products instead; without, every grams[i] is empty.
  m.def(
      "kmeanspp_init(Tensor[] xs, int[] k, Tensor uniforms, bool return_gram=False) -> "
      "(Tensor[] indices, Tensor[] grams)");
}
