// Native CPU kernels of the locally-connected layer, called through XLA's FFI.
//
// One problem, three products. With rows[p, t] the input row (flattened
// spatial index) read by tap t of output position p, or -1 for a tap in the
// padding, and k = t * C + c:
//
//   forward      y[g, b, p, f]  = bias[g, p, f] + sum_k x[g, b, rows[p, t], c] * w[g, p, k, f]
//   kernel grad  dw[g, p, k, f] = sum_b x[g, b, rows[p, t], c] * dy[g, b, p, f]
//                db[g, p, f]    = sum_b dy[g, b, p, f]
//   input grad   dx[g, b, r, c] = sum_{p, t: rows[p, t] = r} sum_f dy[g, b, p, f] * w[g, p, k, f]
//
// g is a group axis (what `vmap` adds); an operand whose group size is 1 is
// shared by every group. Each product is a small matrix product per position
// whose rows are gathered from x on the fly (no patches array is built), run
// over positions on XLA's intra-op thread pool, with register-blocked tiles of
// 16-float vectors (8-float where a tile has at most 8 columns) along the
// output's contiguous axis. Compiled by
// flax_local/_src/native_build.py with the host's -march.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include <sys/mman.h>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));

#ifdef __AVX512F__
constexpr int kAccumulators = 24;  // of 32 vector registers
#else
constexpr int kAccumulators = 12;  // in 16-float units: 16 x 8-float registers
#endif

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}

// The first `count` lanes (1..16); the others read as zero, or are left alone.
#ifdef __AVX512F__
inline __mmask16 LaneMask(int64_t count) { return static_cast<__mmask16>((1u << count) - 1); }
inline Vec LoadLanes(const float* p, int64_t count) {
  return reinterpret_cast<Vec>(_mm512_maskz_loadu_ps(LaneMask(count), p));
}
inline void Store(float* p, Vec v, int64_t count) {
  _mm512_mask_storeu_ps(p, LaneMask(count), reinterpret_cast<__m512>(v));
}
#else
inline Vec LoadLanes(const float* p, int64_t count) {
  if (count == kLanes) return Load(p);
  Vec v = {};
  std::memcpy(&v, p, count * sizeof(float));
  return v;
}
inline void Store(float* p, Vec v, int64_t count) {
  if (count == kLanes) {
    std::memcpy(p, &v, sizeof(Vec));
  } else {
    std::memcpy(p, &v, count * sizeof(float));
  }
}
#endif

inline void AddStore(float* p, Vec v, int64_t count) { Store(p, LoadLanes(p, count) + v, count); }

// Half vectors (8 lanes), for tiles with at most 8 columns (see Tiles below).
typedef float HalfVec __attribute__((vector_size(8 * sizeof(float))));
#ifdef __AVX512F__
inline HalfVec LoadHalf(const float* p, int64_t count) {
  return reinterpret_cast<HalfVec>(_mm256_maskz_loadu_ps(static_cast<__mmask8>((1u << count) - 1), p));
}
inline void StoreHalf(float* p, HalfVec v, int64_t count) {
  _mm256_mask_storeu_ps(p, static_cast<__mmask8>((1u << count) - 1), reinterpret_cast<__m256>(v));
}
#else
inline HalfVec LoadHalf(const float* p, int64_t count) {
  HalfVec v = {};
  std::memcpy(&v, p, count * sizeof(float));
  return v;
}
inline void StoreHalf(float* p, HalfVec v, int64_t count) { std::memcpy(p, &v, count * sizeof(float)); }
#endif

// Asks for the cache line holding p before it is needed. Each position's
// weights (and kernel gradient) are read (written) once per call, straight
// from memory: the tiles ask for the next position's lines as they go through
// the current one's, so the next position's loads do not wait on memory
// (measured where the weights do not fit in cache: forward 0.75-0.9x, input
// gradient 0.6-0.8x, kernel gradient 0.94-0.97x the time). A position's later
// row blocks ask again for lines already on their way: an instruction per
// line, not measured against skipping them.
inline void PrefetchRead(const void* p) { __builtin_prefetch(p, 0, 3); }
inline void PrefetchWrite(const void* p) { __builtin_prefetch(p, 1, 3); }

// Copies a rows x cols block transposed:
// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols.
#ifdef __AVX512F__
inline void Transpose16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
#pragma GCC unroll 2
  for (int h = 0; h < 2; ++h) {
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
      t[8 * h + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0x88);
      t[8 * h + 4 + i] = _mm512_shuffle_f32x4(r[8 * h + i], r[8 * h + 4 + i], 0xDD);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xDD);
  }
}
#endif

inline void Transpose(const float* src, int64_t src_stride, int64_t rows, int64_t cols, float* dst,
                      int64_t dst_stride) {
#ifdef __AVX512F__
  for (int64_t i0 = 0; i0 < rows; i0 += 16) {
    const int64_t nr = std::min<int64_t>(16, rows - i0);
    for (int64_t j0 = 0; j0 < cols; j0 += 16) {
      const int64_t nc = std::min<int64_t>(16, cols - j0);
      __m512 r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i) {
        r[i] = i < nr ? _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << nc) - 1), src + (i0 + i) * src_stride + j0)
                      : _mm512_setzero_ps();
      }
      Transpose16(r);
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j) {
        if (j < nc) _mm512_mask_storeu_ps(dst + (j0 + j) * dst_stride + i0, static_cast<__mmask16>((1u << nr) - 1), r[j]);
      }
    }
  }
