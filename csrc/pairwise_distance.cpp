#include "pairwise_distance.h"

#include <c10/core/DeviceGuard.h>

#include <map>
#include <utility>

#include "channel_args.h"
#include "checks.h"

namespace pyprune_fast {

Metric parse_metric(std::string_view metric) {
  if (metric == "euclidean") return Metric::kEuclidean;
  if (metric == "sqeuclidean") return Metric::kSqEuclidean;
  if (metric == "cosine") return Metric::kCosine;
  TORCH_CHECK_VALUE(false, "pairwise_distance: unknown metric '", std::string(metric),
                    "'; expected 'euclidean', 'sqeuclidean' or 'cosine'");
}

c10::Device check_pairwise_inputs(at::TensorList xs) {
  const char* op = "pairwise_distance";
  const auto device = common_device(op, xs);
  for (size_t i = 0; i < xs.size(); ++i) {
    TORCH_CHECK_VALUE(xs[i].dim() == 2, op, ": xs[", i, "] must be 2-D (rows are filters), got ", xs[i].dim(),
                      "-D with shape ", xs[i].sizes());
    TORCH_CHECK_TYPE(at::isFloatingType(xs[i].scalar_type()), op, ": xs[", i,
                     "] must be a floating-point tensor, got ", xs[i].scalar_type());
    TORCH_CHECK_TYPE(xs[i].scalar_type() == xs[0].scalar_type(), op, ": all tensors must have one dtype, but xs[0] is ",
                     xs[0].scalar_type(), " and xs[", i, "] is ", xs[i].scalar_type());
  }
  return device;
}

GramBatch batched_gram(at::TensorList xs, Metric metric) {
  GramBatch out;
  out.offsets.resize(xs.size());
  if (xs.empty()) return out;
  c10::OptionalDeviceGuard guard(xs[0].device());
  const auto acc = accumulate_type(xs[0].scalar_type());

  // Inputs of one shape share one batched product; blocks are laid out group by group.
  std::map<std::pair<int64_t, int64_t>, std::vector<size_t>> groups;
  for (size_t i = 0; i < xs.size(); ++i) groups[{xs[i].size(0), xs[i].size(1)}].push_back(i);
  int64_t total = 0;
  for (const auto& [shape, members] : groups) {
    for (size_t i : members) {
      out.offsets[i] = total;
      total += shape.first * shape.first;
    }
  }
  out.gram = at::empty({total}, xs[0].options().dtype(acc));
  for (const auto& [shape, members] : groups) {
    const auto [rows, cols] = shape;
    if (rows == 0) continue;
    const int64_t batch = static_cast<int64_t>(members.size());
    std::vector<at::Tensor> parts;
    for (size_t i : members) parts.push_back(xs[i].to(acc));
    auto x = at::stack(parts);  // [batch, rows, cols]
    if (metric != Metric::kCosine && cols > 0) x.sub_(x.mean(1, /*keepdim=*/true));
    auto block = out.gram.narrow(0, out.offsets[members[0]], batch * rows * rows).view({batch, rows, rows});
    at::bmm_out(block, x, x.transpose(1, 2));
  }
  for (const auto& x : xs) out.outputs.push_back(at::empty({x.size(0), x.size(0)}, x.options()));
  return out;
}

}  // namespace pyprune_fast
