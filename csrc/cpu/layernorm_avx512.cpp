// layernorm_avx512.cpp — the per-row work of layer normalization on 16 lanes (built with the
// AVX-512 flags; layernorm.cpp calls it only when use_avx512() is true). The same passes and
// sums as layernorm_avx2.cpp; a row's tail of fewer than 16 values goes through masked loads
// and stores (masked lanes load 0), so every value takes the same arithmetic.
// No std:: templates here (their out-of-line copies would be shared with the portable units).
#include "layernorm_internal.h"

#if defined(KILNET_HAVE_AVX512_BUILD) && defined(__AVX512F__)
#include <immintrin.h>
#include <cmath>

// GCC 12's avx512fintrin.h passes an undefined vector as the unused merge source of some
// builtins (inside reduce_add), and -W(maybe-)uninitialized reports it: a false alarm.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace kilnet::cpu::layernorm_detail {

namespace {

inline __mmask16 lanes(index_t C, index_t j) {   // the lanes of [j, j + 16) inside the row
  return C - j >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (C - j)) - 1u);
}
inline __m512 load(const float* p, __mmask16 k) { return _mm512_maskz_loadu_ps(k, p); }

}  // namespace

void row_forward_avx512(index_t C, const float* x, const float* gamma, const float* beta, float eps, bool rms,
                        float* mean, float* invstd, float* y) {
  // sum: four accumulators over 64 values, then 16 at a time with the masked tail
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
  index_t j = 0;
  for (; j + 64 <= C; j += 64) {
    s0 = _mm512_add_ps(s0, _mm512_loadu_ps(x + j));
    s1 = _mm512_add_ps(s1, _mm512_loadu_ps(x + j + 16));
    s2 = _mm512_add_ps(s2, _mm512_loadu_ps(x + j + 32));
    s3 = _mm512_add_ps(s3, _mm512_loadu_ps(x + j + 48));
  }
  for (; j < C; j += 16) s0 = _mm512_add_ps(s0, load(x + j, lanes(C, j)));
  const float mu0 = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3))) / float(C);
  // Second pass on d = x - mu0: sum d^2 and sum d, which corrects the float mean (see
  // layernorm_avx2.cpp). Masked lanes are kept out of both sums.
  const __m512 vmu = _mm512_set1_ps(mu0);
  s0 = s1 = s2 = _mm512_setzero_ps();
  __m512 t0 = _mm512_setzero_ps(), t1 = _mm512_setzero_ps();
  for (j = 0; j + 32 <= C; j += 32) {
    const __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(x + j), vmu), d1 = _mm512_sub_ps(_mm512_loadu_ps(x + j + 16), vmu);
    s0 = _mm512_fmadd_ps(d0, d0, s0); s1 = _mm512_fmadd_ps(d1, d1, s1);
    t0 = _mm512_add_ps(t0, d0); t1 = _mm512_add_ps(t1, d1);
  }
  for (; j < C; j += 16) {
    const __mmask16 k = lanes(C, j);
    const __m512 d = _mm512_maskz_sub_ps(k, load(x + j, k), vmu);
    s2 = _mm512_fmadd_ps(d, d, s2);
    t0 = _mm512_add_ps(t0, d);
  }
  const double delta = double(_mm512_reduce_add_ps(_mm512_add_ps(t0, t1))) / double(C);
  const double q = double(_mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), s2))) / double(C) - delta * delta;
  const double var = q > 0.0 ? q : 0.0;
  const float mu = float(double(mu0) + delta);
  const float is = float(1.0 / std::sqrt(var + double(eps)));
  const __m512 vc = _mm512_set1_ps(rms ? 0.f : mu), vis = _mm512_set1_ps(is), zero = _mm512_setzero_ps();
  for (j = 0; j < C; j += 16) {
    const __mmask16 k = lanes(C, j);
    const __m512 g = gamma ? _mm512_mul_ps(vis, load(gamma + j, k)) : vis;
    const __m512 b = beta ? load(beta + j, k) : zero;
    _mm512_mask_storeu_ps(y + j, k, _mm512_fmadd_ps(_mm512_sub_ps(load(x + j, k), vc), g, b));
  }
  *mean = mu;
  *invstd = is;
}