#else
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t j = 0; j < cols; ++j) dst[j * dst_stride + i] = src[i * src_stride + j];
  }
#endif
}

// ----------------------------------------------------------------------------
// Weights stored as bfloat16 (the top 16 bits of a float32, held as uint16_t):
// the kernels widen one position's weights into float32 scratch in cache
// before its tiles run, and narrow a position's kernel gradient from float32
// scratch, rounding to nearest even as XLA's convert does; the tiles
// themselves always see float32.
// ----------------------------------------------------------------------------

using Bf16 = uint16_t;

inline float Bf16ToFloat(Bf16 h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

inline Bf16 FloatToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<Bf16>((bits >> 16) | 0x40u);  // a quiet NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<Bf16>(bits >> 16);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define FLAX_LOCAL_VECTOR_BF16 1
#endif

// dst[i] = float(src[i]) for i < n.
void Widen(const Bf16* src, int64_t n, float* dst) {
  int64_t i = 0;
#ifdef FLAX_LOCAL_VECTOR_BF16
  for (; i < n; i += kLanes) {
    const __mmask16 mask = LaneMask(std::min<int64_t>(kLanes, n - i));
    const __m512i wide = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, src + i)), 16);
    _mm512_mask_storeu_ps(dst + i, mask, _mm512_castsi512_ps(wide));
  }
#endif
  for (; i < n; ++i) dst[i] = Bf16ToFloat(src[i]);
}

// dst[i] = bfloat16(src[i]) for i < n, rounded to nearest even.
void Narrow(const float* src, int64_t n, Bf16* dst) {
  int64_t i = 0;
#ifdef FLAX_LOCAL_VECTOR_BF16
  const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7fff);
  const __m512i magnitude = _mm512_set1_epi32(0x7fffffff), infinity = _mm512_set1_epi32(0x7f800000);
  const __m512i quiet = _mm512_set1_epi32(0x400000);
  for (; i < n; i += kLanes) {
    const __mmask16 mask = LaneMask(std::min<int64_t>(kLanes, n - i));
    const __m512i bits = _mm512_castps_si512(_mm512_maskz_loadu_ps(mask, src + i));
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), one);
    __m512i rounded = _mm512_add_epi32(bits, _mm512_add_epi32(half, odd));
    const __mmask16 nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(bits, magnitude), infinity);
    rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(bits, quiet));
    _mm256_mask_storeu_epi16(dst + i, mask, _mm512_cvtepi32_epi16(_mm512_srli_epi32(rounded, 16)));
  }
#endif
  for (; i < n; ++i) dst[i] = FloatToBf16(src[i]);
}

// A position's n weights as float32: in place, or widened into scratch.
// next: offset from w to the next position's weights (0: none), which the
// tiles ask for (float32) or the widening does (bfloat16).
inline const float* WeightsAsFloat(const float* w, int64_t, int64_t, std::vector<float>&) { return w; }
inline const float* WeightsAsFloat(const Bf16* w, int64_t n, int64_t next, std::vector<float>& scratch) {
  scratch.resize(n);
  if (next != 0) {
    for (int64_t i = 0; i < n; i += 64 / sizeof(Bf16)) PrefetchRead(w + next + i);
  }
  Widen(w, n, scratch.data());
  return scratch.data();
}

// The offset the tiles prefetch from (ForwardArgs::prefetch and the like):
// to the next position's weights where the tiles read (write) them in place,
// as float32; none where they use a float32 copy of bfloat16 ones.
template <ffi::DataType WeightType>
constexpr int64_t TilePrefetch(int64_t next) {
  return WeightType == ffi::F32 ? next : 0;
}

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
// costs a page fault per 4 KiB (measured: a 100 MiB kernel gradient spent
// more time faulting than computing); with 2 MiB pages that is 512x fewer.
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

// ----------------------------------------------------------------------------
// Tiles. Each product is computed in register tiles acc[rows][NV] of 16-float
// vectors: NV (1-4) vectors along the output's contiguous axis, `rows` (up to
// kAccumulators / NV) rows across it. Both counts are template parameters so
// the tile lives in registers; the helpers below pick them at run time, and a
// partial last vector is read and written through a lane mask.
// ----------------------------------------------------------------------------

// Tiles whose columns fit in 8 lanes (at most 8 filters, or a batch of at most
// 8 in the input gradient) use half vectors instead: the same instruction
// count with no lanes wasted, and more rows per tile (measured: 0.65-0.85x
// the time on vol3d, long1d).

// Calls chunk(integral_constant<NV>, start, last_lanes) for [0, n) in chunks
// of up to 4 vectors of 16 lanes, the last one holding last_lanes (1..16).
template <typename Chunk>
void ForEachVectorChunk(int64_t n, const Chunk& chunk) {
  for (int64_t start = 0; start < n; start += 4 * kLanes) {
    const int64_t left = n - start;
    const int64_t vectors = std::min<int64_t>(4, (left + kLanes - 1) / kLanes);
    const int64_t last_lanes = left - (vectors - 1) * kLanes;
    const int64_t last = std::min<int64_t>(kLanes, last_lanes);
    if (vectors == 4) chunk(std::integral_constant<int, 4>{}, start, last);
    if (vectors == 3) chunk(std::integral_constant<int, 3>{}, start, last);
    if (vectors == 2) chunk(std::integral_constant<int, 2>{}, start, last);
    if (vectors == 1) chunk(std::integral_constant<int, 1>{}, start, last);
  }
}

