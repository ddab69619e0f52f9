// runtime.cpp — what the CPU backend knows about the machine: SIMD level and threads.
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <omp.h>
#include "kilnet/common.h"

namespace kilnet::cpu {

static bool detect_avx2() {
#if defined(KILNET_HAVE_AVX2_BUILD) && (defined(__GNUC__) || defined(__clang__))
  const char* force = std::getenv("KILNET_SIMD");   // KILNET_SIMD=scalar forces the portable path
  if (force && std::strcmp(force, "scalar") == 0) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool use_avx2() {
  static const bool yes = detect_avx2();   // decided once; thread-safe static init
  return yes;
}

const char* simd_level() { return use_avx2() ? "avx2" : "scalar"; }

int get_num_threads() { return omp_get_max_threads(); }

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument("set_num_threads: n must be >= 1, got " + std::to_string(n));
  omp_set_num_threads(n);
}

const char* build_info() {
  static const std::string info = std::string("compiler=") + KILNET_CXX_COMPILER +
                                  " build=" + KILNET_BUILD_TYPE +
                                  " openmp=" + std::to_string(_OPENMP) +
#if defined(KILNET_HAVE_AVX2_BUILD)
                                  " avx2_kernels=compiled";
#else
                                  " avx2_kernels=absent";
#endif
  return info.c_str();
}

}  // namespace kilnet::cpu
