// ward_linkage's argument checks, and its CUDA registration: the nearest-neighbour chain is sequential, so
// there is no CUDA kernel, and tensors on a GPU are refused with a message saying to move them to the CPU.
// It is registered in every build (no CUDA code here), so a CPU-only build says so too.
#include "ward_linkage.h"

#include <torch/library.h>

#include "checks.h"

namespace pyprune_fast {

void check_ward_dists(at::TensorList dists) {
  const char* op = "ward_linkage";
  for (size_t i = 0; i < dists.size(); ++i) {
    const auto& d = dists[i];
    TORCH_CHECK_TYPE(at::isFloatingType(d.scalar_type()), op, ": dists[", i, "] must be a floating-point tensor, got ",
                     d.scalar_type());
    TORCH_CHECK_VALUE(d.dim() == 2, op, ": dists[", i, "] must be a 2-D distance matrix, got ", d.dim(), "-D");
    TORCH_CHECK_VALUE(d.size(0) == d.size(1), op, ": dists[", i, "] must be square, got ", d.size(0), " x ",
                      d.size(1));
  }
}

namespace {

// No CUDA kernel (the chain is sequential): say so rather than the dispatcher's generic error.
std::vector<at::Tensor> ward_linkage_cuda(at::TensorList dists) {
  const BelowAutograd below_autograd;
  for (size_t i = 0; i < dists.size(); ++i) {
    TORCH_CHECK_VALUE(dists[i].is_cpu(), "ward_linkage: dists[", i, "] is on ", dists[i].device(),
                      "; the op runs on the CPU only, move the matrices there first (e.g. d.cpu())");
  }
  return ward_linkage_cpu(dists);
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CUDA, m) {
  m.impl("ward_linkage", &ward_linkage_cuda);
}

}  // namespace pyprune_fast
