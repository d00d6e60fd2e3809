#include "index_stats.h"

#include <algorithm>
#include <cstdint>

namespace pyprune_fast {
namespace {

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

}  // namespace

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

}  // namespace pyprune_fast
