// gelu_avx512.cpp — GELU on 16 floats at a time (compiled with the AVX-512 flags; gelu.cpp calls
// it only when use_avx512()). The formulas of gelu_avx2.cpp: erf by Abramowitz & Stegun 7.1.26
// (|error| <= 1.5e-7), e^x from vexp_avx512.h, tanh(u) = 1 - 2 / (e^{2u} + 1). The divisions
// are a 14-bit reciprocal estimate and one Newton step (~1 ulp; vdivps on zmm issues once per
// ~10 cycles, which made the AVX2 version's exact erf divider-bound). The row's tail goes through
// masked loads and stores. NaN stays NaN.
#include "gelu_internal.h"

#if defined(KILNET_HAVE_AVX512_BUILD) && defined(__AVX512F__)
#include <immintrin.h>
#include "parallel.h"
#include "bf16_round_avx512.h"
#include "vexp_avx512.h"

// GCC 12's avx512fintrin.h passes _mm512_undefined_ps() as the unused merge source of max/min/
// rcp14/roundscale, and -Wmaybe-uninitialized reports it at every use: a false alarm.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kilnet::cpu::gelu_detail {
namespace {
const float kInvSqrt2 = 0.70710678118654752f, kInvSqrt2Pi = 0.39894228040143268f;
const float kSqrt2OverPi = 0.79788456080286536f, kCubic = 0.044715f;

// 1/d for d >= 1 (erf's 1 + 0.33 |z|, tanh's e^{2u} + 1, which may be +inf: 1/inf = 0 is
// kept, where the Newton step would give inf * 0 = NaN).
inline __m512 recip16(__m512 d) {
  const __m512 r = _mm512_rcp14_ps(d);
  const __m512 nr = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.f)));
  return _mm512_mask_mov_ps(nr, _mm512_cmp_ps_mask(r, _mm512_setzero_ps(), _CMP_EQ_OQ), r);
}

// erf(z) and e^{-z^2} for the same z (the backward reuses the exponential).
inline __m512 erf16(__m512 z, __m512* gauss) {
  const __m512 a = _mm512_abs_ps(z);
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 t = recip16(_mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), a, one));
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  p = _mm512_mul_ps(p, t);
  const __m512 g = exp16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(a, a)));
  *gauss = g;
  // sign(z) (1 - p e^{-z^2}): z's sign bit put on the magnitude (ternary logic: (z & -0) | r)
  const __m512 r = _mm512_fnmadd_ps(p, g, one);
  return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(z), _mm512_set1_epi32(int(0x80000000u)),
                                                       _mm512_castps_si512(r), 0xEA));
}

inline __m512 tanh16(__m512 u) {
  const __m512 one = _mm512_set1_ps(1.f);
  const __m512 e = exp16(_mm512_add_ps(u, u));
  return _mm512_fnmadd_ps(_mm512_set1_ps(2.f), recip16(_mm512_add_ps(e, one)), one);
}

inline __m512 fwd16(__m512 x, bool approx) {
  const __m512 half_x = _mm512_mul_ps(_mm512_set1_ps(0.5f), x);
  const __m512 one = _mm512_set1_ps(1.f);
  if (approx) {
    const __m512 x3 = _mm512_mul_ps(_mm512_mul_ps(x, x), x);
    const __m512 u = _mm512_mul_ps(_mm512_set1_ps(kSqrt2OverPi), _mm512_fmadd_ps(_mm512_set1_ps(kCubic), x3, x));
    return _mm512_mul_ps(half_x, _mm512_add_ps(one, tanh16(u)));
  }
  __m512 g;
  return _mm512_mul_ps(half_x, _mm512_add_ps(one, erf16(_mm512_mul_ps(x, _mm512_set1_ps(kInvSqrt2)), &g)));
}

inline __m512 deriv16(__m512 x, bool approx) {
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.f);
  if (approx) {
    const __m512 x2 = _mm512_mul_ps(x, x);
    const __m512 u = _mm512_mul_ps(_mm512_set1_ps(kSqrt2OverPi),
                                   _mm512_fmadd_ps(_mm512_set1_ps(kCubic), _mm512_mul_ps(x2, x), x));
    const __m512 t = tanh16(u);
    const __m512 du = _mm512_mul_ps(_mm512_set1_ps(kSqrt2OverPi), _mm512_fmadd_ps(_mm512_set1_ps(3 * kCubic), x2, one));
    // 0.5 (1 + t) + 0.5 x (1 - t^2) du
    return _mm512_fmadd_ps(_mm512_mul_ps(half, x), _mm512_mul_ps(_mm512_fnmadd_ps(t, t, one), du),
                           _mm512_mul_ps(half, _mm512_add_ps(one, t)));
  }
  __m512 g;   // e^{-x^2/2}
  const __m512 e = erf16(_mm512_mul_ps(x, _mm512_set1_ps(kInvSqrt2)), &g);
  return _mm512_fmadd_ps(_mm512_mul_ps(x, g), _mm512_set1_ps(kInvSqrt2Pi), _mm512_mul_ps(half, _mm512_add_ps(one, e)));
}
}  // namespace