// Calls tile(integral_constant<rows>) for rows in [1, R].
template <int R, typename Tile>
void WithRows(int64_t rows, const Tile& tile) {
  if constexpr (R > 0) {
    if (rows == R) {
      tile(std::integral_constant<int, R>{});
    } else {
      WithRows<R - 1>(rows, tile);
    }
  }
}

// Calls tile(integral_constant<rows>, first_row) over [0, n) in blocks of R rows.
template <int R, typename Tile>
void ForEachRowBlock(int64_t n, const Tile& tile) {
  for (int64_t first = 0; first < n; first += R) {
    WithRows<R>(std::min<int64_t>(R, n - first), [&](auto rows) { tile(rows, first); });
  }
}

template <int NV>
constexpr int RowsFor() {
  return std::max(1, kAccumulators / NV);
}

inline int64_t LanesOf(int j, int nv, int64_t last_lanes) { return j == nv - 1 ? last_lanes : kLanes; }

// ----------------------------------------------------------------------------
// Forward: acc[i][j] = bias[f] + sum_k x[b0 + i, row(k), c(k)] * w[k, f],
// f = f0 + 16 j, reading x in place (taps in the padding are skipped).
// ----------------------------------------------------------------------------

struct ForwardArgs {
  const float* x;       // x[g, b0, 0, 0]
  int64_t x_batch;      // stride between batch rows of x
  const int32_t* rows;  // rows[p, :]
  int64_t taps, channels;
  const float* w;     // w[g, p, 0, f0]
  int64_t filters;    // F: the stride between rows k of w
  const float* bias;  // bias[g, p, f0]
  float* y;           // y[g, b0, p, f0]
  int64_t y_batch;    // stride between batch rows of y
  int64_t last_lanes;
  int64_t prefetch;  // w + prefetch: the same weights of the next position (0: none)
};

template <int NV, int RB>
void ForwardTile(const ForwardArgs& a) {
  Vec acc[RB][NV];
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) {
    const Vec bias = LoadLanes(a.bias + j * kLanes, LanesOf(j, NV, a.last_lanes));
#pragma GCC unroll 32
    for (int i = 0; i < RB; ++i) acc[i][j] = bias;
  }
  for (int64_t t = 0; t < a.taps; ++t) {
    const int32_t row = a.rows[t];
    if (row < 0) continue;
    const float* xt = a.x + static_cast<int64_t>(row) * a.channels;
    const float* wt = a.w + t * a.channels * a.filters;
    for (int64_t c = 0; c < a.channels; ++c) {
      Vec wv[NV];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) PrefetchRead(wt + a.prefetch + c * a.filters + j * kLanes);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) wv[j] = LoadLanes(wt + c * a.filters + j * kLanes, LanesOf(j, NV, a.last_lanes));
#pragma GCC unroll 32
      for (int i = 0; i < RB; ++i) {
        const float xv = xt[i * a.x_batch + c];
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[i][j] += xv * wv[j];
      }
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < RB; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) Store(a.y + i * a.y_batch + j * kLanes, acc[i][j], LanesOf(j, NV, a.last_lanes));
  }
}

// ForwardTile for at most 8 filters, in half vectors.
template <int RB>
void ForwardHalfTile(const ForwardArgs& a) {
  const HalfVec bias = LoadHalf(a.bias, a.last_lanes);
  HalfVec acc[RB];
#pragma GCC unroll 32
  for (int i = 0; i < RB; ++i) acc[i] = bias;
  for (int64_t t = 0; t < a.taps; ++t) {
    const int32_t row = a.rows[t];
    if (row < 0) continue;
    const float* xt = a.x + static_cast<int64_t>(row) * a.channels;
    const float* wt = a.w + t * a.channels * a.filters;
    for (int64_t c = 0; c < a.channels; ++c) {
      PrefetchRead(wt + a.prefetch + c * a.filters);
      const HalfVec wv = LoadHalf(wt + c * a.filters, a.last_lanes);
#pragma GCC unroll 32
      for (int i = 0; i < RB; ++i) acc[i] += xt[i * a.x_batch + c] * wv;
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < RB; ++i) StoreHalf(a.y + i * a.y_batch, acc[i], a.last_lanes);
}

// One position: every filter, every batch row.
void ForwardPosition(const ForwardArgs& position, int64_t batch) {
  if (position.filters <= 8) {
    ForEachRowBlock<16>(batch, [&](auto rows, int64_t b0) {
      ForwardArgs tile = position;
      tile.x += b0 * position.x_batch, tile.y += b0 * position.y_batch;
      tile.last_lanes = position.filters;
      ForwardHalfTile<decltype(rows)::value>(tile);
    });
    return;
  }
  ForEachVectorChunk(position.filters, [&](auto nv, int64_t f0, int64_t last_lanes) {
    constexpr int NV = decltype(nv)::value;
    ForEachRowBlock<RowsFor<NV>()>(batch, [&](auto rows, int64_t b0) {
      ForwardArgs tile = position;
      tile.x += b0 * position.x_batch, tile.y += b0 * position.y_batch + f0;
      tile.w += f0, tile.bias += f0, tile.last_lanes = last_lanes;
      ForwardTile<NV, decltype(rows)::value>(tile);
    });
  });
}

// ----------------------------------------------------------------------------
// Kernel gradient: acc[i][j] = sum_b patch[b, k0 + i] * dy[b, f], f = f0 + 16 j,
// with the position's window first gathered into patch (B, K*C) (zeros in the
// padding), so a tile reads its rows at fixed offsets from one pointer.
// ----------------------------------------------------------------------------

struct KernelGradArgs {
  const float* patch;  // patch[0, k0]
  int64_t k_total;     // stride between batch rows of patch
  int64_t batch;
  const float* dy;  // dy[g, 0, p, f0]
  int64_t dy_batch;
  float* dw;  // dw[g, p, k0, f0]
  int64_t filters;
  int64_t last_lanes;
  int64_t prefetch;  // dw + prefetch: the same gradient rows of the next position (0: none)
};

template <int NV, int RK>
void KernelGradTile(const KernelGradArgs& a) {
  Vec acc[RK][NV] = {};
  for (int64_t b = 0; b < a.batch; ++b) {
    // The tile's RK x NV lines of the next position's gradient, one per row b.
    if (b < RK * NV) PrefetchWrite(a.dw + a.prefetch + (b / NV) * a.filters + (b % NV) * kLanes);
    const float* patch = a.patch + b * a.k_total;
    Vec gv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) gv[j] = LoadLanes(a.dy + b * a.dy_batch + j * kLanes, LanesOf(j, NV, a.last_lanes));
#pragma GCC unroll 32
    for (int i = 0; i < RK; ++i) {
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] += patch[i] * gv[j];
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < RK; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) Store(a.dw + i * a.filters + j * kLanes, acc[i][j], LanesOf(j, NV, a.last_lanes));
  }
}

