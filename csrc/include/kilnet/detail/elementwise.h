// elementwise.h — per-element math written once, shared by the CPU and CUDA kernels.
// Not part of the public API (no stability promise), but free of CUDA types: KILNET_HD expands
// to __host__ __device__ only under nvcc.
#pragma once
#include <cmath>
#include "kilnet/common.h"

#if defined(__CUDACC__)
#define KILNET_HD __host__ __device__ __forceinline__
#else
#define KILNET_HD inline
#endif

namespace kilnet::detail {

KILNET_HD float sigmoidf(float x) {
  // Two branches so that exp never overflows: exact for |x| of any size.
  if (x >= 0.f) { float e = expf(-x); return 1.f / (1.f + e); }
  float e = expf(x);
  return e / (1.f + e);
}

KILNET_HD float act_forward(Act a, float x) {
  switch (a) {
    case Act::Relu: return x < 0.f ? 0.f : x;   // NaN stays NaN (IEEE, PyTorch)
    case Act::Sigmoid: return sigmoidf(x);
    case Act::Tanh: return tanhf(x);
    default: return x;
  }
}

// Derivative expressed with the forward output y.
KILNET_HD float act_backward(Act a, float y, float dy) {
  switch (a) {
    case Act::Relu: return y > 0.f ? dy : 0.f;
    case Act::Sigmoid: return dy * y * (1.f - y);
    case Act::Tanh: return dy * (1.f - y * y);
    default: return dy;
  }
}

// log(1 + exp(x)) without overflow or loss of precision for large |x|.
KILNET_HD float softplusf(float x) { return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }

// Binary cross-entropy of a logit x with target t: softplus(x) - t*x, grouped as
// (max(x,0) - t*x) + log1p(exp(-|x|)) so that a confident right answer (x = 10, t = 1: loss
// 4.5e-5) is not computed as float(10 + 4.5e-5) - 10, which keeps only ~1 digit.
KILNET_HD float bce_logits(float x, float t) {
  return (fmaxf(x, 0.f) - t * x) + log1pf(expf(-fabsf(x)));
}

// One Adam element, Keras form; alpha = lr*sqrt(1-b2^t)/(1-b1^t) precomputed once per step.
KILNET_HD void adam_element(float& p, float g, float& m, float& v, float alpha, float b1,
                            float b2, float eps) {
  m += (g - m) * (1.f - b1);
  v += (g * g - v) * (1.f - b2);
  p -= alpha * m / (sqrtf(v) + eps);
}

KILNET_HD void sgd_element(float& p, float g, float* vel, float lr, float momentum, bool nesterov) {
  if (!vel) { p -= lr * g; return; }
  float v = momentum * *vel - lr * g;
  *vel = v;
  p += nesterov ? momentum * v - lr * g : v;
}

// Recurrent cells, one unit of one step (kilnet/rnn.h has the equations). a = activation,
// s = recurrent_activation; derivatives are taken from the activations' outputs.
// LSTM forward: i f g o hold the pre-activations on entry and the gates on return; tc = a(c).
KILNET_HD void lstm_unit_forward(Act a, Act s, float& i, float& f, float& g, float& o, float c_prev,
                                 float& c, float& tc, float& h) {
  i = act_forward(s, i); f = act_forward(s, f); g = act_forward(a, g); o = act_forward(s, o);
  c = f * c_prev + i * g;
  tc = act_forward(a, c);
  h = o * tc;
}

// LSTM backward: dh is the gradient wrt h_t, dc enters as the gradient wrt c_t that flows back
// from step t+1 and leaves as the one for c_{t-1}; d* are the pre-activation gradients.
KILNET_HD void lstm_unit_backward(Act a, Act s, float i, float f, float g, float o, float c_prev,
                                  float tc, float dh, float& dc, float& di, float& df, float& dg,
                                  float& d_o) {
  d_o = act_backward(s, o, dh * tc);
  const float dct = dc + act_backward(a, tc, dh * o);
  di = act_backward(s, i, dct * g);
  df = act_backward(s, f, dct * c_prev);
  dg = act_backward(a, g, dct * i);
  dc = dct * f;
}

// GRU forward (reset_after): z r enter as xw + hu, xh = xw_h, huh = hu_h; z r hh leave as gates.
KILNET_HD void gru_unit_forward(Act a, Act s, float& z, float& r, float xh, float huh, float h_prev,
                                float& hh, float& h) {
  z = act_forward(s, z); r = act_forward(s, r);
  hh = act_forward(a, xh + r * huh);
  h = z * h_prev + (1.f - z) * hh;
}

// GRU backward: dh wrt h_t; dxz dxr dxh wrt xw (z, r, h blocks); the gradient wrt hu is
// (dxz, dxr, dxh * r); dh_prev_direct = dh z is h_{t-1}'s gradient that bypasses U.
KILNET_HD void gru_unit_backward(Act a, Act s, float z, float r, float hh, float huh, float h_prev,
                                 float dh, float& dxz, float& dxr, float& dxh, float& dh_prev_direct) {
  dxz = act_backward(s, z, dh * (h_prev - hh));
  dxh = act_backward(a, hh, dh * (1.f - z));
  dxr = act_backward(s, r, dxh * huh);
  dh_prev_direct = dh * z;
}

// ---- added with the layers-and-optimizers issue (issue 8) ----------------------------------
// RMSprop, one element, Keras's form (epsilon inside the square root). avg (centered) and mom
// (momentum > 0) may be nullptr.
KILNET_HD void rmsprop_element(float& p, float g, float& v, float* avg, float* mom, float lr,
                               float rho, float momentum, float eps) {
  v = rho * v + (1.f - rho) * g * g;
  float den = v + eps;
  if (avg) { *avg = rho * *avg + (1.f - rho) * g; den = v - *avg * *avg + eps; }
  const float inc = lr * g / sqrtf(den);
  if (mom) { *mom = momentum * *mom + inc; p -= *mom; }
  else p -= inc;
}

// Adagrad, one element, Keras's form (epsilon inside the square root).
KILNET_HD void adagrad_element(float& p, float g, float& acc, float lr, float eps) {
  acc += g * g;
  p -= lr * g / sqrtf(acc + eps);
}

// Dropout's random draw: 24 random bits for element i of the stream `seed` (hash24), read as
// the uniform float hash24 * 2^-24 in [0, 1) (uniform_hash). SplitMix64's output function on the
// counter seed + (i+1)*golden gamma: a stateless hash, so every thread (or GPU thread) computes
// element i's draw on its own and the mask does not depend on how the work is split.
KILNET_HD std::uint32_t hash24(std::uint64_t seed, std::uint64_t i) {
  std::uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return std::uint32_t(z >> 40);
}

KILNET_HD float uniform_hash(std::uint64_t seed, std::uint64_t i) {
  return float(hash24(seed, i)) * (1.f / 16777216.f);
}

}  // namespace kilnet::detail
