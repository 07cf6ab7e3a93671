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
// 16-float vectors along the output's contiguous axis. Compiled by
// flax_local/_src/native_build.py with the host's -march.

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

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
inline void Store(float* p, Vec v, int64_t count) { std::memcpy(p, &v, count * sizeof(float)); }
#endif

inline void AddStore(float* p, Vec v, int64_t count) { Store(p, LoadLanes(p, count) + v, count); }

// Runs body(part) for part in [0, parts) on the caller and the pool's threads.
// Parts are claimed from a shared counter, so the caller never waits for a
// task the pool has not started (no deadlock when every pool thread is busy):
// it waits only for parts already claimed, and a task that starts late finds
// none left and returns without touching the caller's frame.
template <typename Body>
void ParallelParts(ffi::ThreadPool& pool, int64_t parts, const Body& body) {
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  auto run = [state, parts, body_ptr = &body] {
    for (int64_t part; (part = state->next.fetch_add(1)) < parts;) {
      (*body_ptr)(part);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), parts) - 1;
  for (int64_t i = 0; i < helpers; ++i) {
    auto task = run;
    pool.Schedule(std::move(task));
  }
  run();
  while (state->done.load(std::memory_order_acquire) < parts) std::this_thread::yield();
}

// Splits [0, n) into `parts` nearly equal ranges.
inline int64_t RangeStart(int64_t n, int64_t parts, int64_t part) { return n * part / parts; }

// How many parts to split `units` positions into: one per pool thread, but no
// more than one per kMinPartWork multiply-adds (a small layer stays on the
// calling thread: handing work to the pool costs microseconds).
constexpr int64_t kMinPartWork = int64_t{1} << 18;

int64_t NumParts(ffi::ThreadPool& pool, int64_t units, int64_t multiply_adds) {
  const int64_t by_work = std::max<int64_t>(1, multiply_adds / kMinPartWork);
  return std::max<int64_t>(1, std::min({units, by_work, std::max<int64_t>(1, pool.num_threads())}));
}

// ----------------------------------------------------------------------------
// Forward: acc[i][j] = bias + sum_k x[b0 + i, row(k)] * w[k, f0 + 16 j]
// ----------------------------------------------------------------------------

struct ForwardArgs {
  const float* x;       // x[g, b0, 0, 0]
  int64_t x_batch;      // stride between batch rows of x
  const int32_t* rows;  // rows[p, :]
  int64_t taps, channels;
  const float* w;       // w[g, p, 0, f0]
  int64_t w_row;        // stride between rows k of w
  const float* bias;    // bias[g, p, f0]
  float* y;             // y[g, b0, p, f0]
  int64_t y_batch;      // stride between batch rows of y
  int64_t last_lanes;   // lanes stored of the last vector (16 unless the F tail)
};

template <int NV, int RB>
void ForwardTile(const ForwardArgs& a) {
  Vec acc[RB][NV];
  for (int j = 0; j < NV; ++j) {
    const Vec bias = Load(a.bias + j * kLanes);
    for (int i = 0; i < RB; ++i) acc[i][j] = bias;
  }
  for (int64_t t = 0; t < a.taps; ++t) {
    const int32_t row = a.rows[t];
    if (row < 0) continue;
    const float* xt = a.x + static_cast<int64_t>(row) * a.channels;
    const float* wt = a.w + t * a.channels * a.w_row;
    for (int64_t c = 0; c < a.channels; ++c) {
      Vec wv[NV];
      for (int j = 0; j < NV; ++j) wv[j] = Load(wt + c * a.w_row + j * kLanes);
      for (int i = 0; i < RB; ++i) {
        const float xv = xt[i * a.x_batch + c];
        for (int j = 0; j < NV; ++j) acc[i][j] += xv * wv[j];
      }
    }
  }
  for (int i = 0; i < RB; ++i) {
    for (int j = 0; j < NV; ++j) {
      Store(a.y + i * a.y_batch + j * kLanes, acc[i][j], j == NV - 1 ? a.last_lanes : kLanes);
    }
  }
}

