// The library's exported symbols: one FFI handler per target, and the helpers
// native_build.py calls, each forwarding to the copy of the kernels
// (locally_connected.cc compiled once per instruction set, see CMakeLists.txt)
// chosen for this CPU when the library is loaded.
//
// Copies, best first: "native" (-march=native, only in a source build that
// asked for it), "avx512" (AVX-512 F/VL/BW/DQ/CD), "avx2" (AVX2 with FMA),
// "generic" (the target's baseline). The best copy this CPU runs is chosen at
// load; FlaxLocalSelectPath lets the loader pick a lower one (for tests, or
// FLAX_LOCAL_NATIVE_PATH) before any handler runs.

#include <cstdint>
#include <cstring>

#include "xla/ffi/api/c_api.h"

#define FLAX_LOCAL_EXPORT extern "C" __attribute__((visibility("default")))

// Each copy's symbols (defined in locally_connected.cc with its suffix).
#define FLAX_LOCAL_DECLARE_VARIANT(V)                                                  \
  extern "C" XLA_FFI_Error* FlaxLocalForward_##V(XLA_FFI_CallFrame*);                  \
  extern "C" XLA_FFI_Error* FlaxLocalKernelGrad_##V(XLA_FFI_CallFrame*);               \
  extern "C" XLA_FFI_Error* FlaxLocalInputGrad_##V(XLA_FFI_CallFrame*);                \
  extern "C" XLA_FFI_Error* FlaxLocalForwardBf16_##V(XLA_FFI_CallFrame*);              \
  extern "C" XLA_FFI_Error* FlaxLocalKernelGradBf16_##V(XLA_FFI_CallFrame*);           \
  extern "C" XLA_FFI_Error* FlaxLocalInputGradBf16_##V(XLA_FFI_CallFrame*);            \
  extern "C" int64_t FlaxLocalStreamThresholdBytes_##V();                              \
  extern "C" const char* FlaxLocalVectorPath_##V();

