// activation_avx512.cpp — sigmoid and tanh forward on 16 lanes (activation_internal.h): the
// polynomial exp of the recurrent kernels (vact_avx512.h), exact 0/1/+-1 saturation, NaN kept,
// and a tanh that stays ~1 ulp near saturation. The row's tail goes through masked loads and
// stores. Compiled with the AVX-512 flags; activation.cpp calls it only when use_avx512().
#include "activation_internal.h"

#if defined(KILNET_HAVE_AVX512_BUILD) && defined(__AVX512F__)
#include <immintrin.h>
#include "parallel.h"
#include "vact_avx512.h"

// GCC 12's avx512fintrin.h passes _mm512_undefined_ps() as the unused merge source of max/min/
// rcp14/roundscale, and -Wmaybe-uninitialized reports it at every use: a false alarm.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kilnet::cpu::activation_detail {
namespace {

// tanh to ~1 ulp: the rational tanh16 below |x| = 0.625, else sign(x) (1 - 2 / (e^{2|x|} + 1)),
// whose small term carries the error (so 1 - tanh^2, the gradient, keeps its relative accuracy
// near saturation, where tanh16's few ulp became ~1e-3 of it). NaN stays NaN.
inline __m512 tanh16_accurate(__m512 x) {
  const __m512 a = _mm512_abs_ps(x), one = _mm512_set1_ps(1.f);
  const __m512 e = exp16(_mm512_add_ps(a, a));   // <= e^88.38: finite
  const __m512 big = _mm512_fnmadd_ps(_mm512_set1_ps(2.f), recip16(_mm512_add_ps(e, one)), one);
  const __m512 sbig = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(   // (x & sign) | big
      _mm512_castps_si512(x), _mm512_set1_epi32(int(0x80000000u)), _mm512_castps_si512(big), 0xEA));
  return _mm512_mask_mov_ps(sbig, _mm512_cmp_ps_mask(a, _mm512_set1_ps(0.625f), _CMP_LT_OQ), tanh16(x));
}

// 16 values from i on (fewer at the end of the array).
template <class F>
inline void block16(index_t n, index_t i, const float* x, float* y, F f) {
  const __mmask16 k = n - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1u);
  _mm512_mask_storeu_ps(y + i, k, f(_mm512_maskz_loadu_ps(k, x + i)));
}

// serial: on the calling thread only, no parallel region (a caller that already runs in parallel)
template <class F>
void blocks(index_t n, const float* x, float* y, F f, bool serial) {
  const index_t nb = (n + 15) / 16;
  if (serial) {
    for (index_t b = 0; b < nb; ++b) block16(n, 16 * b, x, y, f);
    return;
  }
#pragma omp parallel for num_threads(threads_for(n, 1 << 14)) schedule(static)
  for (index_t b = 0; b < nb; ++b) block16(n, 16 * b, x, y, f);
}

}  // namespace

bool forward_avx512(Act act, index_t n, const float* x, float* y, bool serial) {
  switch (act) {
    case Act::Sigmoid: blocks(n, x, y, [](__m512 v) { return sigmoid16(v); }, serial); return true;
    case Act::Tanh: blocks(n, x, y, [](__m512 v) { return tanh16_accurate(v); }, serial); return true;
    default: return false;
  }
}

}  // namespace kilnet::cpu::activation_detail
#endif  // KILNET_HAVE_AVX512_BUILD && __AVX512F__