void forward_avx512(index_t n, const float* x, float* y, bool approximate, bool serial) {
  const index_t blocks = (n + 15) / 16;
  const auto block = [&](index_t b) {
    const index_t i = 16 * b;
    const __mmask16 k = n - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(y + i, k, fwd16(_mm512_maskz_loadu_ps(k, x + i), approximate));
  };
  if (serial) {   // no parallel region at all: an inactive nested one still cost ~1 us per call
    for (index_t b = 0; b < blocks; ++b) block(b);
    return;
  }
#pragma omp parallel for num_threads(threads_for(n, 1 << 13)) schedule(static)
  for (index_t b = 0; b < blocks; ++b) block(b);
}

void forward_bf16_avx512(index_t n, const float* x, std::uint16_t* y, bool approximate) {
  const index_t blocks = (n + 15) / 16;
#pragma omp parallel for num_threads(threads_for(n, 1 << 13)) schedule(static)
  for (index_t b = 0; b < blocks; ++b) {
    const index_t i = 16 * b;
    const __mmask16 k = n - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm256_mask_storeu_epi16(y + i, k, bf16_detail::round_to_bf16(fwd16(_mm512_maskz_loadu_ps(k, x + i), approximate)));
  }
}

namespace {
inline __m512 widen16(__mmask16 k, const std::uint16_t* x) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, x)), 16));
}
}  // namespace

void forward_bf16_in_avx512(index_t n, const std::uint16_t* x, std::uint16_t* y, bool approximate) {
  const index_t blocks = (n + 15) / 16;
#pragma omp parallel for num_threads(threads_for(n, 1 << 13)) schedule(static)
  for (index_t b = 0; b < blocks; ++b) {
    const index_t i = 16 * b;
    const __mmask16 k = n - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm256_mask_storeu_epi16(y + i, k, bf16_detail::round_to_bf16(fwd16(widen16(k, x + i), approximate)));
  }
}

void backward_bf16_x_avx512(index_t n, const std::uint16_t* x, const float* dy, float* dx, bool approximate) {
  const index_t blocks = (n + 15) / 16;
#pragma omp parallel for num_threads(threads_for(n, 1 << 13)) schedule(static)
  for (index_t b = 0; b < blocks; ++b) {
    const index_t i = 16 * b;
    const __mmask16 k = n - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(dx + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + i), deriv16(widen16(k, x + i), approximate)));
  }
}

void backward_bf16_xdx_avx512(index_t n, const std::uint16_t* x, const float* dy, std::uint16_t* dx, bool approximate) {
  const index_t blocks = (n + 15) / 16;
#pragma omp parallel for num_threads(threads_for(n, 1 << 13)) schedule(static)
  for (index_t b = 0; b < blocks; ++b) {
    const index_t i = 16 * b;
    const __mmask16 k = n - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1u);
    const __m512 g = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + i), deriv16(widen16(k, x + i), approximate));
    _mm256_mask_storeu_epi16(dx + i, k, bf16_detail::round_to_bf16(g));
  }
}

void backward_avx512(index_t n, const float* x, const float* dy, float* dx, bool approximate, bool serial) {
  const index_t blocks = (n + 15) / 16;
  const auto block = [&](index_t b) {
    const index_t i = 16 * b;
    const __mmask16 k = n - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(dx + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + i),
                                                   deriv16(_mm512_maskz_loadu_ps(k, x + i), approximate)));
  };
  if (serial) {
    for (index_t b = 0; b < blocks; ++b) block(b);
    return;
  }
#pragma omp parallel for num_threads(threads_for(n, 1 << 13)) schedule(static)
  for (index_t b = 0; b < blocks; ++b) block(b);
}

}  // namespace kilnet::cpu::gelu_detail
#endif  // KILNET_HAVE_AVX512_BUILD && __AVX512F__
