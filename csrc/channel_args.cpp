#include "channel_args.h"

#include <ATen/MemoryOverlap.h>
#include <c10/core/DeviceGuard.h>

#include <algorithm>
#include <limits>
#include <map>
#include <string>

namespace pyprune_fast {
namespace {

constexpr int64_t kNone = std::numeric_limits<int64_t>::max();

// A small host vector on `device`, without waiting for work queued there (pinned staging on CUDA).
at::Tensor to_device(const std::vector<int64_t>& values, c10::Device device) {
  auto host = at::empty({static_cast<int64_t>(values.size())},
                        at::TensorOptions().dtype(at::kLong).pinned_memory(device.is_cuda()));
  std::copy(values.begin(), values.end(), host.mutable_data_ptr<int64_t>());
  return host.to(device, /*non_blocking=*/true);
}

// Concatenated int64 tensors with, per element, the number of its tensor ("segment").
struct Segments {
  at::Tensor values, segment;
  std::vector<int64_t> starts, lengths;
};

Segments concat(const std::vector<at::Tensor>& parts, c10::Device device) {
  Segments s;
  int64_t total = 0;
  for (const auto& p : parts) {
    s.starts.push_back(total);
    s.lengths.push_back(p.numel());
    total += p.numel();
  }
  s.values = at::cat(parts);
  s.segment = at::repeat_interleave(at::arange(static_cast<int64_t>(parts.size()), s.values.options()),
                                    to_device(s.lengths, device), /*dim=*/0, /*output_size=*/total);
  return s;
}

// index_stats on the host: plain loops, no tensor ops; repeats found with a bitmap over [min, max] when
// that span is small (measured without overflow: int64 extremes span 2^64 - 1), else by sorting.
at::Tensor index_stats_cpu(const std::vector<at::Tensor>& idx) {
  auto out = at::empty({static_cast<int64_t>(idx.size()), 3}, at::kLong);
  int64_t* o = out.mutable_data_ptr<int64_t>();
  std::vector<uint8_t> seen;
  for (size_t t = 0; t < idx.size(); ++t, o += 3) {
    const int64_t* p = idx[t].const_data_ptr<int64_t>();
    const int64_t n = idx[t].numel();
    o[0] = n ? *std::min_element(p, p + n) : 0;
    o[1] = n ? *std::max_element(p, p + n) : 0;
    o[2] = kNone;
    if (n < 2) continue;
    const uint64_t span = static_cast<uint64_t>(o[1]) - static_cast<uint64_t>(o[0]);  // max - min, exact
    if (span < (uint64_t(1) << 26)) {
      seen.assign(span + 1, 0);
      for (int64_t i = 0; i < n; ++i) {
        uint8_t& s = seen[p[i] - o[0]];
        if (s && p[i] < o[2]) o[2] = p[i];
        s = 1;
      }
    } else {  // a huge range (bad input, usually): sort instead
      std::vector<int64_t> sorted(p, p + n);
      std::sort(sorted.begin(), sorted.end());
      auto repeated = std::adjacent_find(sorted.begin(), sorted.end());
      if (repeated != sorted.end()) o[2] = *repeated;
    }
  }
  return out;
}

// Per tensor (all in a fixed number of ops on their device): [min, max, smallest repeated value or kNone].
// Rows of empty tensors are meaningless; callers skip them.
at::Tensor index_stats(const std::vector<at::Tensor>& idx, c10::Device device) {
  if (device.is_cpu()) return index_stats_cpu(idx);
  const Segments s = concat(idx, device);
  // Sort by (segment, value): a stable sort by value, then a stable sort by segment.
  auto [by_value, order] = s.values.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto [segment, order2] = s.segment.index_select(0, order).sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto sorted = by_value.index_select(0, order2);
  std::vector<int64_t> first, last;
  for (size_t t = 0; t < idx.size(); ++t) {
    first.push_back(s.lengths[t] ? s.starts[t] : 0);
    last.push_back(s.lengths[t] ? s.starts[t] + s.lengths[t] - 1 : 0);
  }
  auto repeated = at::full({static_cast<int64_t>(idx.size())}, kNone, sorted.options());
  if (sorted.numel() > 1) {
    auto next = sorted.slice(0, 1), next_segment = segment.slice(0, 1);
    auto same = (next == sorted.slice(0, 0, -1)) & (next_segment == segment.slice(0, 0, -1));
    repeated.scatter_reduce_(0, next_segment, at::where(same, next, kNone), "amin");
  }
  if (sorted.numel() == 0) return at::stack({repeated, repeated, repeated}, 1);
  return at::stack({sorted.index_select(0, to_device(first, device)), sorted.index_select(0, to_device(last, device)),
                    repeated}, 1);
}

// Per (assignments, keep) pair, both non-empty: the first g with assignments[keep[g]] != g, as
// [found, g, keep[g], assignments[keep[g]]]. keep is clamped into range first: an out-of-range entry is
// reported by index_stats, and must not fault here.
at::Tensor link_stats(const std::vector<at::Tensor>& assignments, const std::vector<at::Tensor>& keep,
                      c10::Device device) {
  if (device.is_cpu()) {  // plain loops, no tensor ops
    auto out = at::zeros({static_cast<int64_t>(keep.size()), 4}, at::kLong);
    int64_t* o = out.mutable_data_ptr<int64_t>();
    for (size_t t = 0; t < keep.size(); ++t, o += 4) {
      const int64_t *a = assignments[t].const_data_ptr<int64_t>(), *k = keep[t].const_data_ptr<int64_t>();
      const int64_t channels = assignments[t].numel();
      for (int64_t g = 0; g < keep[t].numel(); ++g) {
        const int64_t owner = a[std::clamp<int64_t>(k[g], 0, channels - 1)];
        if (owner != g) {
          o[0] = 1, o[1] = g, o[2] = k[g], o[3] = owner;
          break;
        }
      }
    }
    return out;
  }
  const Segments a = concat(assignments, device), k = concat(keep, device);
  auto channels = to_device(a.lengths, device).index_select(0, k.segment);
  auto a_start = to_device(a.starts, device).index_select(0, k.segment);
  auto k_start = to_device(k.starts, device).index_select(0, k.segment);
  auto owner = a.values.index_select(0, k.values.clamp_min(0).minimum(channels - 1) + a_start);
  auto position = at::arange(k.values.numel(), k.values.options());
  auto wrong = owner != position - k_start;
  auto first = at::full({static_cast<int64_t>(keep.size())}, kNone, position.options())
                   .scatter_reduce_(0, k.segment, at::where(wrong, position, kNone), "amin");
  auto found = first != kNone;
  auto at_first = first.clamp_max(k.values.numel() - 1);
  return at::stack({found.to(at::kLong), at_first - k_start.index_select(0, at_first), k.values.index_select(0, at_first),
                    owner.index_select(0, at_first)}, 1);
}

// Unique tensors (by identity) of a list argument, so that a list given once for all is checked once.
class Distinct {
 public:
  size_t add(const at::Tensor& original, const at::Tensor& converted) {
    auto [it, inserted] = row_.emplace(original.unsafeGetTensorImpl(), tensors_.size());
    if (inserted) tensors_.push_back(converted);
    return it->second;
  }
  const std::vector<at::Tensor>& tensors() const { return tensors_; }

