// vact_avx512.h — sigmoid and tanh on 16 floats, shared by the AVX-512 kernels that need them
// (rnn_avx512.cpp, activation_avx512.cpp). Include it ONLY from *_avx512.cpp files; like
// vexp_avx512.h it is in an anonymous namespace, so each file gets its own copy and the linker
// can never hand an AVX-512 body to another build. Same formulas as rnn_avx2.cpp's 8-lane ones.
#pragma once
#include <immintrin.h>
#include "vexp_avx512.h"

namespace {

// 1/d: the 14-bit estimate and one Newton step. d is in [1, inf) (sigmoid) or [4.9e-3, 1]
// (tanh's denominator): no zero or NaN.
inline __m512 recip16(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  return _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.f)));
}

// Below -88.38, e^-x is clamped to e^88.38 (vexp_avx512.h) and rcp14, unlike rcpps, does not
// flush its denormal result: those lanes are set to 0 (what float sigmoid rounds to there).
inline __m512 sigmoid16(__m512 x) {
  const __mmask16 low = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-88.3762626647949f), _CMP_LT_OQ);
  const __m512 s = recip16(_mm512_add_ps(_mm512_set1_ps(1.f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
  return _mm512_mask_mov_ps(s, low, _mm512_setzero_ps());
}

// tanh as the 13/6 rational function of tanh8 (rnn_avx2.cpp) on [-7.9, 7.9], x itself for tiny
// |x|: a few ulp (~3 near |x| = 5, where 1 - tanh^2 magnifies them; activation_avx512.cpp
// has a slower tanh that is ~1 ulp there).
inline __m512 tanh16(__m512 x) {
  const __m512 c = _mm512_set1_ps(7.90531110763549805f);
  // x second: max/min return their second operand when either is NaN, so NaN stays NaN
  const __m512 xc = _mm512_min_ps(c, _mm512_max_ps(_mm512_sub_ps(_mm512_setzero_ps(), c), x));
  const __m512 x2 = _mm512_mul_ps(xc, xc);
  __m512 p = _mm512_set1_ps(-2.76076847742355e-16f);
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(2.00018790482477e-13f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(-8.60467152213735e-11f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(5.12229709037114e-08f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(1.48572235717979e-05f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(6.37261928875436e-04f));
  p = _mm512_fmadd_ps(p, x2, _mm512_set1_ps(4.89352455891786e-03f));
  p = _mm512_mul_ps(p, xc);
  __m512 q = _mm512_set1_ps(1.19825839466702e-06f);
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(1.18534705686654e-04f));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(2.26843463243900e-03f));
  q = _mm512_fmadd_ps(q, x2, _mm512_set1_ps(4.89352518554385e-03f));
  const __m512 r = _mm512_mul_ps(p, recip16(q));
  const __m512 abs_x = _mm512_abs_ps(x);
  return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(abs_x, _mm512_set1_ps(4e-4f), _CMP_LT_OQ), r, x);
}

}  // namespace
