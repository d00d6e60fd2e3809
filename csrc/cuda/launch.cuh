// Small helpers shared by the CUDA kernels of pyprune_fast.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace pyprune_fast {

// Copies a host table of trivially copyable job descriptors to `device` (pinned staging, current stream).
// The returned tensor owns the device copy; keep it alive until the kernel that reads it is queued.
template <class Job>
at::Tensor upload_jobs(const std::vector<Job>& jobs, c10::Device device) {
  const int64_t bytes = static_cast<int64_t>(jobs.size() * sizeof(Job));
  auto host = at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  std::memcpy(host.mutable_data_ptr(), jobs.data(), bytes);
  return host.to(device, /*non_blocking=*/true);
}

// Blocks for a grid-stride loop over `total` elements: enough to fill the GPU, no more.
inline unsigned int grid_stride_blocks(int64_t total, int threads) {
  const int64_t want = (total + threads - 1) / threads;
  const int64_t cap = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 8;
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min(want, cap)));
}

// Uploads the jobs in chunks of at most 65535 (grid.y picks the job) and calls
// launch(const Job* device_table, unsigned int count) for each.
template <class Job, class F>
void launch_in_chunks(const std::vector<Job>& jobs, c10::Device device, F launch) {
  constexpr size_t kMaxGridY = 65535;
  for (size_t first = 0; first < jobs.size(); first += kMaxGridY) {
    std::vector<Job> chunk(jobs.begin() + first, jobs.begin() + std::min(jobs.size(), first + kMaxGridY));
    auto table = upload_jobs(chunk, device);
    launch(reinterpret_cast<const Job*>(table.const_data_ptr()), static_cast<unsigned int>(chunk.size()));
  }
}

}  // namespace pyprune_fast