// KernelGradTile for at most 8 filters, in half vectors.
template <int RK>
void KernelGradHalfTile(const KernelGradArgs& a) {
  HalfVec acc[RK] = {};
  for (int64_t b = 0; b < a.batch; ++b) {
    if (b < RK) PrefetchWrite(a.dw + a.prefetch + b * a.filters);
    const float* patch = a.patch + b * a.k_total;
    const HalfVec gv = LoadHalf(a.dy + b * a.dy_batch, a.last_lanes);
#pragma GCC unroll 32
    for (int i = 0; i < RK; ++i) acc[i] += patch[i] * gv;
  }
#pragma GCC unroll 32
  for (int i = 0; i < RK; ++i) StoreHalf(a.dw + i * a.filters, acc[i], a.last_lanes);
}

// dy_next: the next position's dy rows (null: none), asked for before the
// tiles run; dw_prefetch: see KernelGradArgs::prefetch.
void KernelGradPosition(const float* x, int64_t x_batch, const int32_t* rows, int64_t taps, int64_t channels,
                        const float* dy, int64_t dy_batch, int64_t batch, int64_t filters, float* dw, float* db,
                        std::vector<float>& patch, const float* dy_next, int64_t dw_prefetch) {
  const int64_t k_total = taps * channels;
  if (dy_next != nullptr) {
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t f = 0; f < filters; f += kLanes) PrefetchRead(dy_next + b * dy_batch + f);
    }
  }
  patch.resize(batch * k_total);
  // Taps reading consecutive input rows (a window's row, at dilation 1) are
  // one contiguous run of x: copied as one piece, in 16-lane vectors.
  for (int64_t t0 = 0; t0 < taps;) {
    int64_t t1 = t0 + 1;
    while (t1 < taps && (rows[t0] < 0) == (rows[t1] < 0) && (rows[t0] < 0 || rows[t1] == rows[t1 - 1] + 1)) ++t1;
    const int64_t length = (t1 - t0) * channels;
    for (int64_t b = 0; b < batch; ++b) {
      float* dst = patch.data() + b * k_total + t0 * channels;
      const float* src = x + b * x_batch + static_cast<int64_t>(rows[t0]) * channels;
      for (int64_t i = 0; i < length; i += kLanes) {
        const int64_t lanes = std::min<int64_t>(kLanes, length - i);
        Store(dst + i, rows[t0] < 0 ? Vec{} : LoadLanes(src + i, lanes), lanes);
      }
    }
    t0 = t1;
  }
  if (filters <= 8) {
    ForEachRowBlock<16>(k_total, [&](auto rows_in_tile, int64_t k0) {
      const KernelGradArgs tile{patch.data() + k0, k_total,    batch,   dy,         dy_batch,
                                  dw + k0 * filters,   filters, filters, dw_prefetch};
      KernelGradHalfTile<decltype(rows_in_tile)::value>(tile);
    });
  } else {
    ForEachVectorChunk(filters, [&](auto nv, int64_t f0, int64_t last_lanes) {
      constexpr int NV = decltype(nv)::value;
      ForEachRowBlock<RowsFor<NV>()>(k_total, [&](auto rows_in_tile, int64_t k0) {
        const KernelGradArgs tile{patch.data() + k0,     k_total, batch,      dy + f0,    dy_batch,
                                  dw + k0 * filters + f0, filters, last_lanes, dw_prefetch};
        KernelGradTile<NV, decltype(rows_in_tile)::value>(tile);
      });
    });
  }
  for (int64_t f = 0; f < filters; ++f) db[f] = 0.0f;
  for (int64_t b = 0; b < batch; ++b) {
    const float* row = dy + b * dy_batch;
    for (int64_t f = 0; f < filters; ++f) db[f] += row[f];
  }
}