template <int NV, int RB>
void ForwardRows(const ForwardArgs& a, int64_t rows_left) {
  if constexpr (RB > 0) {
    if (rows_left == RB) {
      ForwardTile<NV, RB>(a);
    } else {
      ForwardRows<NV, RB - 1>(a, rows_left);
    }
  }
}

template <int NV>
void ForwardColumns(ForwardArgs a, int64_t batch) {
  constexpr int RB = std::max(1, kAccumulators / NV);
  for (int64_t b0 = 0; b0 < batch; b0 += RB) {
    ForwardArgs tile = a;
    tile.x = a.x + b0 * a.x_batch;
    tile.y = a.y + b0 * a.y_batch;
    ForwardRows<NV, RB>(tile, std::min<int64_t>(RB, batch - b0));
  }
}

// One position: every filter, every batch row.
void ForwardPosition(ForwardArgs a, int64_t batch, int64_t filters, std::vector<float>& tail) {
  int64_t f0 = 0;
  for (; f0 + 4 * kLanes <= filters; f0 += 4 * kLanes) {
    ForwardArgs cols = a;
    cols.w += f0, cols.bias += f0, cols.y += f0;
    ForwardColumns<4>(cols, batch);
  }
  const int64_t full = (filters - f0) / kLanes;
  if (full > 0) {
    ForwardArgs cols = a;
    cols.w += f0, cols.bias += f0, cols.y += f0;
    if (full == 3) ForwardColumns<3>(cols, batch);
    if (full == 2) ForwardColumns<2>(cols, batch);
    if (full == 1) ForwardColumns<1>(cols, batch);
    f0 += full * kLanes;
  }
  const int64_t rest = filters - f0;
  if (rest > 0) {
    // The last < 16 filters: weights and bias copied zero-padded to 16 lanes.
    const int64_t k_total = a.taps * a.channels;
    tail.assign((k_total + 1) * kLanes, 0.0f);
    for (int64_t k = 0; k < k_total; ++k) std::memcpy(&tail[k * kLanes], a.w + k * a.w_row + f0, rest * 4);
    std::memcpy(&tail[k_total * kLanes], a.bias + f0, rest * 4);
    ForwardArgs cols = a;
    cols.w = tail.data(), cols.w_row = kLanes, cols.bias = tail.data() + k_total * kLanes;
    cols.y += f0, cols.last_lanes = rest;
    ForwardColumns<1>(cols, batch);
  }
}

// ----------------------------------------------------------------------------
// Kernel gradient: acc[i][j] = sum_b x[b, row(k0 + i)] * dy[b, f0 + 16 j]
// ----------------------------------------------------------------------------

constexpr float kZero[1] = {0.0f};

struct KernelGradArgs {
  const float* const* x_k;  // per row k: x[g, 0, row(k), c(k)], or kZero for padding
  const int64_t* x_batch;   // per row k: batch stride, 0 for padding
  int64_t batch;
  const float* dy;  // dy[g, 0, p, f0]
  int64_t dy_batch;
  float* dw;  // dw[g, p, k0, f0]
  int64_t dw_row;
  int64_t last_lanes;
};

template <int NV, int RK>
void KernelGradTile(const KernelGradArgs& a) {
  Vec acc[RK][NV] = {};
  const float* xk[RK];
  int64_t xs[RK];
  for (int i = 0; i < RK; ++i) xk[i] = a.x_k[i], xs[i] = a.x_batch[i];
  for (int64_t b = 0; b < a.batch; ++b) {
    Vec gv[NV];
    for (int j = 0; j < NV; ++j) gv[j] = Load(a.dy + b * a.dy_batch + j * kLanes);
    for (int i = 0; i < RK; ++i) {
      const float xv = xk[i][b * xs[i]];
      for (int j = 0; j < NV; ++j) acc[i][j] += xv * gv[j];
    }
  }
  for (int i = 0; i < RK; ++i) {
    for (int j = 0; j < NV; ++j) {
      Store(a.dw + i * a.dw_row + j * kLanes, acc[i][j], j == NV - 1 ? a.last_lanes : kLanes);
    }
  }
}

