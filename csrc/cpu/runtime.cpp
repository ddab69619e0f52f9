// runtime.cpp — what the CPU backend knows about the machine: SIMD level and threads.
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <omp.h>

#include <atomic>
#include "kilnet/common.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define KILNET_X86_PROBE 1
#endif

namespace kilnet::cpu {

namespace {

#if defined(KILNET_X86_PROBE)
// XCR0: which register states the OS saves on a context switch. A CPUID feature bit alone is
// not enough: an OS (or hypervisor) that does not enable the zmm state faults on the first
// AVX-512 instruction.
unsigned long long xcr0() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE)) return 0;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<unsigned long long>(hi) << 32) | lo;
}
#endif

Simd detect_machine() {
#if defined(KILNET_X86_PROBE) && defined(KILNET_HAVE_AVX2_BUILD)
  const unsigned long long x = xcr0();
  const bool ymm_state = (x & 0x6) == 0x6;                 // SSE + AVX state
  const bool zmm_state = ymm_state && (x & 0xE0) == 0xE0;  // opmask + ZMM_Hi256 + Hi16_ZMM
  __builtin_cpu_init();
  const bool avx2 = ymm_state && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (!avx2) return Simd::Scalar;
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (zmm_state && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    return Simd::Avx512;
#else
  (void)zmm_state;
#endif
  return Simd::Avx2;
#else
  return Simd::Scalar;
#endif
}

Simd detect() {
  const Simd best = machine_simd();
  // KILNET_SIMD lowers the level, never raises it (a level the machine lacks would crash);
  // an unknown value is ignored here and warned about by the Python package.
  const char* force = std::getenv("KILNET_SIMD");
  if (!force) return best;
  Simd want = best;
  if (std::strcmp(force, "scalar") == 0) want = Simd::Scalar;
  else if (std::strcmp(force, "avx2") == 0) want = Simd::Avx2;
  else if (std::strcmp(force, "avx512") == 0) want = Simd::Avx512;
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

}  // namespace

Simd machine_simd() {
  static const Simd s = detect_machine();   // decided once; thread-safe static init
  return s;
}

Simd simd() {
  static const Simd s = detect();
  return s;
}

bool use_avx2() { return simd() != Simd::Scalar; }
bool use_avx512() { return simd() == Simd::Avx512; }

bool splits_512bit() {
#if defined(KILNET_X86_PROBE)
  static const bool yes = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
    const bool amd = b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;   // "AuthenticAMD"
    if (!amd || !__get_cpuid(1, &a, &b, &c, &d)) return false;
    const unsigned family = ((a >> 8) & 0xF) + (((a >> 8) & 0xF) == 0xF ? (a >> 20) & 0xFF : 0);
    return family == 0x19;   // Zen 3 has no AVX-512; Zen 5 (1Ah) has full 512-bit datapaths
  }();
  return yes;
#else
  return false;
#endif
}

// glibc returns a freed block of more than its trim threshold at the top of the heap to the OS,
// and serves blocks above its mmap threshold (dynamic, up to 32 MiB) by fresh mappings. A step
// that allocates and frees ~20 MB of arrays (attention's out, dq, dk, dv, the seed gradient)
// then page-faults and zeroes all of it again every step: 27.9 -> 22.4 ms at T256, 2 threads on
// a Zen 4 with the thresholds below. Arrays up to 32 MiB now come from the heap, and up to
// 128 MiB of free heap top is kept for the next step.
const char* tune_malloc() {
  static const char* policy = [] {
    const char* env = std::getenv("KILNET_MALLOC");
    if (env && std::strcmp(env, "system") == 0) return "system (KILNET_MALLOC=system)";
#if defined(__GLIBC__)
    if (std::getenv("MALLOC_MMAP_THRESHOLD_") || std::getenv("MALLOC_TRIM_THRESHOLD_"))
      return "system (glibc thresholds set in the environment)";
    const bool ok = mallopt(M_MMAP_THRESHOLD, 32 << 20) == 1 && mallopt(M_TRIM_THRESHOLD, 128 << 20) == 1;
    return ok ? "kept (glibc: mmap threshold 32 MiB, trim threshold 128 MiB)" : "system (mallopt refused)";
#else
    return "system (not glibc)";
#endif
  }();
  return policy;
}

bool stages_store_ahead() {
  static const bool yes = [] {
    const char* env = std::getenv("KILNET_STAGING");
    if (env && std::strcmp(env, "on") == 0) return true;
    if (env && std::strcmp(env, "off") == 0) return false;
#if defined(KILNET_X86_PROBE)
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return false;
    return b == 0x756e6547u && d == 0x49656e69u && c == 0x6c65746eu;   // "GenuineIntel"
#else
    return false;
#endif
  }();
  return yes;
}

const char* simd_name(Simd s) {
  switch (s) {
    case Simd::Avx512: return "avx512";
    case Simd::Avx2: return "avx2";
    default: return "scalar";
  }
}

const char* simd_level() { return simd_name(simd()); }

// kilnet's own thread count (0: never set, the OpenMP default). OpenMP keeps the count per
// thread and per runtime, and a process has one libgomp: PyTorch's wheel ships libgomp.so.1 too,
// so torch.set_num_threads(1) used to set kilnet's kernels to one thread as well, silently. The
// Python bindings apply this count around each kernel (apply_num_threads, restore_num_threads).
namespace {
std::atomic<int> g_threads{0};
}

int get_num_threads() {
  const int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : omp_get_max_threads();
}

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("set_num_threads: n must be >= 1, got " + std::to_string(n));
  g_threads.store(n, std::memory_order_relaxed);
  omp_set_num_threads(n);
}

int apply_num_threads() {
  const int n = g_threads.load(std::memory_order_relaxed), had = omp_get_max_threads();
  if (n <= 0 || had == n) return 0;
  omp_set_num_threads(n);
  return had;
}

void restore_num_threads(int n) {
  if (n > 0) omp_set_num_threads(n);
}

const char* build_info() {
  static const std::string info = std::string("compiler=") + KILNET_CXX_COMPILER +
                                  " build=" + KILNET_BUILD_TYPE +
                                  " openmp=" + std::to_string(_OPENMP) +
#if defined(KILNET_HAVE_AVX2_BUILD)
                                  " avx2_kernels=compiled" +
#else
                                  " avx2_kernels=absent" +
#endif
#if defined(KILNET_HAVE_AVX512_BUILD)
                                  " avx512_kernels=compiled" +
#else
                                  " avx512_kernels=absent" +
#endif
                                  " machine=" + simd_name(machine_simd());
  return info.c_str();
}

}  // namespace kilnet::cpu
