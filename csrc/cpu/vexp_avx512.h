// vexp_avx512.h — e^x on 16 floats, shared by the AVX-512 kernels that need it (softmax_avx512.cpp,
// rnn_avx512.cpp, ...). Include it ONLY from *_avx512.cpp files (compiled with the AVX-512 flags).
// It is in an anonymous namespace: each file gets its own copy, so the linker can never hand an
// AVX-512 body to the portable or AVX2 build.
//
// The same scheme and constants as exp8 (vexp_avx2.h): x = n ln2 + r with n = round(x log2 e),
// e^r by a degree-6 polynomial (about 1 ulp), x clamped to [-87.34, 88.38], exactly 0 below
// -87.34, NaN stays NaN. 2^n goes in through vscalefps (one instruction for the convert, add and
// shift of the AVX2 version); n is in [-126, 127] after the clamp, so p * 2^n is the same normal
// number either way.
#pragma once
#include <immintrin.h>

namespace {

inline __m512 exp16(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.33654f), hi = _mm512_set1_ps(88.3762626647949f);
  const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  // max_ps/min_ps return their SECOND operand when either is NaN: x goes second so NaN stays NaN.
  x = _mm512_min_ps(hi, _mm512_max_ps(lo, x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);       // x - n ln2_hi
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);            // - n ln2_lo
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_maskz_scalef_ps(static_cast<__mmask16>(~under), p, n);
}

}  // namespace
