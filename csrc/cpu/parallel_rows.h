// Parallel regions over many problems of different sizes: split by work rather than by count.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <numeric>
#include <vector>

namespace pyprune_fast {

// Calls fn(t, begin, end) for row ranges [begin, end) of tensor t, covering rows[t] rows of every
// tensor t once, in one parallel region. A row of tensor t costs cost[t] (bytes, say); tasks are about
// `grain` of the total cost, and each thread takes the next task free (not a fixed share: on a busy
// machine a thread that waits for a core holds up one task, not its share of the region).
template <class F>
void parallel_rows(const std::vector<int64_t>& rows, const std::vector<int64_t>& cost, int64_t grain, F fn) {
  std::vector<int64_t> start(rows.size() + 1, 0);  // in cost units
  for (size_t t = 0; t < rows.size(); ++t) start[t + 1] = start[t] + rows[t] * cost[t];
  // Row r of tensor t belongs to the task holding the cost offset start[t] + r * cost[t].
  auto first_row = [&](size_t t, int64_t at) {
    return std::clamp<int64_t>((at - start[t] + cost[t] - 1) / cost[t], 0, rows[t]);
  };
  auto run = [&](int64_t begin, int64_t end) {
    size_t t = std::upper_bound(start.begin(), start.end(), begin) - start.begin() - 1;
    for (; t < rows.size() && start[t] < end; ++t) {
      if (rows[t] == 0) continue;
      const int64_t lo = first_row(t, begin), hi = first_row(t, end);
      if (hi > lo) fn(t, lo, hi);
    }
  };
  grain = std::max<int64_t>(grain, 1);
  const int64_t tasks = (start.back() + grain - 1) / grain;
  const int64_t workers = std::min<int64_t>(at::in_parallel_region() ? 1 : at::get_num_threads(), tasks);
  if (workers <= 1) return run(0, start.back());
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t task; (task = next.fetch_add(1)) < tasks;) {
      run(task * grain, std::min(start.back(), (task + 1) * grain));
    }
  });
}

// The problems' indices, largest work first (ties in index order).
inline std::vector<size_t> largest_first(const std::vector<double>& work) {
  std::vector<size_t> order(work.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t p, size_t q) { return work[p] > work[q]; });
  return order;
}

// Calls fn(p, state) for every p of `order` (largest first) on one worker per thread, each taking the
// next one free, or on this thread alone when the work in all is below `serial_below`; `state` is one
// default-constructed State per worker (scratch memory, say). Inside, at::parallel_for and MKL run on
// the calling thread only. Workers run with the caller's thread-local state (grad mode, the dispatch
// keys the dispatcher excluded), so ATen calls in fn behave as they would on the calling thread.
template <class State, class F>
void parallel_queue(const std::vector<size_t>& order, double work, double serial_below, F fn) {
  const int64_t workers = work < serial_below ? 1 : std::min<int64_t>(at::get_num_threads(), order.size());
  std::atomic<size_t> next{0};
  const at::ThreadLocalState caller;
  at::parallel_for(0, std::max<int64_t>(workers, 1), 1, [&](int64_t, int64_t) {
    at::ThreadLocalStateGuard same_as_caller(caller);
    State state;
    for (size_t j; (j = next.fetch_add(1)) < order.size();) fn(order[j], state);
  });
}

// Calls fn(p, state) for every problem p (work[p] its cost): first, largest first, those too big to
// share (more than a thread's fair share of the work left) one at a time on this thread, whose own
// parallel regions use every thread; then the rest side by side by parallel_queue. On a busy machine
// this keeps the parallel regions few and large: small problems open none of their own.
template <class State, class F>
void parallel_problems(const std::vector<double>& work, double serial_below, F fn) {
  const auto order = largest_first(work);
  double left = std::accumulate(work.begin(), work.end(), 0.0);
  const int64_t threads = at::get_num_threads();
  size_t alone = 0;
  State state;
  for (; alone < order.size() && work[order[alone]] * threads > left; ++alone) {
    fn(order[alone], state);
    left -= work[order[alone]];
  }
  parallel_queue<State>(std::vector<size_t>(order.begin() + alone, order.end()), left, serial_below, fn);
}

}  // namespace pyprune_fast
