#include "channel_args.h"

#include <ATen/MemoryOverlap.h>
#include <c10/core/DeviceGuard.h>

#include <array>
#include <limits>
#include <map>
#include <string>

namespace pyprune_fast {
namespace {

constexpr int64_t kNone = std::numeric_limits<int64_t>::max();

// Statistics of a non-empty 1-D int64 tensor, computed on its device: [min, max, smallest repeated value
// or kNone]. The host reads them, for every tensor of a call at once, in one copy.
at::Tensor index_stats(const at::Tensor& idx) {
  auto sorted = std::get<0>(idx.sort());
  auto repeated = at::full({}, kNone, idx.options());
  if (idx.numel() > 1) {
    auto next = sorted.slice(0, 1);
    repeated = at::where(next == sorted.slice(0, 0, -1), next, kNone).min();
  }
  return at::stack({sorted[0], sorted[-1], repeated});
}

// Device-side checks of one call, read back by the host in a single copy. Each entry is a 1-D int64
// tensor; a key makes a tensor used for several xs (a list given once for all) count once.
class HostStats {
 public:
  template <class F>
  int64_t add(std::pair<const void*, const void*> key, F fn) {
    auto it = offsets_.find(key);
    if (it != offsets_.end()) return it->second;
    auto t = fn();
    pending_.push_back(t);
    offsets_[key] = size_;
    size_ += t.numel();
    return size_ - t.numel();
  }
  void fetch() {
    if (!pending_.empty()) host_ = at::cat(pending_).cpu();
  }
  int64_t operator()(int64_t offset, int64_t col) const { return host_.data_ptr<int64_t>()[offset + col]; }