// ----------------------------------------------------------------------------
// Input gradient, batch-minor: with dyt = dy laid out (P, F, B) and dxt = dx
// laid out (R, C, B), acc[i][j] = sum_f w[k0 + i, f] * dyt[f, b], b = b0 +
// 16 j, is the contribution of tap row k0 + i to dxt[row(k), c(k), b], added
// straight from registers: no transposed weights, no scalar scatter. Where
// row k goes in dxt is looked up in a per-position table of offsets (an
// integer division per row made the kernel 1.03-1.5x slower).
// ----------------------------------------------------------------------------

struct InputGradArgs {
  const float* dyt;  // dyt[0, b0]: dy[g, :, p, :] transposed to (F, B)
  int64_t batch;     // stride between rows f of dyt, and between (row, c) rows of dxt
  const float* w;    // w[g, p, k0, 0]
  int64_t filters;
  const int64_t* offsets;  // offsets[k0]: row k's place in dxt, -1 for a tap in the padding
  float* dxt;              // dxt[0, 0, b0]
  int64_t last_lanes;
  int64_t prefetch;  // w + prefetch: the same weights of the next position (0: none)
};

template <int NV, int RK>
void InputGradTile(const InputGradArgs& a) {
  Vec acc[RK][NV] = {};
  for (int64_t f = 0; f < a.filters; ++f) {
    // The tile's RK rows of the next position's weights, a line per f.
    if (f * kLanes < RK * a.filters) PrefetchRead(a.w + a.prefetch + f * kLanes);
    Vec gv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) gv[j] = LoadLanes(a.dyt + f * a.batch + j * kLanes, LanesOf(j, NV, a.last_lanes));
#pragma GCC unroll 32
    for (int i = 0; i < RK; ++i) {
      const float wv = a.w[i * a.filters + f];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] += wv * gv[j];
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < RK; ++i) {
    if (a.offsets[i] >= 0) {
      float* dst = a.dxt + a.offsets[i];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) AddStore(dst + j * kLanes, acc[i][j], LanesOf(j, NV, a.last_lanes));
    }
  }
}

// InputGradTile for a batch of at most 8 columns, in half vectors.
template <int RK>
void InputGradHalfTile(const InputGradArgs& a) {
  HalfVec acc[RK] = {};
  for (int64_t f = 0; f < a.filters; ++f) {
    if (f * kLanes < RK * a.filters) PrefetchRead(a.w + a.prefetch + f * kLanes);
    const HalfVec gv = LoadHalf(a.dyt + f * a.batch, a.last_lanes);
#pragma GCC unroll 32
    for (int i = 0; i < RK; ++i) acc[i] += a.w[i * a.filters + f] * gv;
  }
#pragma GCC unroll 32
  for (int i = 0; i < RK; ++i) {
    if (a.offsets[i] >= 0) {
      float* dst = a.dxt + a.offsets[i];
      StoreHalf(dst, LoadHalf(dst, a.last_lanes) + acc[i], a.last_lanes);
    }
  }
}

// Adds position p's contribution to dxt for every batch column.
void InputGradPosition(const InputGradArgs& position, int64_t k_total) {
  if (position.batch <= 8) {
    ForEachRowBlock<16>(k_total, [&](auto rows, int64_t k0) {
      InputGradArgs tile = position;
      tile.last_lanes = position.batch;
      tile.w += k0 * position.filters, tile.offsets += k0;
      InputGradHalfTile<decltype(rows)::value>(tile);
    });
    return;
  }
  ForEachVectorChunk(position.batch, [&](auto nv, int64_t b0, int64_t last_lanes) {
    constexpr int NV = decltype(nv)::value;
    // 24 rows of one vector spill (the row pointers need registers too).
    constexpr int RK = std::min(16, RowsFor<NV>());
    ForEachRowBlock<RK>(k_total, [&](auto rows, int64_t k0) {
      InputGradArgs tile = position;
      tile.dyt += b0, tile.dxt += b0, tile.last_lanes = last_lanes;
      tile.w += k0 * position.filters, tile.offsets += k0;
      InputGradTile<NV, decltype(rows)::value>(tile);
    });
  });
}

// A group size: the operand's own, which is 1 (shared) or the output's.
int64_t GroupStride(int64_t group_size, int64_t element_count) { return group_size == 1 ? 0 : element_count; }

ffi::Error CheckGroups(int64_t groups, std::initializer_list<int64_t> operand_groups) {
  for (int64_t g : operand_groups) {
    if (g != 1 && g != groups) return ffi::Error::InvalidArgument("group sizes must be 1 or the output's");
  }
  return ffi::Error::Success();
}

