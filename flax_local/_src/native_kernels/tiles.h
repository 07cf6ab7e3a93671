// The register tiles of the three products, and each product for one output
// position (the per-position work the handlers in locally_connected.cc share
// out between threads).
//
// Part of the kernels' single translation unit, locally_connected.cc, which
// includes it once: everything here has internal linkage, as there.

#ifndef FLAX_LOCAL_NATIVE_KERNELS_TILES_H_
#define FLAX_LOCAL_NATIVE_KERNELS_TILES_H_

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "simd.h"

namespace flax_local {
namespace {

// ----------------------------------------------------------------------------
// Tiles. Each product is computed in register tiles acc[rows][NV] of vectors
// (kLanes floats): NV (1 to kMaxTileVectors) vectors along the output's
// contiguous axis, `rows` (up to RowsFor<NV>()) rows across it. Both counts
// are template parameters so the tile lives in registers; the helpers below
// pick them at run time, and a partial last vector is read and written
// through a lane mask.
// ----------------------------------------------------------------------------

// A tile holds its accumulators, its NV column vectors and one broadcast row
// value, so it takes at most kRegisters - 1 - NV accumulators (and at most
// kAccumulators): with more, the compiler spills an accumulator whose store
// and reload every step bound the loop (AVX2 tiles of 3 x 4 vectors ran at
// 40-45% of the FMA peak).
#if defined(FLAX_LOCAL_SIMD_AVX512)
constexpr int kRegisters = 32, kAccumulators = 24, kMaxTileVectors = 4, kHalfTileRows = 16;
#elif defined(FLAX_LOCAL_SIMD_AVX2)
constexpr int kRegisters = 16, kAccumulators = 12, kMaxTileVectors = 2, kHalfTileRows = 12;
#else
// 16-float vectors, two or more registers each.
constexpr int kRegisters = 32, kAccumulators = 12, kMaxTileVectors = 4, kHalfTileRows = 16;
#endif

// Tiles whose columns fit in half a vector (at most kHalfLanes filters, or a
// batch of at most kHalfLanes in the input gradient) use half vectors
// instead, kHalfTileRows rows of them: the same instruction count with no
// lanes wasted, and more rows per tile (benchmarks/EXPERIMENTS.md, "The native
// kernels").

// Calls chunk(integral_constant<NV>, start, last_lanes) for [0, n) in chunks
// of up to kMaxTileVectors vectors, the last one holding last_lanes (1..kLanes).
template <typename Chunk>
void ForEachVectorChunk(int64_t n, const Chunk& chunk) {
  for (int64_t start = 0; start < n; start += kMaxTileVectors * kLanes) {
    const int64_t left = n - start;
    const int64_t vectors = std::min<int64_t>(kMaxTileVectors, (left + kLanes - 1) / kLanes);
    const int64_t last_lanes = left - (vectors - 1) * kLanes;
    const int64_t last = std::min<int64_t>(kLanes, last_lanes);
    if constexpr (kMaxTileVectors >= 4) {
      if (vectors == 4) chunk(std::integral_constant<int, 4>{}, start, last);
      if (vectors == 3) chunk(std::integral_constant<int, 3>{}, start, last);
    }
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
  return std::max(1, std::min(kAccumulators / NV, (kRegisters - 1 - NV) / NV));
}

inline int64_t LanesOf(int j, int nv, int64_t last_lanes) { return j == nv - 1 ? last_lanes : kLanes; }

// Calls tile(integral_constant<bool, partial>), partial = last_lanes < kLanes:
// a tile whose vectors are all whole then has no lane mask, nor a branch on
// one, in its inner loop (benchmarks/EXPERIMENTS.md, "Tile loops without lane
// masks").
template <typename Tile>
void WithLastVector(int64_t last_lanes, const Tile& tile) {
  if (last_lanes == kLanes) {
    tile(std::false_type{});
  } else {
    tile(std::true_type{});
  }
}

// Helpers a tile calls in or around its loop are always inlined: a call left
// out of line that takes the accumulators by reference (StoreTile) makes their
// address escape, and the compiler then keeps them in memory through the whole
// loop (benchmarks/EXPERIMENTS.md, "Tile loops without lane masks").
#define FLAX_LOCAL_TILE_HELPER inline __attribute__((always_inline))

// Vector j of a tile's NV at p: whole, or its last_lanes lanes where it is a
// partial last vector.
template <int NV, bool kPartial>
FLAX_LOCAL_TILE_HELPER Vec LoadVector(const float* p, int j, int64_t last_lanes) {
  return kPartial && j == NV - 1 ? LoadLanes(p, last_lanes) : Load(p);
}

// Stores a tile's accumulators: row i at out + i * row_stride, the last of
// its NV vectors holding last_lanes lanes.
template <int R, int NV>
FLAX_LOCAL_TILE_HELPER void StoreTile(const Vec (&acc)[R][NV], float* out, int64_t row_stride, int64_t last_lanes) {
#pragma GCC unroll 32
  for (int i = 0; i < R; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) Store(out + i * row_stride + j * kLanes, acc[i][j], LanesOf(j, NV, last_lanes));
  }
}

// ----------------------------------------------------------------------------
// Forward: acc[i][j] = bias[f] + sum_k x[b0 + i, row(k), c(k)] * w[k, f],
// f = f0 + kLanes j, reading x in place (taps in the padding are skipped).
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

template <int NV, int RB, bool kPartial>
void ForwardTile(const ForwardArgs& a) {
  Vec acc[RB][NV];
  const int64_t last_lanes = a.last_lanes, channels = a.channels, filters = a.filters, x_batch = a.x_batch;
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) {
    const Vec bias = LoadVector<NV, kPartial>(a.bias + j * kLanes, j, last_lanes);
#pragma GCC unroll 32
    for (int i = 0; i < RB; ++i) acc[i][j] = bias;
  }
  const float* wt = a.w;
  for (int64_t t = 0; t < a.taps; ++t, wt += channels * filters) {
    const int32_t row = a.rows[t];
    if (row < 0) continue;
    const float* xt = a.x + static_cast<int64_t>(row) * channels;
    const float* wc = wt;
    for (int64_t c = 0; c < channels; ++c, wc += filters) {
      Vec wv[NV];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) {
        if (j * kLanes % kLineFloats == 0) PrefetchRead(wc + a.prefetch + j * kLanes);
      }
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) wv[j] = LoadVector<NV, kPartial>(wc + j * kLanes, j, last_lanes);
#pragma GCC unroll 32
      for (int i = 0; i < RB; ++i) {
        const float xv = xt[i * x_batch + c];
#pragma GCC unroll 8
        for (int j = 0; j < NV; ++j) acc[i][j] += xv * wv[j];
      }
    }
  }
  StoreTile(acc, a.y, a.y_batch, kPartial ? last_lanes : kLanes);
}

