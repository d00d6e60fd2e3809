#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "channel_args.h"

namespace pyprune_fast {
namespace {

// For every (outer, cluster) pair: the members' rows summed in ascending order into the kept row.
// A kept channel belongs to its own cluster only, so no pair reads a row another pair writes.
template <class scalar_t>
void merge_rows(scalar_t* x, const ChannelView& v, const int64_t* members, const int64_t* offsets, const int64_t* keep,
                const at::opmath_type<scalar_t>* weights, int64_t clusters) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, v.outer * clusters, std::max<int64_t>(1, 4096 / v.inner), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(v.inner);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t o = r / clusters, g = r % clusters;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t p = offsets[g]; p < offsets[g + 1]; ++p) {
        const int64_t m = members[p];
        const scalar_t* src = x + (o * v.channels + m) * v.inner;
        const acc_t w = weights ? weights[m] : acc_t(1);
        for (int64_t e = 0; e < v.inner; ++e) acc[e] += w * static_cast<acc_t>(src[e]);
      }
      scalar_t* dst = x + (o * v.channels + keep[g]) * v.inner;
      for (int64_t e = 0; e < v.inner; ++e) dst[e] = static_cast<scalar_t>(acc[e]);
    }
  });
}

void merge_channels_cpu(at::TensorList xs, at::TensorList assignments, at::TensorList keep, at::IntArrayRef dims,
                        const c10::List<std::optional<at::Tensor>>& weights) {
  MergeArgs args = prepare_merge(xs, assignments, keep, dims, weights);
  for (size_t i = 0; i < xs.size(); ++i) {
    const int64_t clusters = args.keep[i].numel();
    if (xs[i].numel() == 0 || clusters == 0) continue;
    auto x = xs[i].contiguous();
    const auto v = channel_view(x, args.dims[i]);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "merge_channels_cpu", [&] {
      const auto& w = args.weights[i];
      merge_rows<scalar_t>(x.mutable_data_ptr<scalar_t>(), v, args.members[i].const_data_ptr<int64_t>(),
                           args.offsets[i].const_data_ptr<int64_t>(), args.keep[i].const_data_ptr<int64_t>(),
                           w.defined() ? w.const_data_ptr<at::opmath_type<scalar_t>>() : nullptr, clusters);
    });
    if (!x.is_same(xs[i])) xs[i].copy_(x);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CPU, m) {
  m.impl("merge_channels_", &merge_channels_cpu);
}

}  // namespace pyprune_fast
