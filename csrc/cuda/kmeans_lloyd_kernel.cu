// kmeans_lloyd on CUDA, for now with ATen ops per problem (same algorithm, order and re-seeding rule as
// the CPU kernel; deterministic: segment sums, no atomics). Batched kernels across problems come next.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kmeans_lloyd.h"

namespace pyprune_fast {
namespace {

// labels, squared distance to the nearest centroid
std::pair<at::Tensor, at::Tensor> assign(const at::Tensor& x, const at::Tensor& xnorm, const at::Tensor& c) {
  auto d = (c * c).sum(1).unsqueeze(0) - 2 * at::mm(x, c.t());
  auto [best, labels] = d.min(1);
  return {labels, (best + xnorm).clamp_min(0)};
}

void update(const at::Tensor& x, const at::Tensor& labels, const at::Tensor& mind, at::Tensor& c, bool spherical) {
  const int64_t k = c.size(0);
  auto order = std::get<1>(labels.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  auto counts = at::bincount(labels, {}, k);
  auto sums = at::segment_reduce(x.index_select(0, order), "sum", /*lengths=*/counts);
  auto filled = counts > 0;
  c = at::where(filled.unsqueeze(1), sums / counts.clamp_min(1).unsqueeze(1).to(x.scalar_type()), c);
  auto empty = (~filled).nonzero().squeeze(1);  // one host read; rare
  if (empty.numel() > 0) {
    auto far = std::get<1>(mind.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
    const int64_t m = std::min(empty.numel(), far.numel());
    c.index_copy_(0, empty.narrow(0, 0, m), x.index_select(0, far.narrow(0, 0, m)));
  }
  if (spherical) c = c / c.norm(2, 1, true).clamp_min(1e-12);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> kmeans_lloyd_cuda(
    at::TensorList xs, at::TensorList centroids, int64_t niter, bool spherical) {
  check_kmeans_args(xs, centroids, niter);
  std::vector<at::Tensor> labels, cents, totals;
  if (xs.empty()) return {labels, cents, at::zeros({0}, at::kDouble)};
  c10::cuda::OptionalCUDAGuard guard(xs[0].device());
  for (size_t i = 0; i < xs.size(); ++i) {
    const auto x = xs[i].contiguous();
    auto c = centroids[i].clone(at::MemoryFormat::Contiguous);
    if (x.size(0) == 0) {
      labels.push_back(at::empty({0}, x.options().dtype(at::kLong)));
      cents.push_back(c);
      totals.push_back(at::zeros({}, x.options().dtype(at::kDouble)));
      continue;
    }
    const auto xnorm = (x * x).sum(1);
    auto [lab, mind] = assign(x, xnorm, c);
    for (int64_t it = 0; it < niter; ++it) {
      update(x, lab, mind, c, spherical);
      auto prev = lab;
      std::tie(lab, mind) = assign(x, xnorm, c);
      if (at::equal(lab, prev)) break;
    }
    labels.push_back(lab);
    cents.push_back(c);
    totals.push_back(mind.to(at::kDouble).sum());
  }
  return {labels, cents, at::stack(totals)};
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CUDA, m) {
  m.impl("kmeans_lloyd", &kmeans_lloyd_cuda);
}

}  // namespace pyprune_fast