// ForwardTile for at most kHalfLanes filters, in half vectors.
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
  if (position.filters <= kHalfLanes) {
    ForEachRowBlock<kHalfTileRows>(batch, [&](auto rows, int64_t b0) {
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
      WithLastVector(last_lanes, [&](auto partial) {
        ForwardTile<NV, decltype(rows)::value, decltype(partial)::value>(tile);
      });
    });
  });
}

// ----------------------------------------------------------------------------
// Kernel gradient: acc[i][j] = sum_b patch[b, k0 + i] * dy[b, f], f = f0 + kLanes j,
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
  bool stream;       // write dw with StoreStream (every row of it aligned for whole vectors), not prefetched
};

template <int NV, int RK, bool kPartial>
void KernelGradTile(const KernelGradArgs& a) {
  Vec acc[RK][NV] = {};
  const int64_t k_total = a.k_total, dy_batch = a.dy_batch, last_lanes = a.last_lanes;
  if (!a.stream && a.prefetch != 0) {
    // The tile's RK x NV lines of the next position's gradient.
#pragma GCC unroll 32
    for (int i = 0; i < RK; ++i) {
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) PrefetchWrite(a.dw + a.prefetch + i * a.filters + j * kLanes);
    }
  }
  const float* patch = a.patch;
  const float* dy = a.dy;
  for (int64_t b = 0; b < a.batch; ++b, patch += k_total, dy += dy_batch) {
    Vec gv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) gv[j] = LoadVector<NV, kPartial>(dy + j * kLanes, j, last_lanes);