template <int NV, int RK>
void KernelGradRows(const KernelGradArgs& a, int64_t rows_left) {
  if constexpr (RK > 0) {
    if (rows_left == RK) {
      KernelGradTile<NV, RK>(a);
    } else {
      KernelGradRows<NV, RK - 1>(a, rows_left);
    }
  }
}

template <int NV>
void KernelGradColumns(KernelGradArgs a, int64_t k_total) {
  constexpr int RK = std::max(1, kAccumulators / NV);
  const float* const* x_k = a.x_k;
  const int64_t* x_batch = a.x_batch;
  for (int64_t k0 = 0; k0 < k_total; k0 += RK) {
    KernelGradArgs tile = a;
    tile.x_k = x_k + k0, tile.x_batch = x_batch + k0;
    tile.dw = a.dw + k0 * a.dw_row;
    KernelGradRows<NV, RK>(tile, std::min<int64_t>(RK, k_total - k0));
  }
}

struct KernelGradScratch {
  std::vector<const float*> x_k;
  std::vector<int64_t> x_batch;
  std::vector<float> tail;
};

void KernelGradPosition(const float* x, int64_t x_batch, const int32_t* rows, int64_t taps, int64_t channels,
                        const float* dy, int64_t dy_batch, int64_t batch, int64_t filters, float* dw, float* db,
                        KernelGradScratch& s) {
  const int64_t k_total = taps * channels;
  s.x_k.resize(k_total);
  s.x_batch.resize(k_total);
  for (int64_t t = 0; t < taps; ++t) {
    for (int64_t c = 0; c < channels; ++c) {
      const bool inside = rows[t] >= 0;
      s.x_k[t * channels + c] = inside ? x + static_cast<int64_t>(rows[t]) * channels + c : kZero;
      s.x_batch[t * channels + c] = inside ? x_batch : 0;
    }
  }
  KernelGradArgs a{s.x_k.data(), s.x_batch.data(), batch, dy, dy_batch, dw, filters, kLanes};
  int64_t f0 = 0;
  for (; f0 + 4 * kLanes <= filters; f0 += 4 * kLanes) {
    KernelGradArgs cols = a;
    cols.dy += f0, cols.dw += f0;
    KernelGradColumns<4>(cols, k_total);
  }
  const int64_t full = (filters - f0) / kLanes;
  if (full > 0) {
    KernelGradArgs cols = a;
    cols.dy += f0, cols.dw += f0;
    if (full == 3) KernelGradColumns<3>(cols, k_total);
    if (full == 2) KernelGradColumns<2>(cols, k_total);
    if (full == 1) KernelGradColumns<1>(cols, k_total);
    f0 += full * kLanes;
  }
  const int64_t rest = filters - f0;
  if (rest > 0) {
    s.tail.assign(batch * kLanes, 0.0f);
    for (int64_t b = 0; b < batch; ++b) std::memcpy(&s.tail[b * kLanes], dy + b * dy_batch + f0, rest * 4);
    KernelGradArgs cols = a;
    cols.dy = s.tail.data(), cols.dy_batch = kLanes, cols.dw += f0, cols.last_lanes = rest;
    KernelGradColumns<1>(cols, k_total);
  }
  for (int64_t f = 0; f < filters; ++f) db[f] = 0.0f;
  for (int64_t b = 0; b < batch; ++b) {
    const float* row = dy + b * dy_batch;
    for (int64_t f = 0; f < filters; ++f) db[f] += row[f];
  }
}

// ----------------------------------------------------------------------------
// Input gradient, batch-minor: with dyt = dy laid out (P, F, B) and dxt = dx
// laid out (R, C, B), acc[i][j] = sum_f w[k0 + i, f] * dyt[f, b0 + 16 j] is
// the contribution of tap row k0 + i to dxt[row(k), c(k), b0 + 16 j], added
// straight from registers: no transposed weights, no scalar scatter.
// ----------------------------------------------------------------------------

struct InputGradArgs {
  const float* dyt;  // dyt[g, p, 0, b0]
  int64_t batch;     // stride between rows f of dyt, and between (row, c) rows of dxt
  const float* w;    // w[g, p, k0, 0]
  int64_t filters;
  const int32_t* rows;  // rows[p, :]
  int64_t channels;
  int64_t k0;
  float* dxt;  // dxt[g, 0, 0, b0]
  int64_t last_lanes;
};

