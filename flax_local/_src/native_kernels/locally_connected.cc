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
// vectors (16 floats with AVX-512, 8 with AVX2; half vectors where a tile has
// at most half a vector of columns) along the output's contiguous axis (tiles.h; vector helpers in simd.h, the split
// between threads in threads.h). Compiled once per instruction set by
// CMakeLists.txt, with FLAX_LOCAL_VARIANT naming the copy: every exported
// symbol ends in _<variant>, and dispatch.cc picks one copy at load.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <vector>

#include "simd.h"
#include "threads.h"
#include "tiles.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#ifndef FLAX_LOCAL_VARIANT
#error "compile with -DFLAX_LOCAL_VARIANT=<name> (see CMakeLists.txt)"
#endif
#define FLAX_LOCAL_PASTE(name, variant) name##_##variant
#define FLAX_LOCAL_EXPAND_PASTE(name, variant) FLAX_LOCAL_PASTE(name, variant)
// name_<variant>: this copy's name for an exported symbol.
#define FLAX_LOCAL_SYMBOL(name) FLAX_LOCAL_EXPAND_PASTE(name, FLAX_LOCAL_VARIANT)

namespace flax_local {
namespace {

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
  const int64_t dw_bytes = groups * positions * k_total * filters * sizeof(*dw_data);
  AdviseHugePages(dw_data, dw_bytes);
  // bfloat16 gradients are narrowed from float32 scratch, which stays in cache.
  const bool stream = WeightType == ffi::F32 && WritesAroundCache(reinterpret_cast<const float*>(dw_data), dw_bytes, filters);
  std::vector<WindowScratch> windows(workers);
  std::vector<std::vector<float>> scratch(workers);
  ParallelParts(parts, workers, pool, [&](int64_t part, int64_t worker) {
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
                         windows[worker], next != 0 ? dy_p + filters : nullptr, TilePrefetch<WeightType>(next), stream);
      if constexpr (WeightType == ffi::BF16) Narrow(dw_float, k_total * filters, dw_p);
    }
    if (stream) StreamFence();
  });
  return ffi::Error::Success();
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
}  // namespace flax_local

// The handlers, one per weight type: FlaxLocal{Forward,KernelGrad,InputGrad}
// for float32 weights and ...Bf16 for bfloat16 ones (each with this copy's suffix).
#define FLAX_LOCAL_HANDLERS(SUFFIX, WEIGHT_TYPE)                                                              \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(FLAX_LOCAL_SYMBOL(FlaxLocalForward##SUFFIX), flax_local::Forward<WEIGHT_TYPE>, \
                                ffi::Ffi::Bind()                                                              \
                                    .Arg<ffi::Buffer<ffi::F32>>()                                             \
                                    .Arg<ffi::Buffer<WEIGHT_TYPE>>()                                          \
                                    .Arg<ffi::Buffer<ffi::F32>>()                                             \
                                    .Arg<ffi::Buffer<ffi::S32>>()                                             \
                                    .Ret<ffi::Buffer<ffi::F32>>()                                             \
                                    .Ctx<ffi::ThreadPool>());                                                 \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(FLAX_LOCAL_SYMBOL(FlaxLocalKernelGrad##SUFFIX), flax_local::KernelGrad<WEIGHT_TYPE>, \
                                ffi::Ffi::Bind()                                                              \
                                    .Arg<ffi::Buffer<ffi::F32>>()                                             \
                                    .Arg<ffi::Buffer<ffi::F32>>()                                             \
                                    .Arg<ffi::Buffer<ffi::S32>>()                                             \
                                    .Ret<ffi::Buffer<WEIGHT_TYPE>>()                                          \
                                    .Ret<ffi::Buffer<ffi::F32>>()                                             \
                                    .Ctx<ffi::ThreadPool>());                                                 \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(FLAX_LOCAL_SYMBOL(FlaxLocalInputGrad##SUFFIX), flax_local::InputGrad<WEIGHT_TYPE>, \
                                ffi::Ffi::Bind()                                                              \
                                    .Arg<ffi::Buffer<ffi::F32>>()                                             \
                                    .Arg<ffi::Buffer<WEIGHT_TYPE>>()                                          \
                                    .Arg<ffi::Buffer<ffi::S32>>()                                             \
                                    .Ret<ffi::Buffer<ffi::F32>>()                                             \
                                    .Ctx<ffi::ThreadPool>());

FLAX_LOCAL_HANDLERS(, ffi::F32)
FLAX_LOCAL_HANDLERS(Bf16, ffi::BF16)

// The size above which the kernel gradient (float32) is written around the
// cache: $FLAX_LOCAL_STREAM_BYTES, or the last-level cache's size.
extern "C" int64_t FLAX_LOCAL_SYMBOL(FlaxLocalStreamThresholdBytes)() { return flax_local::StreamThresholdBytes(); }

// The vector code the kernels were built with: "avx512", "avx2" or "generic"
// (the compiler's own code for 16-float vectors, correct but many times
// slower; "auto" does not pick the kernels then).
extern "C" const char* FLAX_LOCAL_SYMBOL(FlaxLocalVectorPath)() {
#if defined(FLAX_LOCAL_SIMD_AVX512)
  return "avx512";
#elif defined(FLAX_LOCAL_SIMD_AVX2)
  return "avx2";
#else
  return "generic";
#endif
}
