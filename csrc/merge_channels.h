// merge_channels_' argument checks, shared by every backend: index checks run on the tensors' device and meet
// the host once per call.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <vector>

#include "checks.h"

namespace pyprune_fast {

// Cluster members in CSR form: members[offsets[g] : offsets[g + 1]] are the channels of cluster g,
// ascending, so every backend sums them in the same order (bitwise deterministic results).
struct MergeArgs {
  std::vector<int64_t> dims;
  std::vector<at::Tensor> keep;     // int64 (G)
  std::vector<at::Tensor> members;  // int64 (C)
  std::vector<at::Tensor> offsets;  // int64 (G + 1)
  std::vector<at::Tensor> weights;  // undefined, or (C) in the accumulate type of xs[i]
};

MergeArgs prepare_merge(
    at::TensorList xs,
    at::TensorList assignments,
    at::TensorList keep,
    at::IntArrayRef dims,
    const c10::List<std::optional<at::Tensor>>& weights);

}  // namespace pyprune_fast
