// layernorm_avx2.cpp — the per-row work of layer normalization with AVX2/FMA (built with
// -mavx2 -mfma; layernorm.cpp calls it only when use_avx2() is true). A row's tail of fewer
// than 8 values goes through masked loads and stores, so every value takes the same arithmetic.
// No std:: templates here (their out-of-line copies would be shared with the portable units).
#include "layernorm_internal.h"

#if defined(KILNET_HAVE_AVX2_BUILD) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include <cmath>

namespace kilnet::cpu::layernorm_detail {

namespace {

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Lanes [0, n) set, for a tail of n < 8 values.
inline __m256i tail_mask(index_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Loads 8 values at p; a tail load (mask) reads only [0, n) and gives 0 elsewhere.
inline __m256 load(const float* p, bool tail, __m256i mask) {
  return tail ? _mm256_maskload_ps(p, mask) : _mm256_loadu_ps(p);
}
inline __m256 load_or(const float* p, bool tail, __m256i mask, __m256 dflt) {
  return p ? load(p, tail, mask) : dflt;
}
inline void store(float* p, __m256 v, bool tail, __m256i mask) {
  if (tail) _mm256_maskstore_ps(p, mask, v);
  else _mm256_storeu_ps(p, v);
}

}  // namespace

void row_forward_avx2(index_t C, const float* x, const float* gamma, const float* beta, float eps, bool rms,
                      float* mean, float* invstd, float* y) {
  const __m256i mask = tail_mask(C % 8);
  const index_t full = C - C % 8;
  // sum: four accumulators over 32 values, then 8 at a time, then the masked tail
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  index_t j = 0;
  for (; j + 32 <= C; j += 32) {
    s0 = _mm256_add_ps(s0, _mm256_loadu_ps(x + j));
    s1 = _mm256_add_ps(s1, _mm256_loadu_ps(x + j + 8));
    s2 = _mm256_add_ps(s2, _mm256_loadu_ps(x + j + 16));
    s3 = _mm256_add_ps(s3, _mm256_loadu_ps(x + j + 24));
  }
  for (; j < C; j += 8) s0 = _mm256_add_ps(s0, load(x + j, j == full, mask));
  const float mu0 = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3))) / float(C);
  // Second pass on d = x - mu0: sum d^2 and sum d. The float sum above can be off by a few
  // ulps of a large mean; sum d corrects it (mean = mu0 + sum d / C, var = sum d^2 / C -
  // (sum d / C)^2), so rows like 1000 + small noise keep their accuracy.
  const __m256 vmu = _mm256_set1_ps(mu0);
  s0 = s1 = s2 = s3 = _mm256_setzero_ps();
  __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps();
  for (j = 0; j + 16 <= C; j += 16) {
    const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(x + j), vmu), d1 = _mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vmu);
    s0 = _mm256_fmadd_ps(d0, d0, s0); s1 = _mm256_fmadd_ps(d1, d1, s1);
    t0 = _mm256_add_ps(t0, d0); t1 = _mm256_add_ps(t1, d1);
  }
  for (; j < C; j += 8) {
    const bool tail = j == full;
    // masked lanes load 0: their d would be -mu0, so they are masked out of the sums
    __m256 d = _mm256_sub_ps(load(x + j, tail, mask), vmu);
    if (tail) d = _mm256_and_ps(d, _mm256_castsi256_ps(mask));
    s2 = _mm256_fmadd_ps(d, d, s2);
    t0 = _mm256_add_ps(t0, d);
  }
  const double delta = double(hsum(_mm256_add_ps(t0, t1))) / double(C);
  const double q = double(hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), s2))) / double(C) - delta * delta;
  const double var = q > 0.0 ? q : 0.0;
  const float mu = float(double(mu0) + delta);
  const float is = float(1.0 / std::sqrt(var + double(eps)));
  const __m256 vc = _mm256_set1_ps(rms ? 0.f : mu), vis = _mm256_set1_ps(is), zero = _mm256_setzero_ps();
  for (j = 0; j < C; j += 8) {
    const bool tail = j == full;
    const __m256 k = gamma ? _mm256_mul_ps(vis, load(gamma + j, tail, mask)) : vis;
    const __m256 b = load_or(beta ? beta + j : nullptr, tail, mask, zero);
    store(y + j, _mm256_fmadd_ps(_mm256_sub_ps(load(x + j, tail, mask), vc), k, b), tail, mask);
  }
  *mean = mu;
  *invstd = is;
}