#define FLAX_LOCAL_VARIANT_ENTRY(V, SUPPORTED)                                                            \
  {#V,                                                                                                    \
   SUPPORTED,                                                                                             \
   FlaxLocalVectorPath_##V,                                                                               \
   FlaxLocalStreamThresholdBytes_##V,                                                                     \
   {FlaxLocalForward_##V, FlaxLocalKernelGrad_##V, FlaxLocalInputGrad_##V, FlaxLocalForwardBf16_##V,      \
    FlaxLocalKernelGradBf16_##V, FlaxLocalInputGradBf16_##V}}

namespace {

using Handler = XLA_FFI_Error* (*)(XLA_FFI_CallFrame*);

struct Variant {
  const char* name;
  bool (*supported)();  // whether this CPU runs the copy's instructions
  const char* (*vector_path)();
  int64_t (*stream_threshold_bytes)();
  Handler handlers[6];  // forward, kernel_grad, input_grad, then the same for bfloat16 weights
};

#if defined(__x86_64__) || defined(__i386__)
bool Avx2Supported() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
         __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
}
bool Avx512Supported() {
  return Avx2Supported() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512cd");
}
#endif
bool AlwaysSupported() { return true; }

}  // namespace

#ifdef FLAX_LOCAL_HAVE_NATIVE
FLAX_LOCAL_DECLARE_VARIANT(native)
namespace {
// A -march=native copy runs on the machine that built it: it is offered
// where this CPU has at least the features of the vector path it compiled.
bool NativeSupported() {
  const char* path = FlaxLocalVectorPath_native();
#if defined(__x86_64__) || defined(__i386__)
  if (std::strcmp(path, "avx512") == 0) return Avx512Supported();
  if (std::strcmp(path, "avx2") == 0) return Avx2Supported();
#endif
  return true;
}
}  // namespace
#endif
#ifdef FLAX_LOCAL_HAVE_AVX512
FLAX_LOCAL_DECLARE_VARIANT(avx512)
#endif
#ifdef FLAX_LOCAL_HAVE_AVX2
FLAX_LOCAL_DECLARE_VARIANT(avx2)
#endif
FLAX_LOCAL_DECLARE_VARIANT(generic)

namespace {

const Variant kVariants[] = {
#ifdef FLAX_LOCAL_HAVE_NATIVE
    FLAX_LOCAL_VARIANT_ENTRY(native, NativeSupported),
#endif
#ifdef FLAX_LOCAL_HAVE_AVX512
    FLAX_LOCAL_VARIANT_ENTRY(avx512, Avx512Supported),
#endif
#ifdef FLAX_LOCAL_HAVE_AVX2
    FLAX_LOCAL_VARIANT_ENTRY(avx2, Avx2Supported),
#endif
    FLAX_LOCAL_VARIANT_ENTRY(generic, AlwaysSupported),
};

const Variant* Best() {
  for (const Variant& variant : kVariants) {
    if (variant.supported()) return &variant;
  }
  return &kVariants[sizeof(kVariants) / sizeof(kVariants[0]) - 1];
}

// Chosen when the library is loaded, before any handler can run.
const Variant* selected = Best();

}  // namespace

FLAX_LOCAL_EXPORT XLA_FFI_Error* FlaxLocalForward(XLA_FFI_CallFrame* frame) { return selected->handlers[0](frame); }
FLAX_LOCAL_EXPORT XLA_FFI_Error* FlaxLocalKernelGrad(XLA_FFI_CallFrame* frame) { return selected->handlers[1](frame); }
FLAX_LOCAL_EXPORT XLA_FFI_Error* FlaxLocalInputGrad(XLA_FFI_CallFrame* frame) { return selected->handlers[2](frame); }
FLAX_LOCAL_EXPORT XLA_FFI_Error* FlaxLocalForwardBf16(XLA_FFI_CallFrame* frame) {
  return selected->handlers[3](frame);
}
FLAX_LOCAL_EXPORT XLA_FFI_Error* FlaxLocalKernelGradBf16(XLA_FFI_CallFrame* frame) {
  return selected->handlers[4](frame);
}
FLAX_LOCAL_EXPORT XLA_FFI_Error* FlaxLocalInputGradBf16(XLA_FFI_CallFrame* frame) {
  return selected->handlers[5](frame);
}

// The size above which the kernel gradient (float32) is written around the
// cache: $FLAX_LOCAL_STREAM_BYTES, or the last-level cache's size.
FLAX_LOCAL_EXPORT int64_t FlaxLocalStreamThresholdBytes() { return selected->stream_threshold_bytes(); }

// The vector code of the chosen copy: "avx512", "avx2" or "generic".
FLAX_LOCAL_EXPORT const char* FlaxLocalVectorPath() { return selected->vector_path(); }

// The chosen copy's name: "native", "avx512", "avx2" or "generic".
FLAX_LOCAL_EXPORT const char* FlaxLocalVariant() { return selected->name; }

// The copies this library holds, best first, comma-separated, with "!" after
// the name of each one this CPU cannot run (e.g. "avx512!,avx2,generic").
FLAX_LOCAL_EXPORT const char* FlaxLocalVariants() {
  static char names[64] = "";
  if (names[0] == '\0') {
    char built[64] = "";
    for (const Variant& variant : kVariants) {
      if (built[0] != '\0') std::strcat(built, ",");
      std::strcat(built, variant.name);
      if (!variant.supported()) std::strcat(built, "!");
    }
    std::memcpy(names, built, sizeof(names));
  }
  return names;
}

// Chooses the copy named `name`: 0 on success, 1 when the library has no such
// copy, 2 when this CPU cannot run it (the choice is then unchanged).
// Not thread-safe with running handlers: call it before registering them.
FLAX_LOCAL_EXPORT int FlaxLocalSelectPath(const char* name) {
  for (const Variant& variant : kVariants) {
    if (std::strcmp(variant.name, name) != 0) continue;
    if (!variant.supported()) return 2;
    selected = &variant;
    return 0;
  }
  return 1;
}
