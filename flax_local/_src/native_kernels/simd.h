// Vectors of floats for the kernels: masked loads and stores, prefetches,
// register transposes, and bfloat16 <-> float32 conversions. A vector is one
// machine register: 16 floats with AVX-512, 8 with AVX2, and 16 (held in
// several registers by the compiler) elsewhere.
//
// Part of the kernels' single translation unit, locally_connected.cc, which
// includes it once: everything here has internal linkage, as there.

#ifndef FLAX_LOCAL_NATIVE_KERNELS_SIMD_H_
#define FLAX_LOCAL_NATIVE_KERNELS_SIMD_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

// The instruction sets with a hand-written path here. Without one the kernels
// still build and give the same numbers, through the compiler's generic
// vector code, but run many times slower (benchmarks/EXPERIMENTS.md, "On an
// AVX2-only CPU"; flax_local.native_kernels() says which copy is loaded).
#if defined(__AVX512F__) && defined(__AVX512VL__)  // VL: the 8-lane masked half vectors
#define FLAX_LOCAL_SIMD_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define FLAX_LOCAL_SIMD_AVX2 1
#endif

namespace flax_local {
namespace {

#ifdef FLAX_LOCAL_SIMD_AVX2
constexpr int kLanes = 8;
#else
constexpr int kLanes = 16;
#endif
constexpr int kHalfLanes = kLanes / 2;
// Floats in a cache line: the stride of the prefetches.
constexpr int kLineFloats = 64 / sizeof(float);

typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
// Half vectors, for tiles with at most kHalfLanes columns (see tiles.h).
typedef float HalfVec __attribute__((vector_size(kHalfLanes * sizeof(float))));

inline Vec Load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}

// The first `count` lanes (1..kLanes); the others read as zero, or are left alone.
#if defined(FLAX_LOCAL_SIMD_AVX512)
inline __mmask16 LaneMask(int64_t count) { return static_cast<__mmask16>((1u << count) - 1); }
inline Vec LoadLanes(const float* p, int64_t count) {
  return reinterpret_cast<Vec>(_mm512_maskz_loadu_ps(LaneMask(count), p));
}
inline void Store(float* p, Vec v, int64_t count) {
  _mm512_mask_storeu_ps(p, LaneMask(count), reinterpret_cast<__m512>(v));
}
inline HalfVec LoadHalf(const float* p, int64_t count) {
  return reinterpret_cast<HalfVec>(_mm256_maskz_loadu_ps(static_cast<__mmask8>((1u << count) - 1), p));
}
inline void StoreHalf(float* p, HalfVec v, int64_t count) {
  _mm256_mask_storeu_ps(p, static_cast<__mmask8>((1u << count) - 1), reinterpret_cast<__m256>(v));
}
#elif defined(FLAX_LOCAL_SIMD_AVX2)
// AVX2 masks are vectors: kLanes - count into this table starts `count` ones.
alignas(64) constexpr int32_t kMaskTable[2 * kLanes] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
inline __m256i LaneMask(int64_t count) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTable + kLanes - count));
}
inline __m128i HalfMask(int64_t count) {
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(kMaskTable + kLanes - count));
}
// Full vectors take plain loads and stores (masked stores are slow on some
// cores); only a tile's last, partial vector is masked.
inline Vec LoadLanes(const float* p, int64_t count) {
  if (count == kLanes) return Load(p);
  return reinterpret_cast<Vec>(_mm256_maskload_ps(p, LaneMask(count)));
}
inline void Store(float* p, Vec v, int64_t count) {
  if (count == kLanes) {
    std::memcpy(p, &v, sizeof(Vec));
  } else {
    _mm256_maskstore_ps(p, LaneMask(count), reinterpret_cast<__m256>(v));
  }
}
inline HalfVec LoadHalf(const float* p, int64_t count) {
  return reinterpret_cast<HalfVec>(_mm_maskload_ps(p, HalfMask(count)));
}
inline void StoreHalf(float* p, HalfVec v, int64_t count) {
  _mm_maskstore_ps(p, HalfMask(count), reinterpret_cast<__m128>(v));
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
inline HalfVec LoadHalf(const float* p, int64_t count) {
  HalfVec v = {};
  std::memcpy(&v, p, count * sizeof(float));
  return v;
}
inline void StoreHalf(float* p, HalfVec v, int64_t count) { std::memcpy(p, &v, count * sizeof(float)); }
#endif

inline void AddStore(float* p, Vec v, int64_t count) { Store(p, LoadLanes(p, count) + v, count); }

// Stores a whole vector at p (aligned to sizeof(Vec)) around the caches
// (a non-temporal store): the line is not read first, as a normal store reads
// it, and does not evict data that will be read again. For results larger
// than the cache, written once and not read before the call returns. Such
// stores are weakly ordered: a thread calls StreamFence() before it reports
// its work done.
inline void StoreStream(float* p, Vec v) {
#if defined(FLAX_LOCAL_SIMD_AVX512)
  _mm512_stream_ps(p, reinterpret_cast<__m512>(v));
#elif defined(FLAX_LOCAL_SIMD_AVX2)
  _mm256_stream_ps(p, reinterpret_cast<__m256>(v));
#else
  std::memcpy(p, &v, sizeof(Vec));
#endif
}

inline void StreamFence() {
#if defined(FLAX_LOCAL_SIMD_AVX512) || defined(FLAX_LOCAL_SIMD_AVX2)
  _mm_sfence();
#endif
}

// Asks for the cache line holding p before it is needed. Each position's
// weights (and kernel gradient) are read (written) once per call, straight
// from memory: the tiles ask for the next position's lines as they go through
// the current one's, so the next position's loads do not wait on memory
// where the weights do not fit in cache (benchmarks/EXPERIMENTS.md, "The
// native kernels"). A position's later row blocks ask again for lines already
// on their way: an instruction per line.
inline void PrefetchRead(const void* p) { __builtin_prefetch(p, 0, 3); }
inline void PrefetchWrite(const void* p) { __builtin_prefetch(p, 1, 3); }

// Copies a rows x cols block transposed:
// dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols.
#ifdef FLAX_LOCAL_SIMD_AVX512
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

#ifdef FLAX_LOCAL_SIMD_AVX2
inline void Transpose8(__m256 r[8]) {
  __m256 t[8];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {
    r[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x20);
    t[4 + i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x31);
  }
#pragma GCC unroll 8
  for (int i = 0; i < 8; ++i) r[i] = t[i];
}
#endif

inline void Transpose(const float* src, int64_t src_stride, int64_t rows, int64_t cols, float* dst,
                      int64_t dst_stride) {
#if defined(FLAX_LOCAL_SIMD_AVX512)
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
#elif defined(FLAX_LOCAL_SIMD_AVX2)
  for (int64_t i0 = 0; i0 < rows; i0 += 8) {
    const int64_t nr = std::min<int64_t>(8, rows - i0);
    for (int64_t j0 = 0; j0 < cols; j0 += 8) {
      const int64_t nc = std::min<int64_t>(8, cols - j0);
      __m256 r[8];
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        r[i] = i < nr ? reinterpret_cast<__m256>(LoadLanes(src + (i0 + i) * src_stride + j0, nc)) : _mm256_setzero_ps();
      }
      Transpose8(r);
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        if (j < nc) Store(dst + (j0 + j) * dst_stride + i0, reinterpret_cast<Vec>(r[j]), nr);
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

#if defined(FLAX_LOCAL_SIMD_AVX512) && defined(__AVX512BW__) && defined(__AVX512VL__)
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
#elif defined(FLAX_LOCAL_SIMD_AVX2)
  for (; i + kLanes <= n; i += kLanes) {
    const __m128i narrow = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(narrow), 16)));
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
#elif defined(FLAX_LOCAL_SIMD_AVX2)
  const __m256i one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7fff);
  const __m256i magnitude = _mm256_set1_epi32(0x7fffffff), infinity = _mm256_set1_epi32(0x7f800000);
  const __m256i quiet = _mm256_set1_epi32(0x400000);
  for (; i + kLanes <= n; i += kLanes) {
    const __m256i bits = _mm256_castps_si256(_mm256_loadu_ps(src + i));
    const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(bits, 16), one);
    const __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(half, odd));
    const __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(bits, magnitude), infinity);
    const __m256i top = _mm256_srli_epi32(_mm256_blendv_epi8(rounded, _mm256_or_si256(bits, quiet), nan), 16);
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(top), _mm256_extracti128_si256(top, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), packed);
  }
#endif
  for (; i < n; ++i) dst[i] = FloatToBf16(src[i]);
}

}  // namespace
}  // namespace flax_local

#endif  // FLAX_LOCAL_NATIVE_KERNELS_SIMD_H_
