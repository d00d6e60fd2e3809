// The backend-independent half of pairwise_distance: argument checks and the Gram matrices of all
// inputs, computed with one batched matrix product per distinct input shape.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <cmath>

#include <string_view>
#include <vector>

namespace pyprune_fast {

enum class Metric { kEuclidean, kSqEuclidean, kCosine };

Metric parse_metric(std::string_view metric);

// 2-D floating tensors of one dtype on one device; returns that device.
c10::Device check_pairwise_inputs(at::TensorList xs);

// The problems of a call: each the list of its column blocks (one tensor each without `blocks`; with it,
// blocks[p] consecutive tensors of one row count). Checks that the blocks add up to xs.
std::vector<std::vector<at::Tensor>> split_problems(at::TensorList xs, at::OptionalIntArrayRef blocks);

// The first `numel` elements of `buffer`, which is (re)allocated with `options` when it is smaller: a loop
// over many inputs reuses one buffer instead of touching fresh pages for each.
inline at::Tensor reuse(at::Tensor& buffer, int64_t numel, const at::TensorOptions& options) {
  if (!buffer.defined() || buffer.numel() < numel) buffer = at::empty({numel}, options);
  return buffer.narrow(0, 0, numel);
}

// Rows ready for the Gram product: in the accumulate dtype (float for float/half/bfloat16, double
// for double) and, for the Euclidean metrics, centred along dim -2 (distances do not change;
// cancellation in |a|^2 + |b|^2 - 2ab shrinks). x is (N, D) or a batch (B, N, D). With `scratch`, a 2-D
// x's centred rows are written into it (see reuse; laid out like x when x is row- or column-major).
at::Tensor gram_rows(const at::Tensor& x, Metric metric, at::Tensor* scratch = nullptr);

// max |x| over a problem's column blocks: a 0-dim float64 tensor on their device (NaN if one is NaN,
// inf if one is infinite, 0 without elements).
at::Tensor max_abs(const std::vector<at::Tensor>& parts);

// A problem ready for the Gram product. Rows holding a NaN or Inf are zeroed and marked in `bad` (their
// distances become NaN); when max |x| is far from 1 the rows are multiplied by 2^-exponent (exact, in the
// accumulate dtype) so that squares neither overflow nor underflow, and distances are scaled back.
struct Prepared {
  std::vector<at::Tensor> parts;
  at::Tensor bad;    // (N,) bool, contiguous, on the parts' device; undefined when every row is finite
  int exponent = 0;  // 0: the rows are the inputs themselves
};
Prepared prepare_problem(const std::vector<at::Tensor>& parts, double max_abs);

// The distance of rows i and j from Gram entries. Written so that (i, j) and (j, i) give the same bits,
// the diagonal is exactly zero (NaN for a non-finite row), rounding never makes a NaN or a negative
// distance, and distances of rows scaled by 2^-exponent are scaled back.
template <class acc_t>
C10_HOST_DEVICE inline acc_t distance_from_gram(acc_t gii, acc_t gjj, acc_t gij, acc_t gji, bool diagonal, Metric metric,
                                                bool nonfinite, int exponent) {
  if (nonfinite) return static_cast<acc_t>(NAN);
  if (diagonal) return acc_t(0);
  if (metric == Metric::kCosine) {
    if (gii <= acc_t(0) || gjj <= acc_t(0)) return acc_t(1);
    const acc_t sim = (gij + gji) * acc_t(0.5) / (std::sqrt(gii) * std::sqrt(gjj));
    const acc_t d = acc_t(1) - sim;
    return d < acc_t(0) ? acc_t(0) : (d > acc_t(2) ? acc_t(2) : d);
  }
  acc_t d2 = (gii + gjj) - (gij + gji);
  d2 = d2 > acc_t(0) ? d2 : acc_t(0);
  const acc_t d = metric == Metric::kEuclidean ? std::sqrt(d2) : d2;
  if (exponent == 0) return d;
  return static_cast<acc_t>(::ldexp(static_cast<double>(d), metric == Metric::kEuclidean ? exponent : 2 * exponent));
}

}  // namespace pyprune_fast