 private:
  std::map<const void*, size_t> row_;
  std::vector<at::Tensor> tensors_;
};

// [lo, hi] must lie in [0, size); `range` says what size counts, for the message.
void check_in_range(const char* op, const char* name, size_t j, int64_t lo, int64_t hi, int64_t size,
                    const std::string& range) {
  TORCH_CHECK_VALUE(lo >= 0 && hi < size, op, ": ", name, "[", j, "] holds ", lo < 0 ? lo : hi,
                    ", out of range for ", range);
}

void check_unique(const char* op, const char* name, size_t j, int64_t repeated) {
  TORCH_CHECK_VALUE(repeated == kNone, op, ": ", name, "[", j, "] holds ", repeated,
                    " more than once; channel indices must be unique");
}

std::string channels_of(size_t i, int64_t size, int64_t dim) {
  return "xs[" + std::to_string(i) + "] with " + std::to_string(size) + " channels along dim " + std::to_string(dim);
}

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

GatherArgs prepare_gather(at::TensorList xs, at::TensorList indices, at::IntArrayRef dims) {
  const char* op = "gather_channels";
  const size_t n = xs.size();
  check_list_length(op, "indices", indices.size(), n);
  check_list_length(op, "dims", dims.size(), n);
  const auto device = common_device(op, xs);
  c10::OptionalDeviceGuard guard(device);

  GatherArgs args;
  Distinct distinct;
  std::vector<size_t> row(indices.size());
  for (size_t j = 0; j < indices.size(); ++j) row[j] = distinct.add(indices[j], as_index(op, "indices", j, indices[j], device));
  for (size_t i = 0; i < n; ++i) args.dims.push_back(wrap_dim(op, i, xs[i], entry(dims, i)));
  // All index tensors checked on their device, the results read back in one copy.
  const auto host = distinct.tensors().empty() ? at::empty({0}, at::kLong) : index_stats(distinct.tensors(), device).cpu();
  for (size_t i = 0; i < n; ++i) {
    const size_t j = indices.size() == 1 ? 0 : i;
    const auto& idx = distinct.tensors()[row[j]];
    if (idx.numel() > 0) {
      const int64_t* st = host.const_data_ptr<int64_t>() + 3 * row[j];
      const int64_t dim = args.dims[i];
      check_in_range(op, "indices", j, st[0], st[1], xs[i].size(dim), channels_of(i, xs[i].size(dim), dim));
      check_unique(op, "indices", j, st[2]);
    }
    args.xs.push_back(xs[i].contiguous());
    args.indices.push_back(idx);
  }
  return args;
}

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
