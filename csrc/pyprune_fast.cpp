// Every operator schema of pyprune_fast, in one place. Kernels live in cpu/ and cuda/.
#include <torch/library.h>

TORCH_LIBRARY(pyprune_fast, m) {
  // Pairwise distances between the rows of each 2-D tensor (one N x N matrix per input).
  m.def("pairwise_distance(Tensor[] xs, str metric) -> Tensor[]");
  // Compact copies holding channels `indices[i]` of xs[i] along dims[i].
  // `indices` and `dims` hold one entry per tensor, or one entry for all of them.
  m.def("gather_channels(Tensor[] xs, Tensor[] indices, int[] dims) -> Tensor[]");
  // Channel addition in place: channel keep[g] of xs[i] along dims[i] becomes the (weighted) sum of
  // the channels c with assignments[c] == g. List arguments: one entry per tensor or one for all.
  m.def(
      "merge_channels_(Tensor(a!)[] xs, Tensor[] assignments, Tensor[] keep, int[] dims, "
      "Tensor?[] weights) -> ()");
}
