// optim.cpp — SGD and Adam over one flat parameter buffer (see optim.h).
// One pass over memory per step: param, grad and state are streamed once, in parallel.
#include <cmath>
#include "kilnet/optim.h"
#include "kilnet/detail/elementwise.h"
#include "parallel.h"

namespace kilnet::cpu {

void sgd_update(index_t n, float* p, const float* g, float* vel, float lr, float momentum,
                bool nesterov) {
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

}  // namespace kilnet::cpu