// The forward pass, with weights of type WeightType (F32 or BF16).
template <ffi::DataType WeightType>
ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<WeightType> w, ffi::Buffer<ffi::F32> bias,
                   ffi::Buffer<ffi::S32> rows, ffi::ResultBuffer<ffi::F32> y, ffi::ThreadPool pool) {
  const auto xd = x.dimensions(), wd = w.dimensions(), bd = bias.dimensions(), rd = rows.dimensions(),
             yd = y->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || bd.size() != 3 || rd.size() != 2 || yd.size() != 4) {
    return ffi::Error::InvalidArgument("lc_forward: bad operand ranks");
  }
  int64_t groups = yd[0], batch = yd[1], positions = yd[2], filters = yd[3];
  const int64_t input_rows = xd[2], channels = xd[3], taps = rd[1], k_total = wd[2];
  if (xd[1] != batch || wd[1] != positions || wd[3] != filters || bd[1] != positions || bd[2] != filters ||
      rd[0] != positions || k_total != taps * channels) {
    return ffi::Error::InvalidArgument("lc_forward: operand shapes do not match");
  }
  if (auto e = CheckGroups(groups, {xd[0], wd[0], bd[0]}); e.failure()) return e;
  const int64_t x_group = GroupStride(xd[0], batch * input_rows * channels);
  const int64_t w_group = GroupStride(wd[0], positions * k_total * filters);
  const int64_t b_group = GroupStride(bd[0], positions * filters);
  if (groups > 1 && w_group == 0 && b_group == 0 && x_group != 0) {
    batch *= groups, groups = 1;  // weights shared by every group: the groups are just more batch rows
  }
  const int64_t units = groups * positions;
  const Split split = SplitWork(pool, units, units * batch * k_total * filters, kPartsPerWorker);
  const int64_t parts = split.parts, workers = split.workers;
  const float *x_data = x.typed_data(), *b_data = bias.typed_data();
  const auto* w_data = w.typed_data();
  const int32_t* r_data = rows.typed_data();
  float* y_data = y->typed_data();
  AdviseHugePages(y_data, groups * batch * positions * filters * sizeof(float));
  std::vector<std::vector<float>> scratch(workers);
  ParallelParts(parts, workers, pool, [&](int64_t part, int64_t worker) {
    for (int64_t u = RangeStart(units, parts, part); u < RangeStart(units, parts, part + 1); ++u) {
      const int64_t g = u / positions, p = u % positions;
      const int64_t next = p + 1 < positions ? k_total * filters : 0;
      const auto* w_stored = w_data + g * w_group + p * k_total * filters;
      const float* w_p = WeightsAsFloat(w_stored, k_total * filters, next, scratch[worker]);
      const ForwardArgs position{x_data + g * x_group,
                                 input_rows * channels,
                                 r_data + p * taps,
                                 taps,
                                 channels,
                                 w_p,
                                 filters,
                                 b_data + g * b_group + p * filters,
                                 y_data + (g * batch * positions + p) * filters,
                                 positions * filters,
                                 kLanes,
                                 TilePrefetch<WeightType>(next)};
      ForwardPosition(position, batch);
    }
  });
  return ffi::Error::Success();
}

// The kernel gradient, written as WeightType (F32 or BF16).
template <ffi::DataType WeightType>
ffi::Error KernelGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::S32> rows,
                      ffi::ResultBuffer<WeightType> dw, ffi::ResultBuffer<ffi::F32> db, ffi::ThreadPool pool) {
  const auto xd = x.dimensions(), gd = dy.dimensions(), rd = rows.dimensions(), wd = dw->dimensions(),
             bd = db->dimensions();
  if (xd.size() != 4 || gd.size() != 4 || rd.size() != 2 || wd.size() != 4 || bd.size() != 3) {
    return ffi::Error::InvalidArgument("lc_kernel_grad: bad operand ranks");
  }
  const int64_t groups = wd[0], positions = wd[1], k_total = wd[2], filters = wd[3];
  const int64_t batch = xd[1], input_rows = xd[2], channels = xd[3], taps = rd[1];
  if (gd[1] != batch || gd[2] != positions || gd[3] != filters || rd[0] != positions ||
      k_total != taps * channels || bd[0] != groups || bd[1] != positions || bd[2] != filters) {
    return ffi::Error::InvalidArgument("lc_kernel_grad: operand shapes do not match");
  }
  if (auto e = CheckGroups(groups, {xd[0], gd[0]}); e.failure()) return e;
  const int64_t x_group = GroupStride(xd[0], batch * input_rows * channels);
  const int64_t g_group = GroupStride(gd[0], batch * positions * filters);
  const int64_t units = groups * positions;
  const Split split = SplitWork(pool, units, units * batch * k_total * filters, kPartsPerWorker);
  const int64_t parts = split.parts, workers = split.workers;
  const float *x_data = x.typed_data(), *g_data = dy.typed_data();
  const int32_t* r_data = rows.typed_data();
  auto* dw_data = dw->typed_data();
  float* db_data = db->typed_data();
  AdviseHugePages(dw_data, groups * positions * k_total * filters * sizeof(*dw_data));
  std::vector<std::vector<float>> patches(workers), scratch(workers);
  ParallelParts(parts, workers, pool, [&](int64_t part, int64_t worker) {
    std::vector<float>& patch = patches[worker];
    for (int64_t u = RangeStart(units, parts, part); u < RangeStart(units, parts, part + 1); ++u) {
      const int64_t g = u / positions, p = u % positions;
      const int64_t next = p + 1 < positions ? k_total * filters : 0;
      auto* dw_p = dw_data + (g * positions + p) * k_total * filters;
      float* dw_float;
      if constexpr (WeightType == ffi::BF16) {
        scratch[worker].resize(k_total * filters);
        dw_float = scratch[worker].data();
      } else {
        dw_float = dw_p;
      }
      const float* dy_p = g_data + g * g_group + p * filters;
      KernelGradPosition(x_data + g * x_group, input_rows * channels, r_data + p * taps, taps, channels, dy_p,
                         positions * filters, batch, filters, dw_float, db_data + (g * positions + p) * filters,
                         patch, next != 0 ? dy_p + filters : nullptr, TilePrefetch<WeightType>(next));
      if constexpr (WeightType == ffi::BF16) Narrow(dw_float, k_total * filters, dw_p);
    }
  });
  return ffi::Error::Success();
}

