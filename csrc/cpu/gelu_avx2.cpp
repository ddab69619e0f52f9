// gelu_avx2.cpp — GELU on 8 floats at a time (compiled with -mavx2 -mfma only).
// erf by Abramowitz & Stegun 7.1.26 (|error| <= 1.5e-7, below float32's resolution of the
// result 1 + erf), e^x from vexp_avx2.h; tanh(u) = 1 - 2 / (e^{2u} + 1). NaN stays NaN.
#include <immintrin.h>
#include <cmath>
#include "gelu_internal.h"
#include "parallel.h"
#include "vexp_avx2.h"

namespace kilnet::cpu::gelu_detail {
namespace {
const float kInvSqrt2 = 0.70710678118654752f, kInvSqrt2Pi = 0.39894228040143268f;
const float kSqrt2OverPi = 0.79788456080286536f, kCubic = 0.044715f;

// erf(z) and e^{-z^2} for the same z (the backward reuses the exponential).
inline __m256 erf8(__m256 z, __m256* gauss) {
  const __m256 sign = _mm256_and_ps(z, _mm256_set1_ps(-0.f));
  const __m256 a = _mm256_andnot_ps(_mm256_set1_ps(-0.f), z);
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.3275911f), a, one));
  __m256 p = _mm256_set1_ps(1.061405429f);
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-1.453152027f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(1.421413741f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(-0.284496736f));
  p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(0.254829592f));
  p = _mm256_mul_ps(p, t);
  const __m256 g = exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(a, a)));
  *gauss = g;
  return _mm256_or_ps(sign, _mm256_fnmadd_ps(p, g, one));   // sign(z) (1 - p e^{-z^2})
}

inline __m256 tanh8(__m256 u) {
  const __m256 one = _mm256_set1_ps(1.f);
  const __m256 e = exp8(_mm256_add_ps(u, u));
  return _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.f), _mm256_add_ps(e, one)));
}

inline __m256 fwd8(__m256 x, bool approx) {
  const __m256 half_x = _mm256_mul_ps(_mm256_set1_ps(0.5f), x);
  const __m256 one = _mm256_set1_ps(1.f);
  if (approx) {
    const __m256 x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
    const __m256 u = _mm256_mul_ps(_mm256_set1_ps(kSqrt2OverPi), _mm256_fmadd_ps(_mm256_set1_ps(kCubic), x3, x));
    return _mm256_mul_ps(half_x, _mm256_add_ps(one, tanh8(u)));
  }
  __m256 g;
  return _mm256_mul_ps(half_x, _mm256_add_ps(one, erf8(_mm256_mul_ps(x, _mm256_set1_ps(kInvSqrt2)), &g)));
}

inline __m256 deriv8(__m256 x, bool approx) {
  const __m256 half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.f);
  if (approx) {
    const __m256 x2 = _mm256_mul_ps(x, x);
    const __m256 u = _mm256_mul_ps(_mm256_set1_ps(kSqrt2OverPi), _mm256_fmadd_ps(_mm256_set1_ps(kCubic),
                                                                                 _mm256_mul_ps(x2, x), x));
    const __m256 t = tanh8(u);
    const __m256 du = _mm256_mul_ps(_mm256_set1_ps(kSqrt2OverPi), _mm256_fmadd_ps(_mm256_set1_ps(3 * kCubic), x2, one));
    // 0.5 (1 + t) + 0.5 x (1 - t^2) du
    return _mm256_fmadd_ps(_mm256_mul_ps(half, x), _mm256_mul_ps(_mm256_fnmadd_ps(t, t, one), du),
                           _mm256_mul_ps(half, _mm256_add_ps(one, t)));
  }
  __m256 g;   // e^{-x^2/2}
  const __m256 e = erf8(_mm256_mul_ps(x, _mm256_set1_ps(kInvSqrt2)), &g);
  return _mm256_fmadd_ps(_mm256_mul_ps(x, g), _mm256_set1_ps(kInvSqrt2Pi), _mm256_mul_ps(half, _mm256_add_ps(one, e)));
}

inline float fwd1(float x, bool approx) {
  return approx ? 0.5f * x * (1.f + std::tanh(kSqrt2OverPi * (x + kCubic * x * x * x)))
                : 0.5f * x * (1.f + std::erf(x * kInvSqrt2));
}

inline float deriv1(float x, bool approx) {
  if (approx) {
    const float t = std::tanh(kSqrt2OverPi * (x + kCubic * x * x * x));
    return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * kSqrt2OverPi * (1.f + 3 * kCubic * x * x);
  }
  return 0.5f * (1.f + std::erf(x * kInvSqrt2)) + x * std::exp(-0.5f * x * x) * kInvSqrt2Pi;
}
}  // namespace

void forward_avx2(index_t n, const float* x, float* y, bool approximate, bool serial) {
  const index_t blocks = n / 8;
  const auto block = [&](index_t b) { _mm256_storeu_ps(y + 8 * b, fwd8(_mm256_loadu_ps(x + 8 * b), approximate)); };
  if (serial) {   // no parallel region at all: an inactive nested one still cost ~1 us per call
    for (index_t b = 0; b < blocks; ++b) block(b);
  } else {
#pragma omp parallel for num_threads(threads_for(n, 1 << 13)) schedule(static)
    for (index_t b = 0; b < blocks; ++b) block(b);
  }
  for (index_t i = 8 * blocks; i < n; ++i) y[i] = fwd1(x[i], approximate);
}

void backward_avx2(index_t n, const float* x, const float* dy, float* dx, bool approximate, bool serial) {
  const index_t blocks = n / 8;
  const auto block = [&](index_t b) {
    _mm256_storeu_ps(dx + 8 * b, _mm256_mul_ps(_mm256_loadu_ps(dy + 8 * b), deriv8(_mm256_loadu_ps(x + 8 * b), approximate)));
  };
  if (serial) {
    for (index_t b = 0; b < blocks; ++b) block(b);
  } else {
#pragma omp parallel for num_threads(threads_for(n, 1 << 13)) schedule(static)
    for (index_t b = 0; b < blocks; ++b) block(b);
  }
  for (index_t i = 8 * blocks; i < n; ++i) dx[i] = dy[i] * deriv1(x[i], approximate);
}

}  // namespace kilnet::cpu::gelu_detail
