// vexp_avx2.h — e^x on 8 floats, shared by the AVX2 kernels that need it (softmax_avx2.cpp,
// rnn_avx2.cpp). Include it ONLY from *_avx2.cpp files (compiled with -mavx2 -mfma). It is in
// an anonymous namespace: each file gets its own copy, so the linker can never hand an AVX2
// body to the portable build.
//
// Cephes' expf scheme: x = n ln2 + r with n = round(x log2 e) and |r| <= ln2/2 (ln 2 split in a
// high and a low part so r is exact), e^r by a degree-6 polynomial (about 1 ulp), then 2^n put
// straight into the exponent bits. x is clamped to [-87.34, 88.38] so 2^n stays a finite normal
// number (e^88.38 = 2.4e38: 1 + e^x never overflows in a sigmoid); below -87.34 (e^x under the
// smallest normal float) the result is exactly 0; NaN stays NaN.
#pragma once
#include <immintrin.h>

namespace {

inline __m256 exp8(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.33654f), hi = _mm256_set1_ps(88.3762626647949f);
  const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  // max_ps/min_ps return their SECOND operand when either is NaN: x goes second so a NaN
  // stays NaN (a broken input shows up as NaN, never as a quiet number).
  x = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);       // x - n ln2_hi
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);            // - n ln2_lo
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

}  // namespace
