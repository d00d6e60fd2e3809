// C++ users call the ops through the dispatcher after linking libpyprune_fast. This checks that the
// CMake library registers them and that they compute what the Python tests check in depth.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <iostream>

int main() {
  auto x = at::randn({40, 27}, at::kDouble);
  auto pd = c10::Dispatcher::singleton()
                .findSchemaOrThrow("pyprune_fast::pairwise_distance", "")
                .typed<std::vector<at::Tensor>(at::TensorList, c10::string_view, at::OptionalIntArrayRef)>();
  auto d = pd.call({x}, "euclidean", std::nullopt)[0];
  auto expected = at::cdist(x, x, 2.0, /*compute_mode=donot_use_mm*/ 2);
  if (!at::allclose(d, expected, 1e-9, 1e-9) || !at::equal(d, d.t())) {
    std::cerr << "pairwise_distance disagrees with cdist\n";
    return 1;
  }
  // the same points as two column blocks, one a transposed view
  auto right = x.narrow(1, 10, 17).t().contiguous().t();
  auto halves = pd.call({x.narrow(1, 0, 10), right}, "euclidean", std::vector<int64_t>{2})[0];
  if (!at::allclose(halves, expected, 1e-9, 1e-9)) {
    std::cerr << "pairwise_distance of column blocks disagrees with cdist\n";
    return 1;
  }

  auto gather = c10::Dispatcher::singleton()
                    .findSchemaOrThrow("pyprune_fast::gather_channels", "")
                    .typed<std::vector<at::Tensor>(at::TensorList, at::TensorList, at::IntArrayRef)>();
  auto idx = at::tensor({3, 0, 7}, at::kLong);
  auto g = gather.call({x}, {idx}, {1})[0];
  if (!at::equal(g, x.index_select(1, idx))) {
    std::cerr << "gather_channels disagrees with index_select\n";
    return 1;
  }

  try {
    gather.call({x}, {at::tensor({3, 3}, at::kLong)}, {1});
    std::cerr << "gather_channels accepted repeated indices\n";
    return 1;
  } catch (const c10::ValueError& e) {
    std::cout << "bad input rejected: " << e.what_without_backtrace() << "\n";
  }
  std::cout << "pyprune_fast C++ smoke test passed\n";
  return 0;
}
