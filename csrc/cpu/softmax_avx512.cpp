// softmax_avx512.cpp — the softmax row passes on 16 lanes (softmax_internal.h). Compiled with the
// AVX-512 flags; called only when use_avx512(). Same blocking as softmax_avx2.cpp; the row's
// tail goes through masked loads and stores instead of a padded copy.
// exp16 (vexp_avx512.h) gives exactly 0 below -87.34 and keeps NaN; softmax passes x - max <= 0.
#include "softmax_internal.h"

#if defined(KILNET_HAVE_AVX512_BUILD) && defined(__AVX512F__)
#include <immintrin.h>
#include "vexp_avx512.h"

// GCC 12's avx512fintrin.h passes _mm512_undefined_ps() as the unused merge source of max/min/
// roundscale and extractf64x4 (inside reduce_add/reduce_max), and -W(maybe-)uninitialized
// reports it at every use: a false alarm.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace kilnet::cpu::softmax_detail {

float row_max_avx512(index_t n, const float* x) {
  index_t j = 0;
  __m512 m = _mm512_set1_ps(x[0]);
  for (; j + 16 <= n; j += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + j));
  if (j < n) {   // the tail's missing lanes keep m's value
    const __mmask16 k = static_cast<__mmask16>((1u << (n - j)) - 1u);
    m = _mm512_mask_max_ps(m, k, m, _mm512_maskz_loadu_ps(k, x + j));
  }
  return _mm512_reduce_max_ps(m);
}

double exp_shift_sum_avx512(index_t n, const float* x, float shift, float* out) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512d acc = _mm512_setzero_pd();
  index_t j = 0;
  // Blocks of up to 256 elements summed in float (16 adds of values <= 1 per lane: ~1e-6
  // relative), then widened to double, so the row total does not drift however long the row.
  while (j + 16 <= n) {
    __m512 blk = _mm512_setzero_ps();
    const index_t end = (n - j >= 256) ? j + 256 : n;
    for (; j + 16 <= end; j += 16) {
      const __m512 e = exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), s));
      _mm512_storeu_ps(out + j, e);
      blk = _mm512_add_ps(blk, e);
    }
    acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(blk)));
    const __m512 hi = _mm512_shuffle_f32x4(blk, blk, 0xEE);   // lanes 8..15 down to 0..7
    acc = _mm512_add_pd(acc, _mm512_cvtps_pd(_mm512_castps512_ps256(hi)));
  }
  double sum = _mm512_reduce_add_pd(acc);
  if (j < n) {   // the tail through the same vector exp, its missing lanes zeroed
    const __mmask16 k = static_cast<__mmask16>((1u << (n - j)) - 1u);
    const __m512 e = _mm512_maskz_mov_ps(k, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + j), s)));
    _mm512_mask_storeu_ps(out + j, k, e);
    alignas(64) float buf[16];
    _mm512_store_ps(buf, e);
    for (index_t i = 0; i < n - j; ++i) sum += buf[i];   // in order, as the AVX2 tail
  }
  return sum;
}

}  // namespace kilnet::cpu::softmax_detail
#endif  // KILNET_HAVE_AVX512_BUILD && __AVX512F__