// Per-position scratch of the input gradient.
struct InputGradScratch {
  std::vector<float> dyt;
  std::vector<int64_t> offsets;
};

// Adds one position's contribution to dxt, a (rows, C, B) buffer whose first
// row is input row first_row: copies the position's dy rows transposed to
// (F, B) into scratch.dyt (in cache), tabulates where each of its K*C rows
// goes, then runs the tiles. w_prefetch: see InputGradArgs::prefetch.
void InputGradUnit(const float* dy_p, int64_t dy_batch, const float* w_p, int64_t filters, const int32_t* rows_p,
                   int64_t taps, int64_t channels, int64_t batch, float* dxt, int64_t first_row,
                   InputGradScratch& scratch, int64_t w_prefetch) {
  scratch.dyt.resize(filters * batch);
  Transpose(dy_p, dy_batch, batch, filters, scratch.dyt.data(), batch);
  scratch.offsets.resize(taps * channels);
  for (int64_t t = 0; t < taps; ++t) {
    const int64_t start = (static_cast<int64_t>(rows_p[t]) - first_row) * channels * batch;
    for (int64_t c = 0; c < channels; ++c) scratch.offsets[t * channels + c] = rows_p[t] < 0 ? -1 : start + c * batch;
  }
  const InputGradArgs position{scratch.dyt.data(), batch, w_p, filters, scratch.offsets.data(), dxt, kLanes, w_prefetch};
  InputGradPosition(position, taps * channels);
}

// The input rows [begin, end) that positions [p0, p1) read.
struct RowRange {
  int64_t begin, end;
};

RowRange RowsRead(const int32_t* rows, int64_t taps, int64_t p0, int64_t p1) {
  RowRange range{INT64_MAX, 0};
  for (const int32_t* r = rows + p0 * taps; r < rows + p1 * taps; ++r) {
    if (*r >= 0) range.begin = std::min<int64_t>(range.begin, *r), range.end = std::max<int64_t>(range.end, *r + 1);
  }
  return range.begin < range.end ? range : RowRange{0, 0};
}

