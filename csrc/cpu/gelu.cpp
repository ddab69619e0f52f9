// gelu.cpp — GELU, exact or tanh-approximate: the portable loops, the double-precision
// reference, and the dispatch to the AVX-512 and AVX2 blocks (gelu_avx512.cpp, gelu_avx2.cpp).
// OpenMP over elements.
#include <algorithm>
#include <cmath>
#include "kilnet/gelu.h"
#include "kilnet/gemm_bf16.h"
#include "gelu_internal.h"
#include "parallel.h"
#include "store_ahead.h"

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

// The level's kernel over [0, n) into out (serially when `serial`).
void gelu_forward_into(index_t n, const float* x, float* y, bool approximate, bool serial) {
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512()) return gelu_detail::forward_avx512(n, x, y, approximate, serial);
#endif
  if (use_avx2()) return gelu_detail::forward_avx2(n, x, y, approximate, serial);
  if (serial) {   // no parallel region at all: an inactive nested one still cost ~1 us per call
    for (index_t i = 0; i < n; ++i) y[i] = gelu_f(x[i], approximate);
    return;
  }
#pragma omp parallel for num_threads(threads_for(n, 1 << 13)) schedule(static)
  for (index_t i = 0; i < n; ++i) y[i] = gelu_f(x[i], approximate);
}

void gelu_backward_into(index_t n, const float* x, const float* dy, float* dx, bool approximate, bool serial) {
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512()) return gelu_detail::backward_avx512(n, x, dy, dx, approximate, serial);
#endif
  if (use_avx2()) return gelu_detail::backward_avx2(n, x, dy, dx, approximate, serial);
  if (serial) {
    for (index_t i = 0; i < n; ++i) dx[i] = dy[i] * gelu_d(x[i], approximate);
    return;
  }
#pragma omp parallel for num_threads(threads_for(n, 1 << 13)) schedule(static)
  for (index_t i = 0; i < n; ++i) dx[i] = dy[i] * gelu_d(x[i], approximate);
}
}  // namespace

// An output just ahead of an input (store_ahead.h) goes through staging blocks.
void gelu_forward(index_t n, const float* x, float* y, bool approximate) {
  if (!store_ahead(y, x)) return gelu_forward_into(n, x, y, approximate, false);
  staged_blocks(n, threads_for(n, 1 << 13), y, x, nullptr, [&](index_t lo, index_t len, float* t) {
    gelu_forward_into(len, x + lo, t, approximate, true);
  });
}

void gelu_backward(index_t n, const float* x, const float* dy, float* dx, bool approximate) {
  if (!store_ahead(dx, x) && !store_ahead(dx, dy)) return gelu_backward_into(n, x, dy, dx, approximate, false);
  staged_blocks(n, threads_for(n, 1 << 13), dx, x, dy, [&](index_t lo, index_t len, float* t) {
    gelu_backward_into(len, x + lo, dy + lo, t, approximate, true);
  });
}

namespace {
// Below AVX-512: [0, n) in fixed pieces of kPiece values, each through a float32 block `t` on
// the calling thread's stack (L1): f(lo, len, t).
constexpr index_t kPiece = 2048;
template <class F>
void in_pieces(index_t n, F&& f) {
  const index_t pieces = (n + kPiece - 1) / kPiece;
#pragma omp parallel for num_threads(threads_for(n, 1 << 13)) schedule(static)
  for (index_t p = 0; p < pieces; ++p) {
    alignas(64) float t[kPiece];
    const index_t lo = p * kPiece;
    f(lo, std::min(kPiece, n - lo), t);
  }
}
}  // namespace

void gelu_forward_bf16(index_t n, const float* x, std::uint16_t* y, bool approximate) {
#if defined(KILNET_HAVE_AVX512_BUILD)
  // (rounded in the register: the pieces below cost 1.6x the float32 forward, a nested parallel
  // region and a conversion call per 2048 values)
  if (use_avx512()) return gelu_detail::forward_bf16_avx512(n, x, y, approximate);
#endif
  in_pieces(n, [&](index_t lo, index_t len, float* t) {
    gelu_forward_into(len, x + lo, t, approximate, true);
    float_to_bf16(len, t, y + lo);
  });
}

void gelu_forward_bf16_in(index_t n, const std::uint16_t* x, std::uint16_t* y, bool approximate) {
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512()) return gelu_detail::forward_bf16_in_avx512(n, x, y, approximate);
#endif
  in_pieces(n, [&](index_t lo, index_t len, float* t) {
    bf16_to_float(len, x + lo, t);
    gelu_forward_into(len, t, t, approximate, true);
    float_to_bf16(len, t, y + lo);
  });
}

void gelu_backward_bf16_x(index_t n, const std::uint16_t* x, const float* dy, float* dx, bool approximate) {
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512()) return gelu_detail::backward_bf16_x_avx512(n, x, dy, dx, approximate);
#endif
  in_pieces(n, [&](index_t lo, index_t len, float* t) {
    bf16_to_float(len, x + lo, t);
    gelu_backward_into(len, t, dy + lo, dx + lo, approximate, true);
  });
}

void gelu_backward_bf16_xdx(index_t n, const std::uint16_t* x, const float* dy, std::uint16_t* dx, bool approximate) {
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512()) return gelu_detail::backward_bf16_xdx_avx512(n, x, dy, dx, approximate);
#endif
  in_pieces(n, [&](index_t lo, index_t len, float* t) {
    bf16_to_float(len, x + lo, t);
    gelu_backward_into(len, t, dy + lo, t, approximate, true);
    float_to_bf16(len, t, dx + lo);
  });
}

void gelu_forward_ref(index_t n, const float* x, float* y, bool approximate) {
  for (index_t i = 0; i < n; ++i) y[i] = float(gelu_f(double(x[i]), approximate));
}

void gelu_backward_ref(index_t n, const float* x, const float* dy, float* dx, bool approximate) {
  for (index_t i = 0; i < n; ++i) dx[i] = float(double(dy[i]) * gelu_d(double(x[i]), approximate));
}

}  // namespace kilnet::cpu
