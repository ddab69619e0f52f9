// peak_internal.h — the per-thread FMA chains behind kilnet::cpu::fma_peak_gflops (peak.cpp),
// the AVX2 ones in peak_avx2.cpp. Not a public header.
#pragma once
#include "kilnet/peak.h"

namespace kilnet::cpu {

namespace peak_detail {
// One thread's chains for about `seconds`: returns the flops done and sets *elapsed (seconds).
double fma_chains_portable(double seconds, double* elapsed);
#if defined(KILNET_HAVE_AVX2_BUILD)
double fma_chains_avx2(double seconds, double* elapsed);   // peak_avx2.cpp; only when use_avx2()
#endif
#if defined(KILNET_HAVE_AVX512_BUILD)
double fma_chains_avx512(double seconds, double* elapsed);   // peak_avx512.cpp; only when use_avx512()
#endif
#if defined(KILNET_HAVE_AVX512BF16_BUILD)
double dot_chains_avx512bf16(double seconds, double* elapsed);   // peak_avx512bf16.cpp
#endif
}  // namespace peak_detail

}  // namespace kilnet::cpu