#pragma GCC unroll 32
    for (int i = 0; i < RK; ++i) {
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] += patch[i] * gv[j];
    }
  }
  if (!a.stream) {
    StoreTile(acc, a.dw, a.filters, kPartial ? last_lanes : kLanes);
    return;
  }
#pragma GCC unroll 32
  for (int i = 0; i < RK; ++i) {
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      float* out = a.dw + i * a.filters + j * kLanes;
      if (kPartial && j == NV - 1) {
        Store(out, acc[i][j], last_lanes);
      } else {
        StoreStream(out, acc[i][j]);
      }
    }
  }
}

// KernelGradTile for at most kHalfLanes filters, in half vectors.
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

// A worker's scratch for gathering windows: the runs of x a window is copied
// from (see KernelGradPosition) and the gathered window.
struct WindowScratch {
  struct Run {
    int64_t k0, length, source;  // source: x offset of the first element, -1 for padding
  };
  std::vector<Run> runs;
  std::vector<float> patch;
};

// dy_next: the next position's dy rows (null: none), asked for before the
// tiles run; dw_prefetch, stream: see KernelGradArgs (stream only where
// filters is a multiple of kLanes and dw is aligned for whole vectors).
void KernelGradPosition(const float* x, int64_t x_batch, const int32_t* rows, int64_t taps, int64_t channels,
                        const float* dy, int64_t dy_batch, int64_t batch, int64_t filters, float* dw, float* db,
                        WindowScratch& scratch, const float* dy_next, int64_t dw_prefetch, bool stream) {
  const int64_t k_total = taps * channels;
  if (dy_next != nullptr) {
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t f = 0; f < filters; f += kLineFloats) PrefetchRead(dy_next + b * dy_batch + f);
    }
  }
  // Taps reading consecutive input rows (a window's row, at dilation 1) are
  // one contiguous run of x: copied as one piece, in vectors. Each vector is
  // stored whole (a masked store costs tens of cycles on some cores, and runs
  // of C = 3 channels end mid-vector): lanes past a run's end land on the
  // slots of the next run, or of the next batch row, which are written
  // after it, or in kLanes slots of slack at the end.
  using Run = WindowScratch::Run;
  std::vector<Run>& runs = scratch.runs;
  std::vector<float>& patch = scratch.patch;
  runs.clear();
  for (int64_t t0 = 0, t1; t0 < taps; t0 = t1) {
    for (t1 = t0 + 1; t1 < taps && (rows[t0] < 0) == (rows[t1] < 0) && (rows[t0] < 0 || rows[t1] == rows[t1 - 1] + 1);) {
      ++t1;
    }
    runs.push_back({t0 * channels, (t1 - t0) * channels, rows[t0] < 0 ? -1 : int64_t{rows[t0]} * channels});
  }
  patch.resize(batch * k_total + kLanes);
  for (int64_t b = 0; b < batch; ++b) {
    for (const Run& run : runs) {
      float* dst = patch.data() + b * k_total + run.k0;
      const float* src = x + b * x_batch + run.source;
      for (int64_t i = 0; i < run.length; i += kLanes) {
        Store(dst + i, run.source < 0 ? Vec{} : LoadLanes(src + i, std::min<int64_t>(kLanes, run.length - i)), kLanes);
      }
    }
  }
  if (filters <= kHalfLanes) {
    ForEachRowBlock<kHalfTileRows>(k_total, [&](auto rows_in_tile, int64_t k0) {
      const KernelGradArgs tile{patch.data() + k0, k_total, batch,   dy,          dy_batch,
                                dw + k0 * filters, filters, filters, dw_prefetch, false};
      KernelGradHalfTile<decltype(rows_in_tile)::value>(tile);
    });
  } else {
    ForEachVectorChunk(filters, [&](auto nv, int64_t f0, int64_t last_lanes) {
      constexpr int NV = decltype(nv)::value;
      ForEachRowBlock<RowsFor<NV>()>(k_total, [&](auto rows_in_tile, int64_t k0) {
        const KernelGradArgs tile{patch.data() + k0,     k_total, batch,      dy + f0,     dy_batch,
                                  dw + k0 * filters + f0, filters, last_lanes, dw_prefetch, stream};
        WithLastVector(last_lanes, [&](auto partial) {
          KernelGradTile<NV, decltype(rows_in_tile)::value, decltype(partial)::value>(tile);
        });
      });
    });
  }
  // db[f] = sum_b dy[b, f], summed in registers a chunk of filters at a time
  // (summed in db itself, each row's sums would wait for the previous row's
  // stores).
  constexpr int64_t kSumVectors = 4, kChunk = kSumVectors * kLanes;
  for (int64_t f0 = 0; f0 < filters; f0 += kChunk) {
    const int64_t n = std::min(kChunk, filters - f0);
    Vec sums[kSumVectors] = {};
    for (int64_t b = 0; b < batch; ++b) {
      const float* row = dy + b * dy_batch + f0;
#pragma GCC unroll 4
      for (int j = 0; j < kSumVectors; ++j) {
        if (j * kLanes < n) sums[j] += LoadLanes(row + j * kLanes, std::min<int64_t>(kLanes, n - j * kLanes));
      }
    }
#pragma GCC unroll 4
    for (int j = 0; j < kSumVectors; ++j) {
      if (j * kLanes < n) Store(db + f0 + j * kLanes, sums[j], std::min<int64_t>(kLanes, n - j * kLanes));
    }
  }
}

