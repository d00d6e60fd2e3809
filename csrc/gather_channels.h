// gather_channels' argument checks, shared by every backend: index checks run on the tensors' device and meet
// the host once per call.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "checks.h"

namespace pyprune_fast {

struct GatherArgs {
  std::vector<at::Tensor> xs;       // contiguous
  std::vector<at::Tensor> indices;  // int64, one per tensor
  std::vector<int64_t> dims;        // wrapped
};

GatherArgs prepare_gather(at::TensorList xs, at::TensorList indices, at::IntArrayRef dims);

}  // namespace pyprune_fast
