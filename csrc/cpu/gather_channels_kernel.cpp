#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>

#include "channel_args.h"
#include "cpu/parallel_rows.h"

namespace pyprune_fast {
namespace {

template <class word_t>
void copy_words(char* dst, const char* src, int64_t n) {
  auto* d = reinterpret_cast<word_t*>(dst);
  const auto* s = reinterpret_cast<const word_t*>(src);
  for (int64_t i = 0; i < n; ++i) d[i] = s[i];
}

// A row of `bytes` bytes: short rows (the k*k taps of one input channel) as a word loop, long ones by memcpy.
void copy_row(char* dst, const char* src, int64_t bytes, int64_t element_size) {
  if (bytes > 256) return (void)std::memcpy(dst, src, bytes);
  switch (element_size) {
    case 4: return copy_words<uint32_t>(dst, src, bytes / 4);
    case 8: return copy_words<uint64_t>(dst, src, bytes / 8);
    case 2: return copy_words<uint16_t>(dst, src, bytes / 2);
    default: return (void)std::memcpy(dst, src, bytes);
  }
}

std::vector<at::Tensor> gather_channels_cpu(at::TensorList xs, at::TensorList indices, at::IntArrayRef dims) {
  GatherArgs args = prepare_gather(xs, indices, dims);
  std::vector<at::Tensor> outs;
  std::vector<int64_t> rows, bytes;  // every (outer, picked channel) pair is one contiguous row of `inner` elements
  for (size_t i = 0; i < args.xs.size(); ++i) {
    const auto& x = args.xs[i];
    auto sizes = x.sizes().vec();
    sizes[args.dims[i]] = args.indices[i].numel();
    outs.push_back(at::empty(sizes, x.options()));
    rows.push_back(outs.back().numel() == 0 ? 0 : channel_view(x, args.dims[i]).outer * args.indices[i].numel());
    bytes.push_back(std::max<int64_t>(1, channel_view(x, args.dims[i]).inner * x.element_size()));
  }
  parallel_rows(rows, bytes, 32768, [&](size_t t, int64_t begin, int64_t end) {
    const auto& x = args.xs[t];
    const auto v = channel_view(x, args.dims[t]);
    const int64_t picked = args.indices[t].numel(), size = x.element_size(), row = v.inner * size;
    const auto* src = static_cast<const char*>(x.const_data_ptr());
    auto* dst = static_cast<char*>(outs[t].mutable_data_ptr());
    const int64_t* idx = args.indices[t].const_data_ptr<int64_t>();
    int64_t o = begin / picked, k = begin % picked;  // walked without a division per row
    for (int64_t r = begin; r < end; ++r) {
      copy_row(dst + r * row, src + (o * v.channels + idx[k]) * row, row, size);
      if (++k == picked) k = 0, ++o;
    }
  });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CPU, m) {
  m.impl("gather_channels", &gather_channels_cpu);
}

}  // namespace pyprune_fast
