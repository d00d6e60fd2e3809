#include "merge_channels.h"

#include <ATen/MemoryOverlap.h>
#include <c10/core/DeviceGuard.h>

#include <map>
#include <string>
#include <utility>

#include "index_stats.h"

namespace pyprune_fast {
namespace {

// weights for xs[i]: undefined, or (C) in the accumulate dtype of xs[i].
at::Tensor checked_weights(const c10::List<std::optional<at::Tensor>>& weights, size_t i, const at::Tensor& x,
                           int64_t channels, c10::Device device) {
  const char* op = "merge_channels_";
  const size_t j = weights.size() == 1 ? 0 : i;
  const std::optional<at::Tensor> w = weights.get(j);
  if (!w.has_value() || !w->defined()) return at::Tensor();
  TORCH_CHECK_TYPE(at::isFloatingType(w->scalar_type()), op, ": weights[", j, "] must be a floating-point tensor, got ",
                   w->scalar_type());
  TORCH_CHECK_VALUE(w->dim() == 1 && w->numel() == channels, op, ": weights[", j, "] must have shape (", channels,
                    ",) to match xs[", i, "], got ", w->sizes());
  check_on_device(op, "weights", j, *w, device);
  return w->to(accumulate_type(x.scalar_type())).contiguous();
}

}  // namespace

MergeArgs prepare_merge(
    at::TensorList xs,
    at::TensorList assignments,
    at::TensorList keep,
    at::IntArrayRef dims,
    const c10::List<std::optional<at::Tensor>>& weights) {
  const char* op = "merge_channels_";
  const size_t n = xs.size();
  check_list_length(op, "assignments", assignments.size(), n);
  check_list_length(op, "keep", keep.size(), n);
  check_list_length(op, "dims", dims.size(), n);
  check_list_length(op, "weights", weights.size(), n, /*optional=*/true);
  const auto device = common_device(op, xs);
  c10::OptionalDeviceGuard guard(device);

  MergeArgs args;
  for (size_t i = 0; i < n; ++i) {
    const auto t = xs[i].scalar_type();
    TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, op, ": xs[", i,
                     "] must be a float32, float64, float16 or bfloat16 tensor, got ", t);
    TORCH_CHECK_VALUE(at::has_internal_overlap(xs[i]) != at::MemOverlap::Yes, op, ": xs[", i,
                      "] has elements that share memory (an expanded tensor?); pass a copy (.clone())");
    args.dims.push_back(wrap_dim(op, i, xs[i], entry(dims, i)));
  }
  // The kernel writes xs while reading every argument: no argument may share memory with any of xs.
  for (size_t i = 0; i < n; ++i) {
    for (size_t k = 0; k < i; ++k) check_no_overlap(op, "xs", i, xs[i], "xs", k, xs[k]);
    for (size_t j = 0; j < assignments.size(); ++j) check_no_overlap(op, "xs", i, xs[i], "assignments", j, assignments[j]);
    for (size_t j = 0; j < keep.size(); ++j) check_no_overlap(op, "xs", i, xs[i], "keep", j, keep[j]);
    for (size_t j = 0; j < weights.size(); ++j) {
      const std::optional<at::Tensor> w = weights.get(j);
      if (w.has_value() && w->defined()) check_no_overlap(op, "xs", i, xs[i], "weights", j, *w);
    }
  }

  // Shapes on the host; values on the device, for all tensors at once, read back in one copy.
  Distinct a_distinct, k_distinct;
  std::vector<size_t> a_row(assignments.size()), k_row(keep.size());
  for (size_t j = 0; j < assignments.size(); ++j)
    a_row[j] = a_distinct.add(assignments[j], as_index(op, "assignments", j, assignments[j], device));
  for (size_t j = 0; j < keep.size(); ++j) k_row[j] = k_distinct.add(keep[j], as_index(op, "keep", j, keep[j], device));
  std::map<std::pair<size_t, size_t>, size_t> link_row;  // (a row, k row) -> row of link stats
  std::vector<at::Tensor> link_a, link_k;
  for (size_t i = 0; i < n; ++i) {
    const size_t ja = assignments.size() == 1 ? 0 : i, jk = keep.size() == 1 ? 0 : i;
    const auto &a = a_distinct.tensors()[a_row[ja]], &k = k_distinct.tensors()[k_row[jk]];
    const int64_t channels = xs[i].size(args.dims[i]);
    TORCH_CHECK_VALUE(a.numel() == channels, op, ": assignments[", ja, "] has ", a.numel(), " entries but xs[", i,
                      "] has ", channels, " channels along dim ", args.dims[i]);
    if (a.numel() > 0 && k.numel() > 0 && link_row.emplace(std::make_pair(a_row[ja], k_row[jk]), link_a.size()).second) {
      link_a.push_back(a);
      link_k.push_back(k);
    }
  }
  // One flat host copy: 3 values per assignments tensor, 3 per keep tensor, 4 per (assignments, keep) pair.
  std::vector<at::Tensor> device_stats;
  if (!a_distinct.tensors().empty()) device_stats.push_back(index_stats(a_distinct.tensors(), device).flatten());
  if (!k_distinct.tensors().empty()) device_stats.push_back(index_stats(k_distinct.tensors(), device).flatten());
  if (!link_a.empty()) device_stats.push_back(link_stats(link_a, link_k, device).flatten());
  const auto host = device_stats.empty() ? at::empty({0}, at::kLong) : at::cat(device_stats).cpu();
  const int64_t* a_stats = host.const_data_ptr<int64_t>();
  const int64_t* k_stats = a_stats + 3 * a_distinct.tensors().size();
  const int64_t* l_stats = k_stats + 3 * k_distinct.tensors().size();

  std::map<size_t, std::pair<at::Tensor, at::Tensor>> csr;  // per assignments tensor: members, offsets
  for (size_t i = 0; i < n; ++i) {
    const size_t ja = assignments.size() == 1 ? 0 : i, jk = keep.size() == 1 ? 0 : i;
    const auto &a = a_distinct.tensors()[a_row[ja]], &k = k_distinct.tensors()[k_row[jk]];
    const int64_t channels = xs[i].size(args.dims[i]), clusters = k.numel();
    if (a.numel() > 0) {
      const int64_t* st = a_stats + 3 * a_row[ja];
      check_in_range(op, "assignments", ja, st[0], st[1], clusters,
                     "the " + std::to_string(clusters) + " clusters of keep[" + std::to_string(jk) + "]");
    }
    if (k.numel() > 0) {
      const int64_t* st = k_stats + 3 * k_row[jk];
      check_in_range(op, "keep", jk, st[0], st[1], channels, channels_of(i, channels, args.dims[i]));
      check_unique(op, "keep", jk, st[2]);
    }
    if (a.numel() > 0 && k.numel() > 0) {
      const int64_t* st = l_stats + 4 * link_row.at({a_row[ja], k_row[jk]});
      TORCH_CHECK_VALUE(st[0] == 0, op, ": keep[", jk, "][", st[1], "] = ", st[2], " but assignments[", ja, "][", st[2],
                        "] = ", st[3], "; the kept channel of cluster g must be assigned to g");
    }

    auto& members = csr[a_row[ja]];
    if (!members.first.defined()) {
      auto [sorted, order] = a.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
      members = {order, at::searchsorted(sorted, at::arange(clusters + 1, sorted.options()))};
    }
    args.keep.push_back(k);
    args.members.push_back(members.first);
    args.offsets.push_back(members.second);
    args.weights.push_back(weights.empty() ? at::Tensor() : checked_weights(weights, i, xs[i], channels, device));
  }
  return args;
}

}  // namespace pyprune_fast
