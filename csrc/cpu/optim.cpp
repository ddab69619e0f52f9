// optim.cpp — SGD, Adam, RMSprop, Adagrad, AdamW over one flat parameter buffer, gradient
// clipping and L1/L2 penalties (see optim.h).
// One pass over memory per step: param, grad and state are streamed once, in parallel.
// This file is built without AVX flags (its loops run 4 lanes wide); with AVX-512 the updates
// go to optim_avx512.cpp, whose results are the same bit for bit (optim_internal.h).
#include <algorithm>
#include <cmath>
#include "kilnet/optim.h"
#include "kilnet/detail/elementwise.h"
#include "optim_internal.h"
#include "parallel.h"

namespace kilnet::cpu {

#if defined(KILNET_HAVE_AVX512_BUILD)
// Calls f(i0, len) on each thread's share of [0, n), the shares whole 64-byte lines of floats.
template <class F>
static void over_shares(index_t n, F&& f) {
#pragma omp parallel num_threads(threads_for(n))
  {
    const index_t lines = (n + 15) / 16, t = omp_get_thread_num(), nt = omp_get_num_threads();
    const index_t i0 = std::min(n, lines * t / nt * 16), i1 = std::min(n, lines * (t + 1) / nt * 16);
    if (i1 > i0) f(i0, i1 - i0);
  }
}
#define KILNET_OPTIM_AVX512(call)                              \
  if (use_avx512()) {                                          \
    over_shares(n, [&](index_t i0, index_t len) { call; });    \
    return;                                                    \
  }
#else
#define KILNET_OPTIM_AVX512(call)
#endif

void sgd_update(index_t n, float* p, const float* g, float* vel, float lr, float momentum,
                bool nesterov) {
  KILNET_OPTIM_AVX512(optim_detail::sgd_avx512(len, p + i0, g + i0, (momentum == 0.f || !vel) ? nullptr : vel + i0,
                                               lr, momentum, nesterov))
  if (momentum == 0.f || !vel) {
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
    for (index_t i = 0; i < n; ++i) p[i] -= lr * g[i];
    return;
  }
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (index_t i = 0; i < n; ++i) {
    const float v = momentum * vel[i] - lr * g[i];
    vel[i] = v;
    p[i] += nesterov ? momentum * v - lr * g[i] : v;
  }
}

static float adam_alpha(float lr, float b1, float b2, index_t step) {
  const double t = double(step);
  return float(lr * std::sqrt(1.0 - std::pow(double(b2), t)) / (1.0 - std::pow(double(b1), t)));
}

void adam_update(index_t n, float* p, const float* g, float* m, float* v, float lr, float b1,
                 float b2, float eps, index_t step) {
  const float alpha = adam_alpha(lr, b1, b2, step);
  const float c1 = 1.f - b1, c2 = 1.f - b2;
  KILNET_OPTIM_AVX512(optim_detail::adam_avx512(len, p + i0, g + i0, m + i0, v + i0, alpha, c1, c2, eps, false, 0.f))
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (index_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = m[i] + (gi - m[i]) * c1;
    const float vi = v[i] + (gi * gi - v[i]) * c2;
    m[i] = mi;
    v[i] = vi;
    p[i] -= alpha * mi / (std::sqrt(vi) + eps);
  }
}

void sgd_update_ref(index_t n, float* p, const float* g, float* vel, float lr, float momentum,
                    bool nesterov) {
  for (index_t i = 0; i < n; ++i)
    detail::sgd_element(p[i], g[i], (momentum == 0.f || !vel) ? nullptr : vel + i, lr, momentum, nesterov);
}

void adam_update_ref(index_t n, float* p, const float* g, float* m, float* v, float lr, float b1,
                     float b2, float eps, index_t step) {
  const float alpha = adam_alpha(lr, b1, b2, step);
  for (index_t i = 0; i < n; ++i) detail::adam_element(p[i], g[i], m[i], v[i], alpha, b1, b2, eps);
}


// ------------------------------------------------------------------------- issue 8 additions
// Each update is one parallel pass; the optional parts (centered, momentum, weight decay) are
// template flags so that every variant's loop is branch-free and vectorizes.
template <bool Centered, bool Momentum>
static void rmsprop_loop(index_t n, float* p, const float* g, float* v, float* a, float* mom,
                         float lr, float rho, float momentum, float eps, float wdl) {
  const float c = 1.f - rho;
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (index_t i = 0; i < n; ++i) {
    const float gi = g[i];
    float pi = p[i];
    pi -= pi * wdl;
    const float vi = rho * v[i] + c * gi * gi;
    v[i] = vi;
    float den = vi + eps;
    if constexpr (Centered) {
      const float ai = rho * a[i] + c * gi;
      a[i] = ai;
      den = vi - ai * ai + eps;
    }
    const float inc = lr * gi / std::sqrt(den);
    if constexpr (Momentum) {
      const float mi = momentum * mom[i] + inc;
      mom[i] = mi;
      p[i] = pi - mi;
    } else {
      p[i] = pi - inc;
    }
  }
}

void rmsprop_update(index_t n, float* p, const float* g, float* v, float* avg, float* mom, float lr,
                    float rho, float momentum, float eps, float weight_decay) {
  const float wdl = weight_decay * lr;
  KILNET_OPTIM_AVX512(optim_detail::rmsprop_avx512(len, p + i0, g + i0, v + i0, avg ? avg + i0 : nullptr,
                                                   mom ? mom + i0 : nullptr, lr, rho, momentum, eps, wdl))
  if (avg && mom) rmsprop_loop<true, true>(n, p, g, v, avg, mom, lr, rho, momentum, eps, wdl);
  else if (avg) rmsprop_loop<true, false>(n, p, g, v, avg, mom, lr, rho, momentum, eps, wdl);
  else if (mom) rmsprop_loop<false, true>(n, p, g, v, avg, mom, lr, rho, momentum, eps, wdl);
  else rmsprop_loop<false, false>(n, p, g, v, avg, mom, lr, rho, momentum, eps, wdl);
}

void adagrad_update(index_t n, float* p, const float* g, float* acc, float lr, float eps,
                    float weight_decay) {
  const float wdl = weight_decay * lr;
  KILNET_OPTIM_AVX512(optim_detail::adagrad_avx512(len, p + i0, g + i0, acc + i0, lr, eps, wdl))
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (index_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float ai = acc[i] + gi * gi;
    acc[i] = ai;
    p[i] = (p[i] - p[i] * wdl) - lr * gi / std::sqrt(ai + eps);
  }
}

void adamw_update(index_t n, float* p, const float* g, float* m, float* v, float lr, float b1,
                  float b2, float eps, float weight_decay, index_t step) {
  const float alpha = adam_alpha(lr, b1, b2, step);
  const float c1 = 1.f - b1, c2 = 1.f - b2, wdl = weight_decay * lr;
  KILNET_OPTIM_AVX512(optim_detail::adam_avx512(len, p + i0, g + i0, m + i0, v + i0, alpha, c1, c2, eps, true, wdl))
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (index_t i = 0; i < n; ++i) {
    const float gi = g[i];
    const float mi = m[i] + (gi - m[i]) * c1;
    const float vi = v[i] + (gi * gi - v[i]) * c2;
    m[i] = mi;
    v[i] = vi;
    p[i] = (p[i] - p[i] * wdl) - alpha * mi / (std::sqrt(vi) + eps);
  }
}

void clip_by_value(index_t n, float* g, float cv) {
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (index_t i = 0; i < n; ++i) g[i] = std::min(std::max(g[i], -cv), cv);
}

// Scale factor clipnorm / max(norm, clipnorm) in double; NaN when the norm is NaN, so a
// non-finite gradient stays visibly non-finite instead of being clipped into something finite.
static double clip_scale(double sumsq, float clipnorm) {
  const double norm = std::sqrt(sumsq);
  return std::isnan(norm) ? norm : double(clipnorm) / std::max(norm, double(clipnorm));
}

void clip_by_norm(index_t nseg, const index_t* off, float* g, float clipnorm) {
  for (index_t k = 0; k < nseg; ++k) {
    float* gk = g + off[k];
    const index_t len = off[k + 1] - off[k];
    double sumsq = 0.0;
#pragma omp parallel for simd num_threads(threads_for(len)) schedule(static) reduction(+ : sumsq)
    for (index_t i = 0; i < len; ++i) sumsq += double(gk[i]) * double(gk[i]);
    const double scale = clip_scale(sumsq, clipnorm);
    if (scale == 1.0) continue;   // norm <= clipnorm: unchanged
    const float sf = float(scale);
#pragma omp parallel for simd num_threads(threads_for(len)) schedule(static)
    for (index_t i = 0; i < len; ++i) gk[i] *= sf;
  }
}

double l1l2_penalty(index_t n, const float* w, float l1, float l2, float* dw) {
  double s1 = 0.0, s2 = 0.0;
  const float two_l2 = 2.f * l2;
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static) reduction(+ : s1, s2)
  for (index_t i = 0; i < n; ++i) {
    const float wi = w[i];
    s1 += std::fabs(double(wi));
    s2 += double(wi) * double(wi);
    if (dw) dw[i] += l1 * float((wi > 0.f) - (wi < 0.f)) + two_l2 * wi;
  }
  return double(l1) * s1 + double(l2) * s2;
}

