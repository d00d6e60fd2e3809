// The backend-independent half of ward_linkage: argument checks, and the CPU kernel that every backend runs.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace pyprune_fast {

// Floating-point, 2-D, square matrices (their values are checked while the kernel reads them).
void check_ward_dists(at::TensorList dists);

// The CPU kernel (cpu/ward_linkage_kernel.cpp).
std::vector<at::Tensor> ward_linkage_cpu(at::TensorList dists);

}  // namespace pyprune_fast
