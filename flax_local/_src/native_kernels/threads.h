// Splitting a kernel's positions between the threads of XLA's intra-op pool,
// asking for huge pages on large outputs, and choosing which outputs to write
// around the cache.
//
// Part of the kernels' single translation unit, locally_connected.cc, which
// includes it once: everything here has internal linkage, as there.

#ifndef FLAX_LOCAL_NATIVE_KERNELS_THREADS_H_
#define FLAX_LOCAL_NATIVE_KERNELS_THREADS_H_

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include <sys/mman.h>
#include <unistd.h>

#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace flax_local {
namespace {

namespace ffi = xla::ffi;

// Runs body(part, worker) for part in [0, parts) on the caller (worker 0) and
// up to workers - 1 of the pool's threads (workers 1, 2, ...; a worker runs
// its parts one after another, so per-worker scratch needs no lock). Parts
// are claimed from a shared counter, so the caller never waits for a task the
// pool has not started (no deadlock when every pool thread is busy): it waits
// only for parts already claimed, and a task that starts late finds none left
// and returns without touching the caller's frame. A pool thread can take
// 50-200 us to wake; with several parts per worker the caller meanwhile
// takes the parts it would have run.
template <typename Body>
void ParallelParts(int64_t parts, int64_t workers, ffi::ThreadPool& pool, const Body& body) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  auto run = [state, parts, body_ptr = &body](int64_t worker) {
    for (int64_t part; (part = state->next.fetch_add(1)) < parts;) {
      (*body_ptr)(part, worker);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t worker = 1; worker < workers; ++worker) pool.Schedule([run, worker] { run(worker); });
  run(0);
  while (state->done.load(std::memory_order_acquire) < parts) std::this_thread::yield();
}

// Asks for transparent huge pages on a large output before it is first
// written. XLA maps buffers of tens of MiB fresh on every call, so writing one
// costs a page fault per 4 KiB, which can take longer than the computing
// (benchmarks/EXPERIMENTS.md, "Where the time of the largest cases goes");
// with 2 MiB pages that is 512x fewer.
// Only a hint: without THP in `madvise` or `always` mode nothing changes.
void AdviseHugePages(void* data, int64_t bytes) {
  constexpr uintptr_t kHugePage = uintptr_t{2} << 20;
  if (bytes < static_cast<int64_t>(4 * kHugePage)) return;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHugePage - 1);
#ifdef MADV_HUGEPAGE  // Linux only
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

// The size of the last-level cache the calling thread's core uses, from Linux's
// /sys/devices/system/cpu/cpu0/cache (sysconf's figure can be the whole
// package's: 256 MiB on an EPYC whose cores each see a 32 MiB L3), else
// sysconf's, else 32 MiB.
int64_t LastLevelCacheBytes() {
  int64_t best_level = 0, bytes = 0;
  for (int index = 0; index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream level_file(dir + "level"), size_file(dir + "size");
    int64_t level = 0, size = 0;
    std::string unit;
    if (!(level_file >> level) || !(size_file >> size)) continue;
    size_file >> unit;  // "K" or "M" right after the number (>> stops at it)
    size <<= unit == "K" ? 10 : unit == "M" ? 20 : unit == "G" ? 30 : 0;
    if (level > best_level) best_level = level, bytes = size;
  }
  if (bytes > 0) return bytes;
#if defined(_SC_LEVEL3_CACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
  for (const int name : {_SC_LEVEL3_CACHE_SIZE, _SC_LEVEL2_CACHE_SIZE}) {
    if (const long size = sysconf(name); size > 0) return size;
  }
#endif
  return int64_t{32} << 20;
}

// Outputs larger than this are written around the cache (WritesAroundCache):
// $FLAX_LOCAL_STREAM_BYTES if set, else LastLevelCacheBytes().
int64_t StreamThresholdBytes() {
  static const int64_t bytes = [] {
    if (const char* set = std::getenv("FLAX_LOCAL_STREAM_BYTES"); set != nullptr && *set != '\0') {
      return static_cast<int64_t>(std::strtoll(set, nullptr, 10));
    }
    return LastLevelCacheBytes();
  }();
  return bytes;
}

// Whether to write an output of `bytes`, rows of `row_floats` floats from
// `data`, with StoreStream: where it is larger than the last-level cache, its
// first lines are evicted before the call ends, unread, so reading each line
// before writing it (what a normal store does) only costs memory traffic
// (benchmarks/EXPERIMENTS.md, "Where large's kernels wait"); and where every
// row starts aligned for whole vectors.
bool WritesAroundCache(const float* data, int64_t bytes, int64_t row_floats) {
  return bytes > StreamThresholdBytes() && reinterpret_cast<uintptr_t>(data) % sizeof(Vec) == 0 &&
         row_floats % kLanes == 0;
}

// Splits [0, n) into `parts` nearly equal ranges.
inline int64_t RangeStart(int64_t n, int64_t parts, int64_t part) { return n * part / parts; }

// How to split `units` positions between threads: into how many parts, run by
// how many workers. One worker per pool thread, but no more than one per
// kMinPartWork multiply-adds (a small layer stays on the calling thread:
// handing work to the pool costs microseconds); `parts_per_worker` parts
// each, so a worker that starts late costs little (see ParallelParts).
constexpr int64_t kMinPartWork = int64_t{1} << 18;

struct Split {
  int64_t parts, workers;
};

Split SplitWork(ffi::ThreadPool& pool, int64_t units, int64_t multiply_adds, int64_t parts_per_worker) {
  const int64_t by_work = std::max<int64_t>(1, multiply_adds / kMinPartWork);
  const int64_t workers = std::max<int64_t>(1, std::min({units, by_work, std::max<int64_t>(1, pool.num_threads())}));
  const int64_t parts = std::max(workers, std::min({units, by_work, workers * parts_per_worker}));
  return {parts, workers};
}

// Parts per worker where results do not depend on which worker runs a part.
constexpr int64_t kPartsPerWorker = 4;

}  // namespace
}  // namespace flax_local

#endif  // FLAX_LOCAL_NATIVE_KERNELS_THREADS_H_
