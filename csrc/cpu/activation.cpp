// activation.cpp — elementwise activations and row softmax, forward and backward.
// Memory-bound loops: the compiler vectorizes them; OpenMP only for large arrays. Sigmoid and
// tanh forward call libm per element here; with AVX-512 they go to activation_avx512.cpp.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include "activation_internal.h"
#include "softmax_internal.h"
#include "kilnet/activation.h"
#include "kilnet/detail/elementwise.h"
#include "parallel.h"
#include "store_ahead.h"

namespace kilnet::cpu {
using detail::act_backward;
using detail::act_forward;

namespace {

// Elementwise kernels whose output runs just ahead of an input (store_ahead.h: relu 3.1 -> 10.6
// ms on 4M floats) go through staged_blocks.

// out[i] = f(i) over [0, n) on nt threads, staged when `stage` (in0, in1: the arrays f reads).
template <class F>
void map_into(index_t n, int nt, bool stage, float* out, const float* in0, const float* in1, F f) {
  if (!stage) {
#pragma omp parallel for simd num_threads(nt) schedule(static)
    for (index_t i = 0; i < n; ++i) out[i] = f(i);
    return;
  }
  staged_blocks(n, nt, out, in0, in1, [&](index_t lo, index_t len, float* t) {
#pragma omp simd
    for (index_t i = 0; i < len; ++i) t[i] = f(lo + i);
  });
}

}  // namespace

void activation_forward(Act act, index_t n, const float* x, float* y) {
  if (act == Act::Softmax) throw std::invalid_argument("activation_forward: use softmax_forward");
  const bool stage = store_ahead(y, x);
  switch (act) {   // one loop per activation so each one vectorizes on its own
    case Act::Relu:
      map_into(n, threads_for(n), stage, y, x, nullptr, [x](index_t i) { return x[i] < 0.f ? 0.f : x[i]; });   // NaN stays NaN
      break;
    case Act::Linear:
      if (x != y) std::memmove(y, x, size_t(n) * sizeof(float));
      break;
    default:
#if defined(KILNET_HAVE_AVX512_BUILD)
      if (use_avx512() && (act == Act::Sigmoid || act == Act::Tanh)) {
        if (!stage) activation_detail::forward_avx512(act, n, x, y);
        else staged_blocks(n, threads_for(n, 4096), y, x, nullptr, [&](index_t lo, index_t len, float* t) {
          activation_detail::forward_avx512(act, len, x + lo, t, true);
        });
        return;
      }
#endif
      map_into(n, threads_for(n, 4096), stage, y, x, nullptr, [act, x](index_t i) { return act_forward(act, x[i]); });
  }
}

void activation_backward(Act act, index_t n, const float* y, const float* dy, float* dx) {
  if (act == Act::Softmax) throw std::invalid_argument("activation_backward: use softmax_backward");
  const bool stage = store_ahead(dx, y) || store_ahead(dx, dy);
  const int nt = threads_for(n);
  switch (act) {
    case Act::Relu:   // load dy unconditionally: a select, not a branch on the sign
      map_into(n, nt, stage, dx, y, dy, [y, dy](index_t i) { const float g = dy[i]; return y[i] > 0.f ? g : 0.f; });
      break;
    case Act::Sigmoid:
      map_into(n, nt, stage, dx, y, dy, [y, dy](index_t i) { return dy[i] * y[i] * (1.f - y[i]); });
      break;
    case Act::Tanh:
      map_into(n, nt, stage, dx, y, dy, [y, dy](index_t i) { return dy[i] * (1.f - y[i] * y[i]); });
      break;
    default:
      if (dx != dy) std::memmove(dx, dy, size_t(n) * sizeof(float));
  }
}

void activation_forward_ref(Act act, index_t n, const float* x, float* y) {
  if (act == Act::Softmax) throw std::invalid_argument("activation_forward_ref: use softmax_forward_ref");
  for (index_t i = 0; i < n; ++i) y[i] = act_forward(act, x[i]);
}

void activation_backward_ref(Act act, index_t n, const float* y, const float* dy, float* dx) {
  if (act == Act::Softmax) throw std::invalid_argument("activation_backward_ref: use softmax_backward_ref");
  for (index_t i = 0; i < n; ++i) dx[i] = act_backward(act, y[i], dy[i]);
}

// The two passes of a softmax row (softmax_internal.h): vector code with AVX-512 or AVX2, else
// these loops.
namespace softmax_detail {

float row_max(index_t n, const float* x) {
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512()) return row_max_avx512(n, x);
#endif
#if defined(KILNET_HAVE_AVX2_BUILD)
  if (use_avx2()) return row_max_avx2(n, x);
#endif
  float mx = x[0];
  for (index_t j = 1; j < n; ++j) mx = std::max(mx, x[j]);
  return mx;
}

double exp_shift_sum(index_t n, const float* x, float shift, float* out) {
  if (!out) {   // only the sum is wanted: exps go to a small buffer, a chunk at a time
    float buf[256];
    double sum = 0.0;
    for (index_t j = 0; j < n; j += 256) sum += exp_shift_sum(std::min<index_t>(256, n - j), x + j, shift, buf);
    return sum;
  }
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512()) return exp_shift_sum_avx512(n, x, shift, out);
#endif
#if defined(KILNET_HAVE_AVX2_BUILD)
  if (use_avx2()) return exp_shift_sum_avx2(n, x, shift, out);
#endif
  double sum = 0.0;
  for (index_t j = 0; j < n; ++j) { out[j] = std::exp(x[j] - shift); sum += out[j]; }
  return sum;
}

}  // namespace softmax_detail

