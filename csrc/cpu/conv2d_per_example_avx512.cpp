// conv2d_per_example_avx512.cpp — every example's own weight gradient of a narrow convolution
// (K = 16 or 32 output channels, up to 64 taps R*S*C, ReLU or linear): DP-SGD's per-example
// norms (conv2d.cpp's conv2d_backward_per_example). For one example, dw[tap][k] = sum over output
// pixels of x[tap's input value] * dz[pixel][k], dz = act'(y) * dy: a chunk of taps' rows of dw
// stays in registers (the channels in the lanes) while the example's pixels pass once. The
// general conv2d_backward on a batch of one spent ~12 us an example on the canonical first layer
// (28x28x1 -> 26x26x32), mostly in setting up its blocks.
//
// Built with the AVX-512 flags; includes no project header with inline functions and
// instantiates no std:: templates (see conv2d_avx512.cpp).
#include <immintrin.h>

#include "kilnet/conv2d.h"   // Conv2dShape (a plain struct; no inline functions)

namespace kilnet::cpu::avx512 {
namespace {

constexpr int kMaxTaps = 64;

// One example (x: its H*W*C values, dy and y: its P*Q*K), taps [t0, t0 + tc) of the window in
// registers; db (K values) summed too when given.
template <int KV, int TC>
void chunk(const Conv2dShape& s, const float* x, const float* dy, const float* y, bool relu, int t0, int tc,
           const index_t* rel, const int* tr, const int* te, const int* tch, float* dw, float* db) {
  constexpr index_t K = 16 * KV;
  __m512 a[TC][KV], b[KV];
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 24
  for (int i = 0; i < TC; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < KV; ++v) a[i][v] = zero;
#pragma GCC unroll 2
  for (int v = 0; v < KV; ++v) b[v] = zero;
  for (index_t p = 0; p < s.P; ++p) {
    const index_t ih = p * s.stride_h - s.pad_h;
    for (index_t q = 0; q < s.Q; ++q) {
      const index_t iw = q * s.stride_w - s.pad_w, pix = p * s.Q + q;
      __m512 g[KV];
#pragma GCC unroll 2
      for (int v = 0; v < KV; ++v) {
        g[v] = _mm512_loadu_ps(dy + pix * K + 16 * v);
        if (relu)   // dz = dy where y > 0 (NaN y: 0, as conv2d_backward's act')
          g[v] = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_loadu_ps(y + pix * K + 16 * v), zero, _CMP_GT_OQ), g[v]);
        if (db) b[v] = _mm512_add_ps(b[v], g[v]);
      }
      const bool interior = ih >= 0 && ih + (s.R - 1) * s.dilation_h < s.H && iw >= 0 &&
                            iw + (s.S - 1) * s.dilation_w < s.W;
      if (interior) {
        const float* xb = x + (ih * s.W + iw) * s.C;   // the window's first value
#pragma GCC unroll 24
        for (int i = 0; i < TC; ++i)
          if (i < tc) {
            const __m512 xv = _mm512_set1_ps(xb[rel[t0 + i]]);
#pragma GCC unroll 2
            for (int v = 0; v < KV; ++v) a[i][v] = _mm512_fmadd_ps(xv, g[v], a[i][v]);
          }
        continue;
      }
#pragma GCC unroll 24
      for (int i = 0; i < TC; ++i)   // an edge pixel: the taps inside the image only
        if (i < tc) {
          const index_t row = ih + tr[t0 + i] * s.dilation_h, col = iw + te[t0 + i] * s.dilation_w;
          if (row < 0 || row >= s.H || col < 0 || col >= s.W) continue;
          const __m512 xv = _mm512_set1_ps(x[(row * s.W + col) * s.C + tch[t0 + i]]);
#pragma GCC unroll 2
          for (int v = 0; v < KV; ++v) a[i][v] = _mm512_fmadd_ps(xv, g[v], a[i][v]);
        }
    }
  }
  for (int i = 0; i < tc; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < KV; ++v) {
      float* o = dw + (t0 + i) * K + 16 * v;   // dw rows in tap order (r, s, c): RSCK
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a[i][v]));
    }
  if (db)
#pragma GCC unroll 2
    for (int v = 0; v < KV; ++v) _mm512_storeu_ps(db + 16 * v, _mm512_add_ps(_mm512_loadu_ps(db + 16 * v), b[v]));
}

template <int KV>
void examples(const Conv2dShape& s, const float* dy, const float* x, const float* y, bool relu, float* per,
              bool bias, index_t n0, index_t n1) {
  constexpr int TC = 24 / KV;   // taps a chunk: 24 accumulators
  index_t rel[kMaxTaps];
  int tr[kMaxTaps], te[kMaxTaps], tch[kMaxTaps], T = 0;
  for (int r = 0; r < s.R; ++r)
    for (int e = 0; e < s.S; ++e)
      for (int c = 0; c < s.C; ++c, ++T) {
        rel[T] = (r * s.dilation_h * s.W + e * s.dilation_w) * s.C + c;
        tr[T] = r, te[T] = e, tch[T] = c;
      }
  const int chunks = (T + TC - 1) / TC, per_chunk = (T + chunks - 1) / chunks;   // equal sizes
  const index_t xs = s.H * s.W * s.C, ys = s.P * s.Q * s.K, kel = index_t(T) * s.K, row = kel + (bias ? s.K : 0);
  for (index_t n = n0; n < n1; ++n) {
    float* dw = per + n * row;
    for (int t0 = 0; t0 < T; t0 += per_chunk) {
      const int tc = T - t0 < per_chunk ? T - t0 : per_chunk;
      chunk<KV, TC>(s, x + n * xs, dy + n * ys, relu ? y + n * ys : nullptr, relu, t0, tc, rel, tr, te, tch, dw,
                    bias && t0 == 0 ? dw + kel : nullptr);
    }
  }
}

}  // namespace

bool per_example_fits(const Conv2dShape& s) {
  return (s.K == 16 || s.K == 32) && s.R * s.S * s.C <= kMaxTaps;
}

// per rows of examples [n0, n1) += their dw (| db); relu: dz = dy where y > 0, else dz = dy.
void conv2d_per_example(const Conv2dShape& s, const float* dy, const float* x, const float* y, bool relu, float* per,
                        bool bias, index_t n0, index_t n1) {
  if (s.K == 32) return examples<2>(s, dy, x, y, relu, per, bias, n0, n1);
  examples<1>(s, dy, x, y, relu, per, bias, n0, n1);
}

}  // namespace kilnet::cpu::avx512
