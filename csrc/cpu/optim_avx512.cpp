// optim_avx512.cpp — the optimizer updates on 16 lanes (optim_internal.h), called only when
// use_avx512(). optim.cpp's loops are built without AVX flags (4 lanes); these do the same
// operations in the same order, so the results are identical bit for bit.
// No fused multiply-add may appear: this file is compiled with -mfma, and GCC contracts a*b + c
// written with the generic _mm512_mul_ps/_mm512_add_ps into an FMA (one rounding instead of
// two). The *_round_ps forms with _MM_FROUND_CUR_DIRECTION are opaque builtins that it never
// contracts, so every operation below rounds exactly as the portable loop's.
#include "optim_internal.h"

#if defined(KILNET_HAVE_AVX512_BUILD) && defined(__AVX512F__)
#include <immintrin.h>

// GCC 12's avx512fintrin.h passes _mm512_undefined_ps() as the unused merge source of the
// *_round_ps builtins, and -Wmaybe-uninitialized reports it at every use: a false alarm.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kilnet::cpu::optim_detail {
namespace {

constexpr int kR = _MM_FROUND_CUR_DIRECTION;
inline __m512 add(__m512 a, __m512 b) { return _mm512_add_round_ps(a, b, kR); }
inline __m512 sub(__m512 a, __m512 b) { return _mm512_sub_round_ps(a, b, kR); }
inline __m512 mul(__m512 a, __m512 b) { return _mm512_mul_round_ps(a, b, kR); }
inline __m512 div(__m512 a, __m512 b) { return _mm512_div_round_ps(a, b, kR); }
inline __m512 sqrt(__m512 a) { return _mm512_sqrt_round_ps(a, kR); }
inline __m512 bc(float x) { return _mm512_set1_ps(x); }

// Calls body(k, i) for i = 0, 16, ... < n, k the lanes in range (all 16 but in the tail);
// loads and stores go through k, so the tail reads and writes nothing past n.
template <class F>
inline void for_lanes(index_t n, F&& body) {
  index_t i = 0;
  for (; i + 16 <= n; i += 16) body(__mmask16(0xFFFF), i);
  if (i < n) body(static_cast<__mmask16>((1u << (n - i)) - 1u), i);
}

inline __m512 ld(__mmask16 k, const float* p) { return _mm512_maskz_loadu_ps(k, p); }
inline void st(__mmask16 k, float* p, __m512 v) { _mm512_mask_storeu_ps(p, k, v); }

template <bool Centered, bool Momentum>
void rmsprop_loop(index_t n, float* p, const float* g, float* v, float* a, float* mom, float lr, float rho,
                  float momentum, float eps, float wdl) {
  const __m512 rho_v = bc(rho), c = bc(1.f - rho), eps_v = bc(eps), lr_v = bc(lr), wdl_v = bc(wdl),
               mo = bc(momentum);
  for_lanes(n, [&](__mmask16 k, index_t i) {
    const __m512 gi = ld(k, g + i);
    __m512 pi = ld(k, p + i);
    pi = sub(pi, mul(pi, wdl_v));
    const __m512 vi = add(mul(rho_v, ld(k, v + i)), mul(mul(c, gi), gi));   // rho v + c g g
    st(k, v + i, vi);
    __m512 den = add(vi, eps_v);
    if constexpr (Centered) {
      const __m512 ai = add(mul(rho_v, ld(k, a + i)), mul(c, gi));
      st(k, a + i, ai);
      den = add(sub(vi, mul(ai, ai)), eps_v);
    }
    const __m512 inc = div(mul(lr_v, gi), sqrt(den));
    if constexpr (Momentum) {
      const __m512 mi = add(mul(mo, ld(k, mom + i)), inc);
      st(k, mom + i, mi);
      st(k, p + i, sub(pi, mi));
    } else {
      st(k, p + i, sub(pi, inc));
    }
  });
}

}  // namespace

void sgd_avx512(index_t n, float* p, const float* g, float* vel, float lr, float momentum, bool nesterov) {
  const __m512 lr_v = bc(lr), mo = bc(momentum);
  if (!vel) {
    for_lanes(n, [&](__mmask16 k, index_t i) { st(k, p + i, sub(ld(k, p + i), mul(lr_v, ld(k, g + i)))); });
    return;
  }
  for_lanes(n, [&](__mmask16 k, index_t i) {
    const __m512 lg = mul(lr_v, ld(k, g + i));
    const __m512 v = sub(mul(mo, ld(k, vel + i)), lg);
    st(k, vel + i, v);
    st(k, p + i, add(ld(k, p + i), nesterov ? sub(mul(mo, v), lg) : v));
  });
}

void adam_avx512(index_t n, float* p, const float* g, float* m, float* v, float alpha, float c1, float c2,
                 float eps, bool decay, float wdl) {
  const __m512 a = bc(alpha), c1v = bc(c1), c2v = bc(c2), e = bc(eps), w = bc(wdl);
  for_lanes(n, [&](__mmask16 k, index_t i) {
    const __m512 gi = ld(k, g + i), m0 = ld(k, m + i), v0 = ld(k, v + i);
    const __m512 mi = add(m0, mul(sub(gi, m0), c1v));
    const __m512 vi = add(v0, mul(sub(mul(gi, gi), v0), c2v));
    st(k, m + i, mi);
    st(k, v + i, vi);
    __m512 pi = ld(k, p + i);
    if (decay) pi = sub(pi, mul(pi, w));
    st(k, p + i, sub(pi, div(mul(a, mi), add(sqrt(vi), e))));
  });
}

void rmsprop_avx512(index_t n, float* p, const float* g, float* v, float* avg, float* mom, float lr, float rho,
                    float momentum, float eps, float wdl) {
  if (avg && mom) rmsprop_loop<true, true>(n, p, g, v, avg, mom, lr, rho, momentum, eps, wdl);
  else if (avg) rmsprop_loop<true, false>(n, p, g, v, avg, mom, lr, rho, momentum, eps, wdl);
  else if (mom) rmsprop_loop<false, true>(n, p, g, v, avg, mom, lr, rho, momentum, eps, wdl);
  else rmsprop_loop<false, false>(n, p, g, v, avg, mom, lr, rho, momentum, eps, wdl);
}

void adagrad_avx512(index_t n, float* p, const float* g, float* acc, float lr, float eps, float wdl) {
  const __m512 lr_v = bc(lr), e = bc(eps), w = bc(wdl);
  for_lanes(n, [&](__mmask16 k, index_t i) {
    const __m512 gi = ld(k, g + i);
    const __m512 ai = add(ld(k, acc + i), mul(gi, gi));
    st(k, acc + i, ai);
    const __m512 pi = ld(k, p + i);
    st(k, p + i, sub(sub(pi, mul(pi, w)), div(mul(lr_v, gi), sqrt(add(ai, e)))));
  });
}

}  // namespace kilnet::cpu::optim_detail
#endif  // KILNET_HAVE_AVX512_BUILD && __AVX512F__