 private:
  std::map<std::pair<const void*, const void*>, int64_t> offsets_;
  std::vector<at::Tensor> pending_;
  int64_t size_ = 0;
  at::Tensor host_;
};

std::pair<const void*, const void*> key_of(const at::Tensor& t, const void* second = nullptr) {
  return {t.unsafeGetTensorImpl(), second};
}

// [lo, hi] must lie in [0, size); `range` says what size counts, for the message.
void check_in_range(const char* op, const char* name, size_t j, int64_t lo, int64_t hi, int64_t size,
                    const std::string& range) {
  TORCH_CHECK_VALUE(lo >= 0 && hi < size, op, ": ", name, "[", j, "] holds ", lo < 0 ? lo : hi,
                    ", out of range for ", range);
}

std::string channels_of(size_t i, int64_t size, int64_t dim) {
  return "xs[" + std::to_string(i) + "] with " + std::to_string(size) + " channels along dim " + std::to_string(dim);
}

void check_unique(const char* op, const char* name, size_t j, int64_t repeated) {
  TORCH_CHECK_VALUE(
      repeated == kNone, op, ": ", name, "[", j, "] holds ", repeated, " more than once; channel indices must be unique");
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
  HostStats stats;
  std::vector<at::Tensor> idx64(indices.size());
  std::vector<int64_t> rows(indices.size());
  for (size_t j = 0; j < indices.size(); ++j) {
    idx64[j] = as_index(op, "indices", j, indices[j], device);
    if (idx64[j].numel() > 0) rows[j] = stats.add(key_of(indices[j]), [&] { return index_stats(idx64[j]); });
  }
  for (size_t i = 0; i < n; ++i) args.dims.push_back(wrap_dim(op, i, xs[i], entry(dims, i)));
  stats.fetch();
  for (size_t i = 0; i < n; ++i) {
    const size_t j = indices.size() == 1 ? 0 : i;
    if (idx64[j].numel() > 0) {
      const int64_t dim = args.dims[i];
      check_in_range(op, "indices", j, stats(rows[j], 0), stats(rows[j], 1), xs[i].size(dim),
                     channels_of(i, xs[i].size(dim), dim));
      check_unique(op, "indices", j, stats(rows[j], 2));
    }
    args.xs.push_back(xs[i].contiguous());
    args.indices.push_back(idx64[j]);
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

  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK_TYPE(at::isFloatingType(xs[i].scalar_type()), op, ": xs[", i,
                     "] must be a floating-point tensor, got ", xs[i].scalar_type());
    at::assert_no_internal_overlap(xs[i]);
    for (size_t k = 0; k < i; ++k) {
      TORCH_CHECK_VALUE(at::get_overlap_status(xs[i], xs[k]) == at::MemOverlapStatus::No, op, ": xs[", k,
                        "] and xs[", i, "] share memory; each tensor may appear once");
    }
  }

  MergeArgs args;
  std::vector<at::Tensor> a64(assignments.size()), k64(keep.size());
  for (size_t j = 0; j < a64.size(); ++j) a64[j] = as_index(op, "assignments", j, assignments[j], device);
  for (size_t j = 0; j < k64.size(); ++j) k64[j] = as_index(op, "keep", j, keep[j], device);

  // Shapes on the host, values on the device: offsets into `stats` per tensor (-1: nothing to check).
  HostStats stats;
  std::vector<std::array<int64_t, 3>> rows(n, {-1, -1, -1});
  for (size_t i = 0; i < n; ++i) {
    const int64_t dim = wrap_dim(op, i, xs[i], entry(dims, i));
    args.dims.push_back(dim);
    const size_t ja = assignments.size() == 1 ? 0 : i, jk = keep.size() == 1 ? 0 : i;
    const auto &a = a64[ja], &k = k64[jk];
    const int64_t channels = xs[i].size(dim);
    TORCH_CHECK_VALUE(a.numel() == channels, op, ": assignments[", ja, "] has ", a.numel(), " entries but xs[", i,
                      "] has ", channels, " channels along dim ", dim);
    if (a.numel() > 0) rows[i][0] = stats.add(key_of(assignments[ja]), [&] { return index_stats(a); });
    if (k.numel() > 0) rows[i][1] = stats.add(key_of(keep[jk]), [&] { return index_stats(k); });
    if (a.numel() > 0 && k.numel() > 0) {
      // The first cluster g with assignments[keep[g]] != g, as [found, g, keep[g], assignments[keep[g]]].
      // keep is clamped so that an out-of-range entry (reported first) cannot fault here.
      rows[i][2] = stats.add(key_of(assignments[ja], keep[jk].unsafeGetTensorImpl()), [&] {
        auto owner = a.index_select(0, k.clamp(0, a.numel() - 1));
        auto wrong = owner != at::arange(k.numel(), k.options());
        auto g = wrong.to(at::kLong).argmax();
        return at::stack({wrong.any().to(at::kLong), g, k[g], owner[g]});
      });
    }
  }
  stats.fetch();

  std::map<const void*, std::pair<at::Tensor, at::Tensor>> csr;  // per assignments tensor
  for (size_t i = 0; i < n; ++i) {
    const size_t ja = assignments.size() == 1 ? 0 : i, jk = keep.size() == 1 ? 0 : i;
    const int64_t channels = xs[i].size(args.dims[i]), clusters = k64[jk].numel();
    if (rows[i][0] >= 0) {
      check_in_range(op, "assignments", ja, stats(rows[i][0], 0), stats(rows[i][0], 1), clusters,
                     "the " + std::to_string(clusters) + " clusters of keep[" + std::to_string(jk) + "]");
    }
    if (rows[i][1] >= 0) {
      check_in_range(op, "keep", jk, stats(rows[i][1], 0), stats(rows[i][1], 1), channels,
                     channels_of(i, channels, args.dims[i]));
      check_unique(op, "keep", jk, stats(rows[i][1], 2));
    }
    if (rows[i][2] >= 0) {
      const int64_t r = rows[i][2];
      TORCH_CHECK_VALUE(stats(r, 0) == 0, op, ": keep[", jk, "][", stats(r, 1), "] = ", stats(r, 2),
                        " but assignments[", ja, "][", stats(r, 2), "] = ", stats(r, 3),
                        "; the kept channel of cluster g must be assigned to g");
    }

    auto& members = csr[assignments[ja].unsafeGetTensorImpl()];
    if (!members.first.defined()) {
      auto [sorted, order] = a64[ja].sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
      members = {order, at::searchsorted(sorted, at::arange(clusters + 1, sorted.options()))};
    }
    args.keep.push_back(k64[jk]);
    args.members.push_back(members.first);
    args.offsets.push_back(members.second);

    at::Tensor w;
    if (!weights.empty()) {
      const size_t jw = weights.size() == 1 ? 0 : i;
      std::optional<at::Tensor> given = weights.get(jw);
      if (given.has_value() && given->defined()) {
        w = *given;
        TORCH_CHECK_TYPE(at::isFloatingType(w.scalar_type()), op, ": weights[", jw,
                         "] must be a floating-point tensor, got ", w.scalar_type());
        TORCH_CHECK_VALUE(w.dim() == 1 && w.numel() == channels, op, ": weights[", jw, "] must have shape (",
                          channels, ",) to match xs[", i, "], got ", w.sizes());
        check_on_device(op, "weights", jw, w, device);
        w = w.to(accumulate_type(xs[i].scalar_type())).contiguous();
      }
    }
    args.weights.push_back(w);
  }
  return args;
}

}  // namespace pyprune_fast