// ----------------------------------------------------------------------------
// Input gradient, batch-minor: with dyt = dy laid out (P, F, B) and dxt = dx
// laid out (R, C, B), acc[i][j] = sum_f w[k0 + i, f] * dyt[f, b], b = b0 +
// kLanes j, is the contribution of tap row k0 + i to dxt[row(k), c(k), b], added
// straight from registers: no transposed weights, no scalar scatter. Where
// row k goes in dxt is looked up in a per-position table of offsets (an
// integer division per row is slower: benchmarks/EXPERIMENTS.md, "The native
// kernels").
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

template <int NV, int RK, bool kPartial>
void InputGradTile(const InputGradArgs& a) {
  Vec acc[RK][NV] = {};
  const int64_t filters = a.filters, batch = a.batch, last_lanes = a.last_lanes;
  const float* w = a.w;
  if (a.prefetch != 0) {
    // The tile's RK rows of the next position's weights.
    for (int64_t f = 0; f < RK * filters; f += kLineFloats) PrefetchRead(w + a.prefetch + f);
  }
  const float* dyt = a.dyt;
  for (int64_t f = 0; f < filters; ++f, dyt += batch) {
    Vec gv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) gv[j] = LoadVector<NV, kPartial>(dyt + j * kLanes, j, last_lanes);
#pragma GCC unroll 32
    for (int i = 0; i < RK; ++i) {
      const float wv = w[i * filters + f];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] += wv * gv[j];
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < RK; ++i) {
    if (a.offsets[i] >= 0) {
      float* dst = a.dxt + a.offsets[i];
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) AddStore(dst + j * kLanes, acc[i][j], kPartial ? LanesOf(j, NV, last_lanes) : kLanes);
    }
  }
}

// InputGradTile for a batch of at most kHalfLanes columns, in half vectors.
template <int RK>
void InputGradHalfTile(const InputGradArgs& a) {
  HalfVec acc[RK] = {};
  for (int64_t f = 0; f < a.filters; ++f) {
    if (f * kLineFloats < RK * a.filters) PrefetchRead(a.w + a.prefetch + f * kLineFloats);
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
  if (position.batch <= kHalfLanes) {
    ForEachRowBlock<kHalfTileRows>(k_total, [&](auto rows, int64_t k0) {
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
      WithLastVector(last_lanes, [&](auto partial) {
        InputGradTile<NV, decltype(rows)::value, decltype(partial)::value>(tile);
      });
    });
  });
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

}  // namespace
}  // namespace flax_local

#endif  // FLAX_LOCAL_NATIVE_KERNELS_TILES_H_