// One row: subtract the max so exp never overflows, then normalize. The sum is accumulated in
// double: a float running sum over a long row (a 1e5-word vocabulary) drifts by ~1e-4 relative.
static inline void softmax_row(index_t cols, const float* x, float* y) {
  const float mx = softmax_detail::row_max(cols, x);
  const float inv = float(1.0 / softmax_detail::exp_shift_sum(cols, x, mx, y));
  for (index_t j = 0; j < cols; ++j) y[j] *= inv;
}

void softmax_forward(index_t rows, index_t cols, const float* x, float* y) {
#pragma omp parallel for num_threads(threads_for(rows * cols, 8192)) schedule(static)
  for (index_t i = 0; i < rows; ++i) softmax_row(cols, x + i * cols, y + i * cols);
}

// dx = y ⊙ (dy − <dy, y>) per row
void softmax_backward(index_t rows, index_t cols, const float* y, const float* dy, float* dx) {
#pragma omp parallel for num_threads(threads_for(rows * cols, 8192)) schedule(static)
  for (index_t i = 0; i < rows; ++i) {
    const float* yr = y + i * cols; const float* dyr = dy + i * cols; float* dxr = dx + i * cols;
    double dot = 0.0;   // double for the same reason as softmax_row's sum
    for (index_t j = 0; j < cols; ++j) dot += dyr[j] * yr[j];
    const float dotf = float(dot);
    for (index_t j = 0; j < cols; ++j) dxr[j] = yr[j] * (dyr[j] - dotf);
  }
}

void softmax_forward_ref(index_t rows, index_t cols, const float* x, float* y) {
  for (index_t i = 0; i < rows; ++i) {
    double mx = x[i * cols], sum = 0;
    for (index_t j = 1; j < cols; ++j) mx = std::max<double>(mx, x[i * cols + j]);
    for (index_t j = 0; j < cols; ++j) sum += std::exp(double(x[i * cols + j]) - mx);
    for (index_t j = 0; j < cols; ++j) y[i * cols + j] = float(std::exp(double(x[i * cols + j]) - mx) / sum);
  }
}

void softmax_backward_ref(index_t rows, index_t cols, const float* y, const float* dy, float* dx) {
  for (index_t i = 0; i < rows; ++i) {
    double dot = 0;
    for (index_t j = 0; j < cols; ++j) dot += double(dy[i * cols + j]) * y[i * cols + j];
    for (index_t j = 0; j < cols; ++j) dx[i * cols + j] = float(y[i * cols + j] * (dy[i * cols + j] - dot));
  }
}

}  // namespace kilnet::cpu