// dy (G, B, P, F), w (G, P, K*C, F) -> dx (G, B, R, C), batch-minor inside,
// with weights of type WeightType (F32 or BF16).
// Each thread takes a range of positions (of one group at a time) and adds
// into its own (rows, C, B) buffer covering just the input rows they read, a
// band of the image (neighbouring bands overlap by a window's reach); the
// bands are then summed row block by row block and transposed into dx. The
// order of the sums is fixed, so dx does not depend on thread timing.
template <ffi::DataType WeightType>
ffi::Error InputGrad(ffi::Buffer<ffi::F32> dy, ffi::Buffer<WeightType> w, ffi::Buffer<ffi::S32> rows,
                     ffi::ResultBuffer<ffi::F32> dx, ffi::ThreadPool pool) {
  const auto gd = dy.dimensions(), wd = w.dimensions(), rd = rows.dimensions(), xd = dx->dimensions();
  if (gd.size() != 4 || wd.size() != 4 || rd.size() != 2 || xd.size() != 4) {
    return ffi::Error::InvalidArgument("lc_input_grad: bad operand ranks");
  }
  int64_t groups = xd[0], batch = xd[1];
  const int64_t input_rows = xd[2], channels = xd[3];
  const int64_t positions = wd[1], k_total = wd[2], filters = wd[3], taps = rd[1];
  if (gd[1] != batch || gd[2] != positions || gd[3] != filters || rd[0] != positions ||
      k_total != taps * channels) {
    return ffi::Error::InvalidArgument("lc_input_grad: operand shapes do not match");
  }
  if (auto e = CheckGroups(groups, {gd[0], wd[0]}); e.failure()) return e;
  const int64_t g_group = GroupStride(gd[0], batch * positions * filters);
  const int64_t w_group = GroupStride(wd[0], positions * k_total * filters);
  if (groups > 1 && w_group == 0 && g_group != 0) {
    batch *= groups, groups = 1;  // weights shared by every group: the groups are just more batch rows
  }
  const int64_t image = input_rows * channels;  // elements of one (g, b) slice of dx
  const float* g_data = dy.typed_data();
  const auto* w_data = w.typed_data();
  const int32_t* r_data = rows.typed_data();
  float* dx_data = dx->typed_data();
  AdviseHugePages(dx_data, groups * batch * image * sizeof(float));

  // Bands: every group's positions split into `splits` ranges.
  const int64_t total_work = groups * positions * batch * k_total * filters;
  const int64_t splits = SplitWork(pool, positions, total_work / groups, 1).workers, bands = groups * splits;
  std::vector<RowRange> band_rows(splits);
  for (int64_t q = 0; q < splits; ++q) {
    band_rows[q] = RowsRead(r_data, taps, RangeStart(positions, splits, q), RangeStart(positions, splits, q + 1));
  }
  std::vector<std::unique_ptr<float[]>> band_sums(bands);
  ParallelParts(bands, SplitWork(pool, bands, total_work, 1).workers, pool, [&](int64_t band, int64_t) {
    const int64_t g = band / splits, q = band % splits;
    const int64_t size = (band_rows[q].end - band_rows[q].begin) * channels * batch;
    band_sums[band].reset(new float[size]);
    float* sum = band_sums[band].get();
    AdviseHugePages(sum, size * sizeof(float));
    std::memset(sum, 0, size * sizeof(float));
    InputGradScratch scratch;
    std::vector<float> weights;
    for (int64_t p = RangeStart(positions, splits, q); p < RangeStart(positions, splits, q + 1); ++p) {
      const int64_t next = p + 1 < positions ? k_total * filters : 0;
      const auto* w_stored = w_data + g * w_group + p * k_total * filters;
      const float* w_p = WeightsAsFloat(w_stored, k_total * filters, next, weights);
      InputGradUnit(g_data + g * g_group + p * filters, positions * filters, w_p, filters, r_data + p * taps, taps,
                    channels, batch, sum, band_rows[q].begin, scratch,
                    TilePrefetch<WeightType>(next));
    }
  });

  // Per block of input rows: add the bands that cover it (in band order) into
  // a zeroed block, and transpose that into dx.
  constexpr int64_t kRowsPerBlock = 16;
  const int64_t blocks = (input_rows + kRowsPerBlock - 1) / kRowsPerBlock, block_units = groups * blocks;
  // A few operations per element: weigh each like a multiply-add tile row.
  constexpr int64_t kWorkPerElement = 16;
  const Split block_split = SplitWork(pool, block_units, groups * batch * image * kWorkPerElement, kPartsPerWorker);
  std::vector<std::vector<float>> block_sums(block_split.workers);
  ParallelParts(block_split.parts, block_split.workers, pool, [&](int64_t part, int64_t worker) {
    std::vector<float>& block = block_sums[worker];
    block.resize(kRowsPerBlock * channels * batch);
    for (int64_t u = RangeStart(block_units, block_split.parts, part);
         u < RangeStart(block_units, block_split.parts, part + 1); ++u) {
      const int64_t g = u / blocks, r0 = (u % blocks) * kRowsPerBlock;
      const int64_t r1 = std::min(input_rows, r0 + kRowsPerBlock);
      std::fill(block.begin(), block.begin() + (r1 - r0) * channels * batch, 0.0f);
      for (int64_t q = 0; q < splits; ++q) {
        const int64_t from = std::max(r0, band_rows[q].begin), to = std::min(r1, band_rows[q].end);
        if (from >= to) continue;
        const float* src = band_sums[g * splits + q].get() + (from - band_rows[q].begin) * channels * batch;
        float* dst = block.data() + (from - r0) * channels * batch;
        const int64_t count = (to - from) * channels * batch;
        for (int64_t i = 0; i < count; i += kLanes) {
          const int64_t lanes = std::min<int64_t>(kLanes, count - i);
          Store(dst + i, LoadLanes(dst + i, lanes) + LoadLanes(src + i, lanes), lanes);
        }
      }
      Transpose(block.data(), batch, (r1 - r0) * channels, batch, dx_data + g * batch * image + r0 * channels, image);
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// The handlers, one per weight type: FlaxLocal{Forward,KernelGrad,InputGrad}
// for float32 weights and ...Bf16 for bfloat16 ones.
#define FLAX_LOCAL_HANDLERS(SUFFIX, WEIGHT_TYPE)                                             \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLocalForward##SUFFIX, Forward<WEIGHT_TYPE>,              \
                                ffi::Ffi::Bind()                                             \
                                    .Arg<ffi::Buffer<ffi::F32>>()                            \
                                    .Arg<ffi::Buffer<WEIGHT_TYPE>>()                         \
                                    .Arg<ffi::Buffer<ffi::F32>>()                            \
                                    .Arg<ffi::Buffer<ffi::S32>>()                            \
                                    .Ret<ffi::Buffer<ffi::F32>>()                            \
                                    .Ctx<ffi::ThreadPool>());                                \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLocalKernelGrad##SUFFIX, KernelGrad<WEIGHT_TYPE>,        \
                                ffi::Ffi::Bind()                                             \
                                    .Arg<ffi::Buffer<ffi::F32>>()                            \
                                    .Arg<ffi::Buffer<ffi::F32>>()                            \
                                    .Arg<ffi::Buffer<ffi::S32>>()                            \
                                    .Ret<ffi::Buffer<WEIGHT_TYPE>>()                         \
                                    .Ret<ffi::Buffer<ffi::F32>>()                            \
                                    .Ctx<ffi::ThreadPool>());                                \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLocalInputGrad##SUFFIX, InputGrad<WEIGHT_TYPE>,          \
                                ffi::Ffi::Bind()                                             \
                                    .Arg<ffi::Buffer<ffi::F32>>()                            \
                                    .Arg<ffi::Buffer<WEIGHT_TYPE>>()                         \
                                    .Arg<ffi::Buffer<ffi::S32>>()                            \
                                    .Ret<ffi::Buffer<ffi::F32>>()                            \
                                    .Ctx<ffi::ThreadPool>());

FLAX_LOCAL_HANDLERS(, ffi::F32)
FLAX_LOCAL_HANDLERS(Bf16, ffi::BF16)