namespace {

// As layernorm_avx512.cpp's backward_row: gamma (G) and the partial sums (P) fixed at compile
// time, full vectors in pairs into the even/odd accumulators, the tail alone; the same
// arithmetic in the same order as one vector per step with those tests inside the loop.
template <bool G, bool P>
void backward_row(index_t C, const float* x, const float* dy, const float* gamma, float mean, float invstd,
                  bool rms, float* dx, float* pg, float* pb) {
  const __m256i mask = tail_mask(C % 8);
  const index_t full = C - C % 8;
  const __m256 vc = _mm256_set1_ps(rms ? 0.f : mean), vis = _mm256_set1_ps(invstd);
  __m256 s1a = _mm256_setzero_ps(), s1b = _mm256_setzero_ps(), s2a = _mm256_setzero_ps(), s2b = _mm256_setzero_ps();
  // tail lanes load 0 (dy = 0), so they add nothing
  const auto sums = [&](index_t j, bool tail, __m256& s1, __m256& s2) __attribute__((always_inline)) {
    const __m256 d = load(dy + j, tail, mask);
    const __m256 z = _mm256_mul_ps(_mm256_sub_ps(load(x + j, tail, mask), vc), vis);
    const __m256 g = G ? _mm256_mul_ps(d, load(gamma + j, tail, mask)) : d;
    s1 = _mm256_add_ps(s1, g);
    s2 = _mm256_fmadd_ps(g, z, s2);
    if (P) {
      store(pg + j, _mm256_fmadd_ps(d, z, load(pg + j, tail, mask)), tail, mask);
      store(pb + j, _mm256_add_ps(d, load(pb + j, tail, mask)), tail, mask);
    }
  };
  index_t j = 0;
  for (; j + 16 <= full; j += 16) {
    sums(j, false, s1a, s2a);
    sums(j + 8, false, s1b, s2b);
  }
  if (j < full) {   // one more full vector (an even one), then perhaps the tail (odd)
    sums(j, false, s1a, s2a);
    j += 8;
    if (j < C) sums(j, true, s1b, s2b);
  } else if (j < C) {
    sums(j, true, s1a, s2a);   // the tail is an even vector
  }
  if (!dx) return;
  const float fC = float(C);
  const __m256 va = _mm256_set1_ps(rms ? 0.f : hsum(_mm256_add_ps(s1a, s1b)) / fC);
  const __m256 vb = _mm256_set1_ps(hsum(_mm256_add_ps(s2a, s2b)) / fC);
  const __m256 vmu = _mm256_set1_ps(mean);
  const auto out = [&](index_t j, bool tail) __attribute__((always_inline)) {
    const __m256 d = load(dy + j, tail, mask);
    const __m256 g = G ? _mm256_mul_ps(d, load(gamma + j, tail, mask)) : d;
    const __m256 xhat = _mm256_mul_ps(_mm256_sub_ps(load(x + j, tail, mask), vmu), vis);
    const __m256 t = _mm256_fnmadd_ps(xhat, vb, _mm256_sub_ps(g, va));   // g - a - xhat*b
    store(dx + j, _mm256_mul_ps(vis, t), tail, mask);
  };
  for (j = 0; j < full; j += 8) out(j, false);
  if (j < C) out(j, true);
}

}  // namespace

void row_backward_avx2(index_t C, const float* x, const float* dy, const float* gamma, float mean,
                       float invstd, bool rms, float* dx, float* pg, float* pb) {
  if (gamma && pg) backward_row<true, true>(C, x, dy, gamma, mean, invstd, rms, dx, pg, pb);
  else if (gamma) backward_row<true, false>(C, x, dy, gamma, mean, invstd, rms, dx, pg, pb);
  else if (pg) backward_row<false, true>(C, x, dy, gamma, mean, invstd, rms, dx, pg, pb);
  else backward_row<false, false>(C, x, dy, gamma, mean, invstd, rms, dx, pg, pb);
}

}  // namespace kilnet::cpu::layernorm_detail

#endif