template <int NV, int RK>
void InputGradTile(const InputGradArgs& a) {
  Vec acc[RK][NV] = {};
  for (int64_t f = 0; f < a.filters; ++f) {
    Vec gv[NV];
    for (int j = 0; j < NV; ++j) gv[j] = LoadLanes(a.dyt + f * a.batch + j * kLanes, j == NV - 1 ? a.last_lanes : kLanes);
    for (int i = 0; i < RK; ++i) {
      const float wv = a.w[i * a.filters + f];
      for (int j = 0; j < NV; ++j) acc[i][j] += wv * gv[j];
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < RK; ++i) {
    const int64_t k = a.k0 + i, t = k / a.channels, c = k % a.channels;
    if (a.rows[t] >= 0) {
      float* dst = a.dxt + (static_cast<int64_t>(a.rows[t]) * a.channels + c) * a.batch;
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) AddStore(dst + j * kLanes, acc[i][j], j == NV - 1 ? a.last_lanes : kLanes);
    }
  }
}

template <int NV, int RK>
void InputGradRows(const InputGradArgs& a, int64_t rows_left) {
  if constexpr (RK > 0) {
    if (rows_left == RK) {
      InputGradTile<NV, RK>(a);
    } else {
      InputGradRows<NV, RK - 1>(a, rows_left);
    }
  }
}

template <int NV>
void InputGradBatchTile(InputGradArgs a, int64_t k_total) {
  constexpr int RK = std::min(16, std::max(1, kAccumulators / NV));  // 24 rows of 1 vector spill
  const float* w = a.w;
  for (int64_t k0 = 0; k0 < k_total; k0 += RK) {
    InputGradArgs tile = a;
    tile.w = w + k0 * a.filters, tile.k0 = k0;
    InputGradRows<NV, RK>(tile, std::min<int64_t>(RK, k_total - k0));
  }
}

// Adds position p's contribution to dxt for every batch column.
void InputGradPosition(InputGradArgs a, int64_t k_total) {
  for (int64_t b0 = 0; b0 < a.batch; b0 += 4 * kLanes) {
    const int64_t left = a.batch - b0;
    const int64_t vectors = std::min<int64_t>(4, (left + kLanes - 1) / kLanes);
    InputGradArgs tile = a;
    tile.dyt += b0, tile.dxt += b0;
    tile.last_lanes = std::min<int64_t>(kLanes, left - (vectors - 1) * kLanes);
    if (vectors == 4) InputGradBatchTile<4>(tile, k_total);
    if (vectors == 3) InputGradBatchTile<3>(tile, k_total);
    if (vectors == 2) InputGradBatchTile<2>(tile, k_total);
    if (vectors == 1) InputGradBatchTile<1>(tile, k_total);
  }
}

// A group size: the operand's own, which is 1 (shared) or the output's.
int64_t GroupStride(int64_t group_size, int64_t element_count) { return group_size == 1 ? 0 : element_count; }

