// Checks of channel-index arguments (gather_channels' indices, merge_channels_' assignments and keep): statistics
// of many index tensors computed on their device in a fixed number of ops, for one host read per call, and the
// errors that name what was wrong.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <map>
#include <string>
#include <vector>

namespace pyprune_fast {

constexpr int64_t kNone = std::numeric_limits<int64_t>::max();

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

// Per tensor (all in a fixed number of ops on their device): [min, max, smallest repeated value or kNone].
// Rows of empty tensors are meaningless; callers skip them.
at::Tensor index_stats(const std::vector<at::Tensor>& idx, c10::Device device);

// Per (assignments, keep) pair, both non-empty: the first g with assignments[keep[g]] != g, as
// [found, g, keep[g], assignments[keep[g]]]. keep is clamped into range first: an out-of-range entry is
// reported by index_stats, and must not fault here.
at::Tensor link_stats(const std::vector<at::Tensor>& assignments, const std::vector<at::Tensor>& keep,
                      c10::Device device);

// [lo, hi] must lie in [0, size); `range` says what size counts, for the message.
void check_in_range(const char* op, const char* name, size_t j, int64_t lo, int64_t hi, int64_t size,
                    const std::string& range);

// `repeated` (from index_stats) must be kNone: channel indices are unique.
void check_unique(const char* op, const char* name, size_t j, int64_t repeated);

// "xs[i] with <size> channels along dim <dim>", for messages.
std::string channels_of(size_t i, int64_t size, int64_t dim);

}  // namespace pyprune_fast
