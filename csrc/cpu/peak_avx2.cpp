// peak_avx2.cpp — the AVX2/FMA chains of the peak probe (kilnet/peak.h); built with -mavx2 -mfma
// and called by peak.cpp only when use_avx2() is true. No std:: templates here (their out-of-line
// copies would be shared with the portable translation units), and omp_get_wtime for the clock.
#include "peak_internal.h"

#if defined(KILNET_HAVE_AVX2_BUILD) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <omp.h>

namespace kilnet::cpu::peak_detail {

double fma_chains_avx2(double seconds, double* elapsed) {
  // 12 independent accumulators: enough to cover FMA latency (4-5 cycles) x 2 FMA ports.
  // acc = acc * a + b with a just below 1 converges to b / (1 - a): no overflow, no denormals.
  const __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-6f);
  __m256 c0 = _mm256_set1_ps(0.0f), c1 = _mm256_set1_ps(0.1f), c2 = _mm256_set1_ps(0.2f),
         c3 = _mm256_set1_ps(0.3f), c4 = _mm256_set1_ps(0.4f), c5 = _mm256_set1_ps(0.5f),
         c6 = _mm256_set1_ps(0.6f), c7 = _mm256_set1_ps(0.7f), c8 = _mm256_set1_ps(0.8f),
         c9 = _mm256_set1_ps(0.9f), c10 = _mm256_set1_ps(1.0f), c11 = _mm256_set1_ps(1.1f);
  const long inner = 1L << 16;   // about 0.1-0.3 ms per block on a 3 GHz core
  double flops = 0.0;
  const double t0 = omp_get_wtime();
  double t = t0;
  do {
    for (long i = 0; i < inner; ++i) {
      c0 = _mm256_fmadd_ps(c0, a, b);   c1 = _mm256_fmadd_ps(c1, a, b);
      c2 = _mm256_fmadd_ps(c2, a, b);   c3 = _mm256_fmadd_ps(c3, a, b);
      c4 = _mm256_fmadd_ps(c4, a, b);   c5 = _mm256_fmadd_ps(c5, a, b);
      c6 = _mm256_fmadd_ps(c6, a, b);   c7 = _mm256_fmadd_ps(c7, a, b);
      c8 = _mm256_fmadd_ps(c8, a, b);   c9 = _mm256_fmadd_ps(c9, a, b);
      c10 = _mm256_fmadd_ps(c10, a, b); c11 = _mm256_fmadd_ps(c11, a, b);
    }
    flops += double(inner) * 12.0 * 8.0 * 2.0;
    t = omp_get_wtime();
  } while (t - t0 < seconds);
  *elapsed = t - t0;
  // Fold the accumulators into something observable so the chains cannot be optimized away.
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)),
                           _mm256_add_ps(_mm256_add_ps(c4, c5), _mm256_add_ps(c6, c7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(c8, c9), _mm256_add_ps(c10, c11)));
  float lanes[8];
  _mm256_storeu_ps(lanes, s);
  volatile float sink = lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
  (void)sink;
  return flops;
}

}  // namespace kilnet::cpu::peak_detail
#endif
