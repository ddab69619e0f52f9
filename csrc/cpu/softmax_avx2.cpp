// softmax_avx2.cpp — the softmax row passes on 8 lanes (softmax_internal.h). Compiled with
// -mavx2 -mfma; called only when use_avx2().
// exp8 (vexp_avx2.h) gives exactly 0 below -87.34 and keeps NaN; softmax passes x - max <= 0.
#include <immintrin.h>
#include "softmax_internal.h"
#include "vexp_avx2.h"

namespace kilnet::cpu::softmax_detail {
namespace {

inline double hsum_pd(__m256d v) {
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

}  // namespace

float row_max_avx2(index_t n, const float* x) {
  index_t j = 0;
  float mx = x[0];
  if (n >= 8) {
    __m256 m = _mm256_loadu_ps(x);
    for (j = 8; j + 8 <= n; j += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + j));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
    mx = _mm_cvtss_f32(h);
  }
  for (; j < n; ++j) mx = x[j] > mx ? x[j] : mx;
  return mx;
}

double exp_shift_sum_avx2(index_t n, const float* x, float shift, float* out) {
  const __m256 s = _mm256_set1_ps(shift);
  __m256d acc = _mm256_setzero_pd();
  index_t j = 0;
  // Blocks of up to 128 elements summed in float (16 adds of values <= 1 per lane: ~1e-6
  // relative), then widened to double, so the row total does not drift however long the row.
  while (j + 8 <= n) {
    __m256 blk = _mm256_setzero_ps();
    const index_t end = (n - j >= 128) ? j + 128 : n;
    for (; j + 8 <= end; j += 8) {
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + j), s));
      _mm256_storeu_ps(out + j, e);
      blk = _mm256_add_ps(blk, e);
    }
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_castps256_ps128(blk)));
    acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm256_extractf128_ps(blk, 1)));
  }
  double sum = hsum_pd(acc);
  if (j < n) {   // the tail through the same vector exp, on a padded copy
    alignas(32) float buf[8];
    const index_t k = n - j;
    for (index_t i = 0; i < 8; ++i) buf[i] = i < k ? x[j + i] : shift - 100.f;   // pad: exp -> 0
    const __m256 e = exp8(_mm256_sub_ps(_mm256_load_ps(buf), s));
    _mm256_store_ps(buf, e);
    for (index_t i = 0; i < k; ++i) { out[j + i] = buf[i]; sum += buf[i]; }
  }
  return sum;
}

}  // namespace kilnet::cpu::softmax_detail