ffi::Error CheckGroups(int64_t groups, std::initializer_list<int64_t> operand_groups) {
  for (int64_t g : operand_groups) {
    if (g != 1 && g != groups) return ffi::Error::InvalidArgument("group sizes must be 1 or the output's");
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> bias,
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
  const int64_t parts = NumParts(pool, units, units * batch * k_total * filters);
  const float *x_data = x.typed_data(), *w_data = w.typed_data(), *b_data = bias.typed_data();
  const int32_t* r_data = rows.typed_data();
  float* y_data = y->typed_data();
  ParallelParts(pool, parts, [&](int64_t part) {
    std::vector<float> tail;
    for (int64_t u = RangeStart(units, parts, part); u < RangeStart(units, parts, part + 1); ++u) {
      const int64_t g = u / positions, p = u % positions;
      ForwardArgs a{x_data + g * x_group,
                    input_rows * channels,
                    r_data + p * taps,
                    taps,
                    channels,
                    w_data + g * w_group + p * k_total * filters,
                    filters,
                    b_data + g * b_group + p * filters,
                    y_data + (g * batch * positions + p) * filters,
                    positions * filters,
                    kLanes};
      ForwardPosition(a, batch, filters, tail);
    }
  });
  return ffi::Error::Success();
}

ffi::Error KernelGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::S32> rows,
                      ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> db, ffi::ThreadPool pool) {
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
  const int64_t parts = NumParts(pool, units, units * batch * k_total * filters);
  const float *x_data = x.typed_data(), *g_data = dy.typed_data();
  const int32_t* r_data = rows.typed_data();
  float *dw_data = dw->typed_data(), *db_data = db->typed_data();
  ParallelParts(pool, parts, [&](int64_t part) {
    KernelGradScratch scratch;
    for (int64_t u = RangeStart(units, parts, part); u < RangeStart(units, parts, part + 1); ++u) {
      const int64_t g = u / positions, p = u % positions;
      KernelGradPosition(x_data + g * x_group, input_rows * channels, r_data + p * taps, taps, channels,
                         g_data + g * g_group + p * filters, positions * filters, batch, filters,
                         dw_data + (g * positions + p) * k_total * filters, db_data + (g * positions + p) * filters,
                         scratch);
    }
  });
  return ffi::Error::Success();
}

// dyt (G, P, F, B), w (G, P, K*C, F) -> dxt (G, R, C, B).
ffi::Error InputGrad(ffi::Buffer<ffi::F32> dyt, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::S32> rows,
                     ffi::ResultBuffer<ffi::F32> dxt, ffi::ThreadPool pool) {
  const auto gd = dyt.dimensions(), wd = w.dimensions(), rd = rows.dimensions(), xd = dxt->dimensions();
  if (gd.size() != 4 || wd.size() != 4 || rd.size() != 2 || xd.size() != 4) {
    return ffi::Error::InvalidArgument("lc_input_grad: bad operand ranks");
  }
  const int64_t groups = xd[0], input_rows = xd[1], channels = xd[2], batch = xd[3];
  const int64_t positions = wd[1], k_total = wd[2], filters = wd[3], taps = rd[1];
  if (gd[1] != positions || gd[2] != filters || gd[3] != batch || rd[0] != positions ||
      k_total != taps * channels) {
    return ffi::Error::InvalidArgument("lc_input_grad: operand shapes do not match");
  }
  if (auto e = CheckGroups(groups, {gd[0], wd[0]}); e.failure()) return e;
  const int64_t g_group = GroupStride(gd[0], positions * filters * batch);
  const int64_t w_group = GroupStride(wd[0], positions * k_total * filters);
  const int64_t x_size = input_rows * channels * batch;
  const int64_t units = groups * positions;
  const int64_t parts = NumParts(pool, units, units * batch * k_total * filters);
  const float *g_data = dyt.typed_data(), *w_data = w.typed_data();
  const int32_t* r_data = rows.typed_data();
  float* dx_data = dxt->typed_data();
  // Positions overlap in dx, so each part adds into its own buffer (part 0
  // into dx itself) and the buffers are summed at the end.
  std::vector<std::vector<float>> partial(parts - 1);
  ParallelParts(pool, parts, [&](int64_t part) {
    float* out = dx_data;
    if (part > 0) {
      partial[part - 1].assign(groups * x_size, 0.0f);
      out = partial[part - 1].data();
    } else {
      std::memset(dx_data, 0, groups * x_size * sizeof(float));
    }
    for (int64_t u = RangeStart(units, parts, part); u < RangeStart(units, parts, part + 1); ++u) {
      const int64_t g = u / positions, p = u % positions;
      InputGradArgs a{g_data + g * g_group + p * filters * batch,
                      batch,
                      w_data + g * w_group + p * k_total * filters,
                      filters,
                      r_data + p * taps,
                      channels,
                      0,
                      out + g * x_size,
                      kLanes};
      InputGradPosition(a, k_total);
    }
  });
  for (const auto& buffer : partial) {
    for (int64_t i = 0; i < groups * x_size; ++i) dx_data[i] += buffer[i];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLocalForward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLocalKernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(FlaxLocalInputGrad, InputGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ctx<ffi::ThreadPool>());
