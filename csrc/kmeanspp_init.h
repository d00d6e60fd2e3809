// The backend-independent half of kmeanspp_init: its argument checks.
#pragma once

#include <ATen/ATen.h>

#include "checks.h"

namespace pyprune_fast {

// xs[i] (N_i x D_i, float32 or float64, one dtype, one device: returned), 1 <= k[i] <= N_i, one k per
// problem, uniforms 1-D float64 on that device with at least max k entries; otherwise a ValueError or
// TypeError naming the argument and its value.
c10::Device check_kmeanspp_args(at::TensorList xs, at::IntArrayRef k, const at::Tensor& uniforms);

}  // namespace pyprune_fast
