#include "pairwise_distance.h"

#include "checks.h"

#include <algorithm>
#include <cmath>
#include <limits>

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

std::vector<std::vector<at::Tensor>> split_problems(at::TensorList xs, at::OptionalIntArrayRef blocks) {
  const char* op = "pairwise_distance";
  std::vector<std::vector<at::Tensor>> problems;
  if (!blocks.has_value()) {
    for (const auto& x : xs) problems.push_back({x});
    return problems;
  }
  int64_t total = 0;
  for (size_t p = 0; p < blocks->size(); ++p) {
    TORCH_CHECK_VALUE((*blocks)[p] >= 1, op, ": blocks[", p, "] must be >= 1, got ", (*blocks)[p]);
    TORCH_CHECK_VALUE((*blocks)[p] <= std::numeric_limits<int64_t>::max() - total, op, ": blocks add up to more than ",
                      "int64 holds (blocks[", p, "] = ", (*blocks)[p], " after ", total, ") but ", xs.size(),
                      " tensors were given");
    total += (*blocks)[p];
  }
  TORCH_CHECK_VALUE(total == static_cast<int64_t>(xs.size()), op, ": blocks add up to ", total, " tensors but ",
                    xs.size(), " were given");
  size_t next = 0;
  for (size_t p = 0; p < blocks->size(); ++p) {
    std::vector<at::Tensor> parts(xs.begin() + next, xs.begin() + next + (*blocks)[p]);
    for (size_t b = 1; b < parts.size(); ++b) {
      TORCH_CHECK_VALUE(parts[b].size(0) == parts[0].size(0), op, ": the blocks of problem ", p,
                        " must have one row count, but xs[", next, "] has ", parts[0].size(0), " rows and xs[",
                        next + b, "] has ", parts[b].size(0));
    }
    next += parts.size();
    problems.push_back(std::move(parts));
  }
  return problems;
}

at::Tensor max_abs(const std::vector<at::Tensor>& parts) {
  at::Tensor m;
  for (const auto& b : parts) {
    if (b.numel() == 0) continue;
    const auto [lo, hi] = at::aminmax(b);  // one pass; NaN propagates
    const auto here = at::maximum(hi.to(at::kDouble), lo.to(at::kDouble).neg());
    m = m.defined() ? at::maximum(m, here) : here;
  }
  return m.defined() ? m : at::zeros({}, parts.empty() ? at::TensorOptions(at::kDouble) : parts[0].options().dtype(at::kDouble));
}

Prepared prepare_problem(const std::vector<at::Tensor>& parts, double max_abs) {
  // Inside [2^-32, 2^32] the squares and their sums stay normal and finite in float for any sane width.
  constexpr double kSafeBelow = 0x1p-32, kSafeAbove = 0x1p32;
  Prepared p{parts, {}, 0};
  if (!std::isfinite(max_abs)) {
    for (const auto& b : parts) {
      if (b.size(1) == 0) continue;
      const auto rows = at::isfinite(b).all(1).logical_not();
      p.bad = p.bad.defined() ? p.bad.logical_or(rows) : rows;
    }
    p.bad = p.bad.contiguous();
    for (auto& b : p.parts) b = at::where(p.bad.unsqueeze(1), at::zeros({}, b.options()), b);
    max_abs = pyprune_fast::max_abs(p.parts).item<double>();
  }
  if (max_abs > kSafeAbove || (max_abs > 0 && max_abs < kSafeBelow)) {
    const auto acc = accumulate_type(parts[0].scalar_type());
    const int limit = acc == at::kDouble ? 1000 : 120;  // 2^-exponent stays representable in acc
    std::frexp(max_abs, &p.exponent);                  // max_abs = m * 2^exponent, 0.5 <= m < 1
    p.exponent = std::clamp(p.exponent, -limit, limit);
    for (auto& b : p.parts) b = b.to(acc).mul(std::ldexp(1.0, -p.exponent));
  }
  return p;
}

at::Tensor gram_rows(const at::Tensor& x, Metric metric, at::Tensor* scratch) {
  auto rows = x.to(accumulate_type(x.scalar_type()));
  if (metric == Metric::kCosine || x.size(-2) == 0 || x.size(-1) == 0) return rows;
  const auto mean = rows.mean(-2, /*keepdim=*/true);
  if (scratch == nullptr || rows.dim() != 2) return rows - mean;
  const int64_t n = rows.size(0), d = rows.size(1);
  const auto flat = reuse(*scratch, n * d, rows.options());
  const bool column_major = rows.stride(0) == 1 && rows.stride(1) == n && d > 1;  // a transposed matrix
  auto out = column_major ? flat.view({d, n}).t() : flat.view({n, d});
  return at::sub_out(out, rows, mean);
}

}  // namespace pyprune_fast
