#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <vector>

#include "merge_channels.h"
#include "cpu/parallel_rows.h"

namespace pyprune_fast {
namespace {

// Rows [begin, end) of the (outer, cluster) pairs of one tensor: the members' rows summed in ascending
// order into the kept row. A kept channel belongs to its own cluster only, so no pair reads a row that
// another pair writes.
template <class scalar_t>
void merge_rows(scalar_t* x, const ChannelView& v, const int64_t* members, const int64_t* offsets, const int64_t* keep,
                const at::opmath_type<scalar_t>* weights, int64_t clusters, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  if (v.inner == 1) {  // 1x1 convs, Linear, norm vectors: one scalar per channel
    for (int64_t r = begin; r < end; ++r) {
      const int64_t g = r % clusters;
      scalar_t* base = x + (r / clusters) * v.channels;
      acc_t acc = 0;
      for (int64_t p = offsets[g]; p < offsets[g + 1]; ++p) {
        const int64_t m = members[p];
        acc += weights ? weights[m] * static_cast<acc_t>(base[m]) : static_cast<acc_t>(base[m]);
      }
      base[keep[g]] = static_cast<scalar_t>(acc);
    }
    return;
  }
  std::vector<acc_t> acc(v.inner);
  for (int64_t r = begin; r < end; ++r) {
    const int64_t g = r % clusters;
    scalar_t* base = x + (r / clusters) * v.channels * v.inner;
    std::fill(acc.begin(), acc.end(), acc_t(0));
    for (int64_t p = offsets[g]; p < offsets[g + 1]; ++p) {
      const int64_t m = members[p];
      const scalar_t* src = base + m * v.inner;
      if (weights) {
        for (int64_t e = 0; e < v.inner; ++e) acc[e] += weights[m] * static_cast<acc_t>(src[e]);
      } else {
        for (int64_t e = 0; e < v.inner; ++e) acc[e] += static_cast<acc_t>(src[e]);
      }
    }
    scalar_t* dst = base + keep[g] * v.inner;
    for (int64_t e = 0; e < v.inner; ++e) dst[e] = static_cast<scalar_t>(acc[e]);
  }
}

void merge_channels_cpu(at::TensorList xs, at::TensorList assignments, at::TensorList keep, at::IntArrayRef dims,
                        const c10::List<std::optional<at::Tensor>>& weights) {
  const BelowAutograd below_autograd;
  MergeArgs args = prepare_merge(xs, assignments, keep, dims, weights);
  std::vector<at::Tensor> work;  // contiguous tensors the kernel writes
  std::vector<int64_t> rows, cost;  // (outer, cluster) pairs; elements summed per pair, on average
  for (size_t i = 0; i < xs.size(); ++i) {
    work.push_back(xs[i].contiguous());
    const bool empty = xs[i].numel() == 0 || args.keep[i].numel() == 0;
    const auto v = channel_view(work[i], args.dims[i]);
    rows.push_back(empty ? 0 : v.outer * args.keep[i].numel());
    cost.push_back(empty ? 1 : std::max<int64_t>(1, v.channels * v.inner / args.keep[i].numel()));
  }
  parallel_rows(rows, cost, 16384, [&](size_t t, int64_t begin, int64_t end) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, work[t].scalar_type(), "merge_channels_cpu", [&] {
      const auto& w = args.weights[t];
      merge_rows<scalar_t>(work[t].mutable_data_ptr<scalar_t>(), channel_view(work[t], args.dims[t]),
                           args.members[t].const_data_ptr<int64_t>(), args.offsets[t].const_data_ptr<int64_t>(),
                           args.keep[t].const_data_ptr<int64_t>(),
                           w.defined() ? w.const_data_ptr<at::opmath_type<scalar_t>>() : nullptr,
                           args.keep[t].numel(), begin, end);
    });
  });
  for (size_t i = 0; i < xs.size(); ++i) {
    if (!work[i].is_same(xs[i])) xs[i].copy_(work[i]);
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CPU, m) {
  m.impl("merge_channels_", &merge_channels_cpu);
}

}  // namespace pyprune_fast
