// common.h — types shared by every kernel family.
// Kernels take raw pointers and sizes; all sizes are int64_t so that products never overflow
// 32 bits. Kernels trust their arguments: validation lives in the Python bindings
// (csrc/python/) and in any other front end (the C API).
#pragma once
#include <cstdint>

namespace kilnet {

using index_t = std::int64_t;

// Elementwise activations. Softmax is along the last axis and has its own kernels.
enum class Act : int { Linear = 0, Relu = 1, Sigmoid = 2, Tanh = 3, Softmax = 4 };

}  // namespace kilnet

namespace kilnet::cpu {

// Runtime facts of the CPU backend.
// The SIMD level the kernels run at, decided once per process: the best level that was compiled
// in, that the CPU reports (CPUID) and that the OS saves on context switches (XGETBV), lowered
// (never raised) by KILNET_SIMD=avx512|avx2|scalar.
enum class Simd : int { Scalar = 0, Avx2 = 1, Avx512 = 2 };
Simd simd();
const char* simd_level();          // "avx512", "avx2" or "scalar"
const char* simd_name(Simd s);     // the same names for any level
Simd machine_simd();               // the best level this build and machine could run (ignores KILNET_SIMD)
bool use_avx2();                   // simd() >= Avx2: the AVX2/FMA kernels may run (AVX-512 CPUs too)
bool use_avx512();                 // simd() == Avx512
// The CPU runs a 512-bit FMA as two 256-bit halves (AMD family 19h, Zen 4): AVX-512 brings no
// more flops there, and kernels whose AVX2 version measured faster choose it (gemm.cpp).
bool splits_512bit();
// Outputs that run just ahead of an input modulo 2 MiB go through staging buffers (store_ahead.h):
// on Intel, where such a store stalls the loads after it (measured 2-3.4x slower kernels); not
// on AMD Zen 4, where the layout costs nothing and staging made the same kernels 1.5-2.5x slower.
// KILNET_STAGING=on|off overrides (tests run the staging path on every machine this way).
bool stages_store_ahead();
// Keep freed large blocks for reuse instead of returning them to the OS at every free (glibc's
// mmap and trim thresholds, set once; runtime.cpp says why). The Python module calls it at
// import; the C API leaves the host's allocator alone. KILNET_MALLOC=system, or glibc's own
// MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ in the environment, keep the defaults. Returns
// the policy in words.
const char* tune_malloc();
int  get_num_threads();
void set_num_threads(int n);       // n >= 1; kilnet's own count, kept apart from other libraries'
int  apply_num_threads();          // this thread's OpenMP count made kilnet's: the one it replaced, or 0
void restore_num_threads(int n);   // put back what apply_num_threads replaced (n > 0)
const char* build_info();          // compiler, flags, OpenMP version

}  // namespace kilnet::cpu
