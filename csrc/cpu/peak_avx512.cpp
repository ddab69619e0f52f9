// peak_avx512.cpp — the AVX-512 chains of the peak probe (kilnet/peak.h); built with the AVX-512
// flags and called by peak.cpp only when use_avx512() is true. Same shape as peak_avx2.cpp with
// zmm registers: 24 independent accumulators cover a 4-cycle FMA latency on 2 FMA ports with
// room to spare, and leave 8 registers free so the compiler never spills one.
#include "peak_internal.h"

#if defined(KILNET_HAVE_AVX512_BUILD) && defined(__AVX512F__)
#include <immintrin.h>
#include <omp.h>

namespace kilnet::cpu::peak_detail {

double fma_chains_avx512(double seconds, double* elapsed) {
  constexpr int kChains = 24;
  const __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-6f);
  __m512 c[kChains];
  for (int j = 0; j < kChains; ++j) c[j] = _mm512_set1_ps(0.05f * float(j));
  const long inner = 1L << 15;
  double flops = 0.0;
  const double t0 = omp_get_wtime();
  double t = t0;
  do {
    for (long i = 0; i < inner; ++i) {
#pragma GCC unroll 24
      for (int j = 0; j < kChains; ++j) c[j] = _mm512_fmadd_ps(c[j], a, b);
    }
    flops += double(inner) * kChains * 16.0 * 2.0;
    t = omp_get_wtime();
  } while (t - t0 < seconds);
  *elapsed = t - t0;
  __m512 s = c[0];
  for (int j = 1; j < kChains; ++j) s = _mm512_add_ps(s, c[j]);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, s);
  float sum = 0.f;
  for (float v : lanes) sum += v;
  volatile float sink = sum;   // observed: the chains cannot be removed
  (void)sink;
  return flops;
}

}  // namespace kilnet::cpu::peak_detail
#endif