namespace {

// The backward row with gamma (G) and the partial sums (P) present or not fixed at compile time,
// full vectors unmasked and two per step into the even/odd accumulators: 5-13% faster than one
// masked vector per step with those tests inside the loop (standalone loop on Zen 4, 8192x128
// to 4096x768), the same arithmetic in the same order.
template <bool G, bool P>
void backward_row(index_t C, const float* x, const float* dy, const float* gamma, float mean, float invstd,
                  bool rms, float* dx, float* pg, float* pb) {
  const __m512 vc = _mm512_set1_ps(rms ? 0.f : mean), vis = _mm512_set1_ps(invstd);
  __m512 s1a = _mm512_setzero_ps(), s1b = _mm512_setzero_ps(), s2a = _mm512_setzero_ps(), s2b = _mm512_setzero_ps();
  // masked lanes load 0 (dy = 0), so they add nothing
  const auto sums = [&](index_t j, __mmask16 k, __m512& s1, __m512& s2) __attribute__((always_inline)) {
    const __m512 d = load(dy + j, k);
    const __m512 z = _mm512_mul_ps(_mm512_sub_ps(load(x + j, k), vc), vis);
    const __m512 g = G ? _mm512_mul_ps(d, load(gamma + j, k)) : d;
    s1 = _mm512_add_ps(s1, g);
    s2 = _mm512_fmadd_ps(g, z, s2);
    if (P) {
      _mm512_mask_storeu_ps(pg + j, k, _mm512_fmadd_ps(d, z, load(pg + j, k)));
      _mm512_mask_storeu_ps(pb + j, k, _mm512_add_ps(d, load(pb + j, k)));
    }
  };
  const __mmask16 all = 0xFFFF;
  index_t j = 0;
  for (; j + 32 <= C; j += 32) {
    sums(j, all, s1a, s2a);
    sums(j + 16, all, s1b, s2b);
  }
  if (j < C) {
    sums(j, lanes(C, j), s1a, s2a);
    if (j + 16 < C) sums(j + 16, lanes(C, j + 16), s1b, s2b);
  }
  if (!dx) return;
  const float fC = float(C);
  const __m512 va = _mm512_set1_ps(rms ? 0.f : _mm512_reduce_add_ps(_mm512_add_ps(s1a, s1b)) / fC);
  const __m512 vb = _mm512_set1_ps(_mm512_reduce_add_ps(_mm512_add_ps(s2a, s2b)) / fC);
  const __m512 vmu = _mm512_set1_ps(mean);
  const auto out = [&](index_t j, __mmask16 k) __attribute__((always_inline)) {
    const __m512 d = load(dy + j, k);
    const __m512 g = G ? _mm512_mul_ps(d, load(gamma + j, k)) : d;
    const __m512 xhat = _mm512_mul_ps(_mm512_sub_ps(load(x + j, k), vmu), vis);
    const __m512 t = _mm512_fnmadd_ps(xhat, vb, _mm512_sub_ps(g, va));   // g - a - xhat*b
    _mm512_mask_storeu_ps(dx + j, k, _mm512_mul_ps(vis, t));
  };
  for (j = 0; j + 16 <= C; j += 16) out(j, all);
  if (j < C) out(j, lanes(C, j));
}

}  // namespace

void row_backward_avx512(index_t C, const float* x, const float* dy, const float* gamma, float mean,
                         float invstd, bool rms, float* dx, float* pg, float* pb) {
  if (gamma && pg) backward_row<true, true>(C, x, dy, gamma, mean, invstd, rms, dx, pg, pb);
  else if (gamma) backward_row<true, false>(C, x, dy, gamma, mean, invstd, rms, dx, pg, pb);
  else if (pg) backward_row<false, true>(C, x, dy, gamma, mean, invstd, rms, dx, pg, pb);
  else backward_row<false, false>(C, x, dy, gamma, mean, invstd, rms, dx, pg, pb);
}

}  // namespace kilnet::cpu::layernorm_detail

#endif
