#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "gather_channels.h"
#include "cpu/parallel_rows.h"

namespace pyprune_fast {
namespace {

// Rows [begin, end) of the output, row r = (outer o, picked k): `inner` words copied from input row
// (o, idx[k]). Walked one outer slice at a time, so the loop over its picked rows has no division and no
// branch: single words (1x1 convs along dim 1, a Linear's columns) one load each, short rows (3x3 kernels)
// word by word, long rows with memcpy.
template <class word_t>
void gather_rows(const word_t* src, word_t* dst, const int64_t* idx, const ChannelView& v, int64_t picked,
                 int64_t begin, int64_t end) {
  const int64_t inner = v.inner;
  for (int64_t r = begin; r < end;) {
    const int64_t o = r / picked, k = r % picked, n = std::min(picked - k, end - r);
    const word_t* from = src + o * v.channels * inner;
    const int64_t* ix = idx + k;
    word_t* to = dst + r * inner;
    if (inner == 1) {
      for (int64_t j = 0; j < n; ++j) to[j] = from[ix[j]];
    } else if (inner == 9) {  // 3x3 kernels
      for (int64_t j = 0; j < n; ++j) std::memcpy(to + j * 9, from + ix[j] * 9, 9 * sizeof(word_t));
    } else {
      for (int64_t j = 0; j < n; ++j) std::memcpy(to + j * inner, from + ix[j] * inner, inner * sizeof(word_t));
    }
    r += n;
  }
}

std::vector<at::Tensor> gather_channels_cpu(at::TensorList xs, at::TensorList indices, at::IntArrayRef dims) {
  const BelowAutograd below_autograd;
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
    const int64_t picked = args.indices[t].numel();
    const void* src = x.const_data_ptr();
    void* dst = outs[t].mutable_data_ptr();
    const int64_t* idx = args.indices[t].const_data_ptr<int64_t>();
    switch (x.element_size()) {  // raw words: one instantiation per element size serves every dtype
      case 1: return gather_rows(static_cast<const uint8_t*>(src), static_cast<uint8_t*>(dst), idx, v, picked, begin, end);
      case 2: return gather_rows(static_cast<const uint16_t*>(src), static_cast<uint16_t*>(dst), idx, v, picked, begin, end);
      case 4: return gather_rows(static_cast<const uint32_t*>(src), static_cast<uint32_t*>(dst), idx, v, picked, begin, end);
      case 8: return gather_rows(static_cast<const uint64_t*>(src), static_cast<uint64_t*>(dst), idx, v, picked, begin, end);
      default: {  // complex128 and other 16-byte types: copy as two 8-byte words
        ChannelView wide{v.outer, v.channels, v.inner * (x.element_size() / 8)};
        return gather_rows(static_cast<const uint64_t*>(src), static_cast<uint64_t*>(dst), idx, wide, picked, begin, end);
      }
    }
  });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(pyprune_fast, CPU, m) {
  m.impl("gather_channels", &gather_channels_cpu);
}

}  // namespace pyprune_fast