// ------------------------------------------------------------------------- references
void rmsprop_update_ref(index_t n, float* p, const float* g, float* v, float* avg, float* mom,
                        float lr, float rho, float momentum, float eps, float weight_decay) {
  for (index_t i = 0; i < n; ++i) {
    p[i] -= p[i] * weight_decay * lr;
    detail::rmsprop_element(p[i], g[i], v[i], avg ? avg + i : nullptr, mom ? mom + i : nullptr,
                            lr, rho, momentum, eps);
  }
}

void adagrad_update_ref(index_t n, float* p, const float* g, float* acc, float lr, float eps,
                        float weight_decay) {
  for (index_t i = 0; i < n; ++i) {
    p[i] -= p[i] * weight_decay * lr;
    detail::adagrad_element(p[i], g[i], acc[i], lr, eps);
  }
}

void adamw_update_ref(index_t n, float* p, const float* g, float* m, float* v, float lr, float b1,
                      float b2, float eps, float weight_decay, index_t step) {
  const float alpha = adam_alpha(lr, b1, b2, step);
  for (index_t i = 0; i < n; ++i) {
    p[i] -= p[i] * weight_decay * lr;
    detail::adam_element(p[i], g[i], m[i], v[i], alpha, b1, b2, eps);
  }
}

void clip_by_value_ref(index_t n, float* g, float cv) {
  for (index_t i = 0; i < n; ++i) g[i] = g[i] < -cv ? -cv : (g[i] > cv ? cv : g[i]);
}

void clip_by_norm_ref(index_t nseg, const index_t* off, float* g, float clipnorm) {
  for (index_t k = 0; k < nseg; ++k) {
    double sumsq = 0.0;
    for (index_t i = off[k]; i < off[k + 1]; ++i) sumsq += double(g[i]) * g[i];
    const double norm = std::sqrt(sumsq);
    if (norm <= clipnorm) continue;
    for (index_t i = off[k]; i < off[k + 1]; ++i) g[i] = float(g[i] * (double(clipnorm) / norm));
  }
}

double l1l2_penalty_ref(index_t n, const float* w, float l1, float l2, float* dw) {
  double s = 0.0;
  for (index_t i = 0; i < n; ++i) {
    s += double(l1) * std::fabs(double(w[i])) + double(l2) * double(w[i]) * w[i];
    if (dw) dw[i] += (w[i] > 0.f ? l1 : (w[i] < 0.f ? -l1 : 0.f)) + 2.f * l2 * w[i];
  }
  return s;
}

}  // namespace kilnet::cpu
