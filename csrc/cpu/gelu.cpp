// gelu.cpp — GELU, exact or tanh-approximate: the portable loops, the double-precision
// reference, and the dispatch to the AVX-512 and AVX2 blocks (gelu_avx512.cpp, gelu_avx2.cpp).
// OpenMP over elements.
#include <cmath>
#include "kilnet/gelu.h"
#include "gelu_internal.h"
#include "parallel.h"

namespace kilnet::cpu {
namespace {
constexpr double kInvSqrt2 = 0.70710678118654752440, kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588, kCubic = 0.044715;

template <class T> T gelu_f(T x, bool approx) {
  if (approx) return T(0.5) * x * (T(1) + std::tanh(T(kSqrt2OverPi) * (x + T(kCubic) * x * x * x)));
  return T(0.5) * x * (T(1) + std::erf(x * T(kInvSqrt2)));
}

template <class T> T gelu_d(T x, bool approx) {
  if (approx) {
    const T t = std::tanh(T(kSqrt2OverPi) * (x + T(kCubic) * x * x * x));
    return T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * T(kSqrt2OverPi) * (T(1) + T(3 * kCubic) * x * x);
  }
  return T(0.5) * (T(1) + std::erf(x * T(kInvSqrt2))) + x * std::exp(T(-0.5) * x * x) * T(kInvSqrt2Pi);
}
}  // namespace

void gelu_forward(index_t n, const float* x, float* y, bool approximate) {
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512()) return gelu_detail::forward_avx512(n, x, y, approximate);
#endif
  if (use_avx2()) return gelu_detail::forward_avx2(n, x, y, approximate);
#pragma omp parallel for num_threads(threads_for(n, 1 << 13)) schedule(static)
  for (index_t i = 0; i < n; ++i) y[i] = gelu_f(x[i], approximate);
}

void gelu_backward(index_t n, const float* x, const float* dy, float* dx, bool approximate) {
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512()) return gelu_detail::backward_avx512(n, x, dy, dx, approximate);
#endif
  if (use_avx2()) return gelu_detail::backward_avx2(n, x, dy, dx, approximate);
#pragma omp parallel for num_threads(threads_for(n, 1 << 13)) schedule(static)
  for (index_t i = 0; i < n; ++i) dx[i] = dy[i] * gelu_d(x[i], approximate);
}

void gelu_forward_ref(index_t n, const float* x, float* y, bool approximate) {
  for (index_t i = 0; i < n; ++i) y[i] = float(gelu_f(double(x[i]), approximate));
}

void gelu_backward_ref(index_t n, const float* x, const float* dy, float* dx, bool approximate) {
  for (index_t i = 0; i < n; ++i) dx[i] = float(double(dy[i]) * gelu_d(double(x[i]), approximate));
}

}  // namespace kilnet::cpu
