#include "gather_channels.h"

#include <c10/core/DeviceGuard.h>

#include "index_stats.h"

namespace pyprune_fast {

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

}  // namespace pyprune_fast
