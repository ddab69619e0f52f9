// peak_avx512bf16.cpp — the VDPBF16PS chains of the bfloat16 peak probe (kilnet/peak.h); built
// with -mavx512bf16 and called by peak.cpp only when cpu_has_avx512bf16(). As peak_avx512.cpp:
// 24 independent accumulators, more than latency x throughput on any core that has the
// instruction.
#include "peak_internal.h"

#if defined(KILNET_HAVE_AVX512BF16_BUILD) && defined(__AVX512BF16__)
#include <immintrin.h>
#include <omp.h>

namespace kilnet::cpu::peak_detail {

double dot_chains_avx512bf16(double seconds, double* elapsed) {
  constexpr int kChains = 24;
  // pairs of (1.0, 1.0) times pairs of (2^-25, 2^-25): each step adds 2^-24 to a lane
  const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0x33003300);
  __m512 c[kChains];
  for (int j = 0; j < kChains; ++j) c[j] = _mm512_set1_ps(0.05f * float(j));
  const long inner = 1L << 15;
  double flops = 0.0;
  const double t0 = omp_get_wtime();
  double t = t0;
  do {
    for (long i = 0; i < inner; ++i) {
#pragma GCC unroll 24
      for (int j = 0; j < kChains; ++j) c[j] = _mm512_dpbf16_ps(c[j], a, b);
    }
    flops += double(inner) * kChains * 16.0 * 4.0;   // 16 lanes x 2 products x 2 flops
    t = omp_get_wtime();
  } while (t - t0 < seconds);
  *elapsed = t - t0;
  __m512 s = c[0];
  for (int j = 1; j < kChains; ++j) s = _mm512_add_ps(s, c[j]);
  volatile float sink = _mm512_reduce_add_ps(s);   // observed: the chains cannot be removed
  (void)sink;
  return flops;
}

}  // namespace kilnet::cpu::peak_detail
#endif
