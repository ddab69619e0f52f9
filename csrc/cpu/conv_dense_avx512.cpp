// conv_dense_avx512.cpp — the three narrow products of the fused Conv2D -> Flatten -> Dense block
// (conv_dense.cpp) for U <= 16 units, when the AVX-512 level runs: one zmm holds a row of the
// Dense weights (U lanes), so none of them packs anything. With U = 10 the general GEMM pads to
// 16 columns and packs both operands for each small block; measured on a block of the canonical
// CNN (32 x 1664 x 10, in L2) it reached ~33 GFLOP/s.
//
// This file includes no project header with inline functions outside an anonymous namespace
// and instantiates no std:: templates (see conv2d_avx512.cpp): it is compiled with the AVX-512
// flags.
#include <immintrin.h>

#include "kilnet/conv2d.h"   // Conv2dShape (a plain struct; no inline functions)
#include "transpose_avx512.h"

// GCC 12 reports _mm512_undefined_ps inside _mm512_max_ps and the gathers as "maybe uninitialized"
// (a false positive of the intrinsic header, as in conv2d_avx512.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kilnet::cpu::avx512 {
namespace {
inline __mmask16 lanes(index_t u) { return __mmask16((1u << unsigned(u)) - 1u); }
}  // namespace

// z[N x U] = (accumulate ? z : 0) + h[N x kb] · w[kb x U]; 8 rows of h at a time share each
// loaded row of w.
void narrow_forward(index_t N, index_t kb, index_t U, const float* h, const float* w, float* z, bool accumulate) {
  const __mmask16 m = lanes(U);
  index_t n = 0;
  for (; n + 8 <= N; n += 8) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    const float* r = h + n * kb;
    for (index_t k = 0; k < kb; ++k) {
      const __m512 wv = _mm512_maskz_loadu_ps(m, w + k * U);
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(r[k]), wv, a0);
      a1 = _mm512_fmadd_ps(_mm512_set1_ps(r[kb + k]), wv, a1);
      a2 = _mm512_fmadd_ps(_mm512_set1_ps(r[2 * kb + k]), wv, a2);
      a3 = _mm512_fmadd_ps(_mm512_set1_ps(r[3 * kb + k]), wv, a3);
      a4 = _mm512_fmadd_ps(_mm512_set1_ps(r[4 * kb + k]), wv, a4);
      a5 = _mm512_fmadd_ps(_mm512_set1_ps(r[5 * kb + k]), wv, a5);
      a6 = _mm512_fmadd_ps(_mm512_set1_ps(r[6 * kb + k]), wv, a6);
      a7 = _mm512_fmadd_ps(_mm512_set1_ps(r[7 * kb + k]), wv, a7);
    }
    const __m512 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
    for (int i = 0; i < 8; ++i) {
      float* zr = z + (n + i) * U;
      const __m512 v = accumulate ? _mm512_add_ps(acc[i], _mm512_maskz_loadu_ps(m, zr)) : acc[i];
      _mm512_mask_storeu_ps(zr, m, v);
    }
  }
  for (; n < N; ++n) {   // the rows left over, one at a time (two chains for the FMA latency)
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    const float* r = h + n * kb;
    index_t k = 0;
    for (; k + 2 <= kb; k += 2) {
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(r[k]), _mm512_maskz_loadu_ps(m, w + k * U), a0);
      a1 = _mm512_fmadd_ps(_mm512_set1_ps(r[k + 1]), _mm512_maskz_loadu_ps(m, w + (k + 1) * U), a1);
    }
    if (k < kb) a0 = _mm512_fmadd_ps(_mm512_set1_ps(r[k]), _mm512_maskz_loadu_ps(m, w + k * U), a0);
    float* zr = z + n * U;
    __m512 v = _mm512_add_ps(a0, a1);
    if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, zr));
    _mm512_mask_storeu_ps(zr, m, v);
  }
}

// dw[kb x U] = (overwrite ? 0 : dw) + h^T · dz, h N x kb, dz N x U: 8 rows of dw at a time, each
// row of dz loaded once for them.
void narrow_weight_grad(index_t N, index_t kb, index_t U, const float* h, const float* dz, float* dw,
                        bool overwrite) {
  const __mmask16 m = lanes(U);
  index_t k = 0;
  for (; k + 8 <= kb; k += 8) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (index_t n = 0; n < N; ++n) {
      const __m512 d = _mm512_maskz_loadu_ps(m, dz + n * U);
      const float* r = h + n * kb + k;
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(r[0]), d, a0);
      a1 = _mm512_fmadd_ps(_mm512_set1_ps(r[1]), d, a1);
      a2 = _mm512_fmadd_ps(_mm512_set1_ps(r[2]), d, a2);
      a3 = _mm512_fmadd_ps(_mm512_set1_ps(r[3]), d, a3);
      a4 = _mm512_fmadd_ps(_mm512_set1_ps(r[4]), d, a4);
      a5 = _mm512_fmadd_ps(_mm512_set1_ps(r[5]), d, a5);
      a6 = _mm512_fmadd_ps(_mm512_set1_ps(r[6]), d, a6);
      a7 = _mm512_fmadd_ps(_mm512_set1_ps(r[7]), d, a7);
    }
    const __m512 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
    for (int i = 0; i < 8; ++i) {
      float* o = dw + (k + i) * U;
      const __m512 v = overwrite ? acc[i] : _mm512_add_ps(acc[i], _mm512_maskz_loadu_ps(m, o));
      _mm512_mask_storeu_ps(o, m, v);
    }
  }
  for (; k < kb; ++k) {
    __m512 a = _mm512_setzero_ps();
    for (index_t n = 0; n < N; ++n)
      a = _mm512_fmadd_ps(_mm512_set1_ps(h[n * kb + k]), _mm512_maskz_loadu_ps(m, dz + n * U), a);
    float* o = dw + k * U;
    _mm512_mask_storeu_ps(o, m, overwrite ? a : _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, o)));
  }
}

// dh[N x kb] = dz[N x U] · w^T, w kb x U: 16 rows of w are gathered into U column vectors, then
// each row of dz is U broadcasts against them; four rows of dh at a time for independent FMA
// chains.
void narrow_input_grad(index_t N, index_t kb, index_t U, const float* dz, const float* w, float* dh) {
  // lane j of column u's vector reads w[(k0 + j) * U + u]: 16 rows of w are 16 * U floats in a row
  const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(static_cast<int>(U)));
  for (index_t k0 = 0; k0 < kb; k0 += 16) {
    const index_t kw = kb - k0 < 16 ? kb - k0 : 16;
    const __mmask16 km = lanes(kw);
    __m512 wv[16];
    for (index_t u = 0; u < U; ++u)
      wv[u] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), km, rows, w + k0 * U + u, 4);
    index_t n = 0;
    for (; n + 4 <= N; n += 4) {
      const float* d = dz + n * U;
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (index_t u = 0; u < U; ++u) {
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(d[u]), wv[u], a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(d[U + u]), wv[u], a1);
        a2 = _mm512_fmadd_ps(_mm512_set1_ps(d[2 * U + u]), wv[u], a2);
        a3 = _mm512_fmadd_ps(_mm512_set1_ps(d[3 * U + u]), wv[u], a3);
      }
      _mm512_mask_storeu_ps(dh + n * kb + k0, km, a0);
      _mm512_mask_storeu_ps(dh + (n + 1) * kb + k0, km, a1);
      _mm512_mask_storeu_ps(dh + (n + 2) * kb + k0, km, a2);
      _mm512_mask_storeu_ps(dh + (n + 3) * kb + k0, km, a3);
    }
    for (; n < N; ++n) {
      __m512 a = _mm512_setzero_ps();
      for (index_t u = 0; u < U; ++u) a = _mm512_fmadd_ps(_mm512_set1_ps(dz[n * U + u]), wv[u], a);
      _mm512_mask_storeu_ps(dh + n * kb + k0, km, a);
    }
  }
}

}  // namespace kilnet::cpu::avx512

// ------------------------------------------------------------------------------ pixel path
// The backward of one output pixel for all images at once, with everything it touches in L1:
// h of the pixel (N x K, K = 16 or 32 channels, one or two zmm per image) is computed again from
// its taps, then used while it is hot by the Dense rows of the pixel, by dh and by the
// convolution's weight gradient; channels in the lanes throughout (every product a full vector),
// and no block of h goes through L2 (conv_dense.cpp's block path, still used where this one does
// not apply, moves each block through L2 several times). The forward runs with the images in
// the lanes instead (conv_dense_lanes_avx512.cpp). Measured on the canonical CNN step (N 32,
// 26x26x32, U 10), backward at 1 thread on Zen 4: 0.73 ms with the Dense rows on U lanes and
// their columns gathered, 0.58 with the Dense rows' gradient in the lanes and no gathers.
namespace kilnet::cpu::avx512 {
namespace {

constexpr int kMaxTaps = 64;   // R * S * C the pixel path takes (conv_dense.cpp checks it)

// The next pixel's Dense rows (K x U floats), fetched while this pixel computes: after the
// optimizer's pass the weights are no longer in cache, and the hardware prefetcher alone left
// the kernels 60-80% slower than with hot weights (measured with a 3.5 MB pass between calls).
inline void prefetch_rows(const float* w, index_t n) {
  const char* p = reinterpret_cast<const char*>(w);
  for (index_t b = 0; b < n * index_t(sizeof(float)); b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
}

// The valid taps of output pixel (p, q): the offset of each into an image and the row of wc
// (R x S x C x K) it multiplies; taps in the padding are left out.
int taps_of(const Conv2dShape& s, index_t p, index_t q, index_t* off, index_t* wrow) {
  int nt = 0;
  for (index_t r = 0; r < s.R; ++r) {
    const index_t ih = p * s.stride_h - s.pad_h + r * s.dilation_h;
    if (ih < 0 || ih >= s.H) continue;
    for (index_t t = 0; t < s.S; ++t) {
      const index_t iw = q * s.stride_w - s.pad_w + t * s.dilation_w;
      if (iw < 0 || iw >= s.W) continue;
      for (index_t c = 0; c < s.C; ++c) {
        off[nt] = (ih * s.W + iw) * s.C + c;
        wrow[nt] = ((r * s.S + t) * s.C + c) * s.K;
        ++nt;
      }
    }
  }
  return nt;
}

// h[i] = act(bias + sum over taps x[i][off] * wc[wrow]) for NI images (x, h at image 0 of them):
// NI x KV independent FMA chains.
template <int KV, int NI>
inline void h_images(const float* x, index_t img, int nt, const index_t* off, const index_t* wrow,
                     const float* wc, const float* bc, bool relu, float* h) {
  constexpr index_t K = 16 * KV;
  __m512 acc[NI][KV];
#pragma GCC unroll 2
  for (int v = 0; v < KV; ++v) {
    const __m512 b = bc ? _mm512_loadu_ps(bc + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 4
    for (int i = 0; i < NI; ++i) acc[i][v] = b;
  }
  for (int t = 0; t < nt; ++t) {
    __m512 wv[KV];
#pragma GCC unroll 2
    for (int v = 0; v < KV; ++v) wv[v] = _mm512_loadu_ps(wc + wrow[t] + 16 * v);
#pragma GCC unroll 4
    for (int i = 0; i < NI; ++i) {
      const __m512 xv = _mm512_set1_ps(x[i * img + off[t]]);
#pragma GCC unroll 2
      for (int v = 0; v < KV; ++v) acc[i][v] = _mm512_fmadd_ps(xv, wv[v], acc[i][v]);
    }
  }
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 4
  for (int i = 0; i < NI; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < KV; ++v)   // max(0, NaN) = NaN, as every ReLU of kilnet
      _mm512_storeu_ps(h + i * K + 16 * v, relu ? _mm512_max_ps(zero, acc[i][v]) : acc[i][v]);
}

template <int KV>
void h_of_pixel(const Conv2dShape& s, const float* x, int nt, const index_t* off, const index_t* wrow,
                const float* wc, const float* bc, bool relu, float* h) {
  constexpr index_t K = 16 * KV;
  const index_t img = s.H * s.W * s.C;
  index_t n = 0;
  for (; n + 4 <= s.N; n += 4) h_images<KV, 4>(x + n * img, img, nt, off, wrow, wc, bc, relu, h + n * K);
  for (; n < s.N; ++n) h_images<KV, 1>(x + n * img, img, nt, off, wrow, wc, bc, relu, h + n * K);
}

// The same for an interior pixel whose nt <= TR taps' rows of wc are held in registers (loaded
// once per pixel, not once per group of images): x points at the window's first value, rel are
// the taps' offsets from it.
template <int KV, int TR, int NI>
__attribute__((always_inline)) inline void h_images_regs(const float* x, index_t img, int nt, const index_t* rel,
                                                         const __m512 (&w)[TR][KV], const __m512 (&b)[KV], bool relu,
                                                         float* h) {
  constexpr index_t K = 16 * KV;
  __m512 acc[NI][KV];
#pragma GCC unroll 8
  for (int i = 0; i < NI; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < KV; ++v) acc[i][v] = b[v];
#pragma GCC unroll 18
  for (int t = 0; t < TR; ++t) {
    if (t < nt) {
      const index_t o = rel[t];
#pragma GCC unroll 8
      for (int i = 0; i < NI; ++i) {
        const __m512 xv = _mm512_set1_ps(x[i * img + o]);
#pragma GCC unroll 2
        for (int v = 0; v < KV; ++v) acc[i][v] = _mm512_fmadd_ps(xv, w[t][v], acc[i][v]);
      }
    }
  }
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int i = 0; i < NI; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < KV; ++v)
      _mm512_storeu_ps(h + i * K + 16 * v, relu ? _mm512_max_ps(zero, acc[i][v]) : acc[i][v]);
}

template <int KV>
struct PixelConv {
  static constexpr int TR = 18 / KV;   // taps held in registers: 9 for K = 32 (18 zmm)
  static constexpr int NI = 8 / KV;    // images a group (8 accumulators)
  const Conv2dShape& s;
  const float* x;
  const float* wc;
  const float* bc;
  bool relu;
  index_t img;
  int T = 0;
  index_t rel[kMaxTaps], wrow[kMaxTaps];

  PixelConv(const Conv2dShape& s_, const float* x_, const float* wc_, const float* bc_, bool relu_)
      : s(s_), x(x_), wc(wc_), bc(bc_), relu(relu_), img(s_.H * s_.W * s_.C) {
    for (index_t r = 0; r < s.R; ++r)
      for (index_t t = 0; t < s.S; ++t)
        for (index_t c = 0; c < s.C; ++c) {
          rel[T] = (r * s.dilation_h * s.W + t * s.dilation_w) * s.C + c;
          wrow[T] = ((r * s.S + t) * s.C + c) * s.K;
          ++T;
        }
  }

  // h (N x K) of output pixel pix; off/wr receive its valid taps (offsets into an image, rows of
  // wc); returns their count. Interior pixels take every tap and, when they fit, the registers.
  int operator()(index_t pix, float* h, index_t* off, index_t* wr) const {
    const index_t p = pix / s.Q, q = pix % s.Q;
    const index_t ih = p * s.stride_h - s.pad_h, iw = q * s.stride_w - s.pad_w;
    if (!(ih >= 0 && ih + (s.R - 1) * s.dilation_h < s.H && iw >= 0 && iw + (s.S - 1) * s.dilation_w < s.W)) {
      const int nt = taps_of(s, p, q, off, wr);
      h_of_pixel<KV>(s, x, nt, off, wr, wc, bc, relu, h);
      return nt;
    }
    const index_t base = (ih * s.W + iw) * s.C;
    for (int t = 0; t < T; ++t) {
      off[t] = base + rel[t];
      wr[t] = wrow[t];
    }
    if (T > TR) {
      h_of_pixel<KV>(s, x, T, off, wr, wc, bc, relu, h);
      return T;
    }
    __m512 w[TR][KV], b[KV];
#pragma GCC unroll 18
    for (int t = 0; t < TR; ++t)
#pragma GCC unroll 2
      for (int v = 0; v < KV; ++v) w[t][v] = t < T ? _mm512_loadu_ps(wc + wrow[t] + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 2
    for (int v = 0; v < KV; ++v) b[v] = bc ? _mm512_loadu_ps(bc + 16 * v) : _mm512_setzero_ps();
    constexpr index_t K = 16 * KV;
    const float* xb = x + base;
    index_t n = 0;
    for (; n + NI <= s.N; n += NI) h_images_regs<KV, TR, NI>(xb + n * img, img, T, rel, w, b, relu, h + n * K);
    for (; n < s.N; ++n) h_images_regs<KV, TR, 1>(xb + n * img, img, T, rel, w, b, relu, h + n * K);
    return T;
  }
};

// wt[v][u] := lanes j of column u of the pixel's Dense rows 16v + j (w: K x U): each 16 rows
// (16 * U floats) loaded as 16 masked rows and transposed in registers. (Zen 4's 16-lane
// gathers took ~24 cycles each: 15% of the canonical CNN's backward.)
template <int KV>
inline void columns_of(index_t U, const float* w, __m512 (&wt)[KV][16]) {
  const __mmask16 m = lanes(U);
#pragma GCC unroll 1
  for (int v = 0; v < KV; ++v) {
    __m512 r[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) r[j] = _mm512_maskz_loadu_ps(m, w + (16 * v + j) * U);
    transpose16x16_ps(r);
#pragma GCC unroll 16
    for (int u = 0; u < 16; ++u) wt[v][u] = r[u];
  }
}

// The pixel's Dense rows of the weight gradient, dw[k] (+)= sum over images h[n][k] dz[n]: 16
// channels k in the lanes and one accumulator per unit (full vectors: U FMAs an image where
// rows of U lanes took 16), transposed back to rows once at the end. (U as a template argument,
// without the tests u < U, measured 0.5% faster: not worth 16 copies.)
template <int KV>
void dense_rows_grad(index_t N, index_t U, const float* h, const float* dz, float* dw, bool overwrite) {
  constexpr index_t K = 16 * KV;
  const __mmask16 m = lanes(U);
#pragma GCC unroll 1
  for (int v = 0; v < KV; ++v) {
    __m512 a[16];
#pragma GCC unroll 16
    for (int u = 0; u < 16; ++u) a[u] = _mm512_setzero_ps();
    for (index_t n = 0; n < N; ++n) {
      const __m512 hv = _mm512_loadu_ps(h + n * K + 16 * v);
      const float* d = dz + n * U;
#pragma GCC unroll 16
      for (int u = 0; u < 16; ++u)
        if (u < U) a[u] = _mm512_fmadd_ps(_mm512_set1_ps(d[u]), hv, a[u]);
    }
    transpose16x16_ps(a);   // a[j]: row 16v + j, lanes u < U
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) {
      float* o = dw + (16 * v + j) * U;
      _mm512_mask_storeu_ps(o, m, overwrite ? a[j] : _mm512_add_ps(a[j], _mm512_maskz_loadu_ps(m, o)));
    }
  }
}

// dh = act'(h) * (dz . w^T) for the pixel, written over h (N x K): w's K rows as U column
// vectors per 16 channels, then four images at a time.
template <int KV>
void dh_of_pixel(index_t N, index_t U, bool relu, const float* dz, const float* w, float* h) {
  constexpr index_t K = 16 * KV;
  __m512 wt[KV][16];
  columns_of<KV>(U, w, wt);
  const __m512 zero = _mm512_setzero_ps();
  index_t n = 0;
  for (; n + 4 <= N; n += 4) {
    __m512 a[4][KV];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i)
#pragma GCC unroll 2
      for (int v = 0; v < KV; ++v) a[i][v] = zero;
    const float* d = dz + n * U;
    for (index_t u = 0; u < U; ++u) {
#pragma GCC unroll 4
      for (int i = 0; i < 4; ++i) {
        const __m512 b = _mm512_set1_ps(d[i * U + u]);
#pragma GCC unroll 2
        for (int v = 0; v < KV; ++v) a[i][v] = _mm512_fmadd_ps(b, wt[v][u], a[i][v]);
      }
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i)
#pragma GCC unroll 2
      for (int v = 0; v < KV; ++v) {
        float* o = h + (n + i) * K + 16 * v;
        const __m512 g = relu ? _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_loadu_ps(o), zero, _CMP_GT_OQ), a[i][v])
                              : a[i][v];
        _mm512_storeu_ps(o, g);
      }
  }
  for (; n < N; ++n) {
#pragma GCC unroll 2
    for (int v = 0; v < KV; ++v) {
      __m512 a = zero;
      for (index_t u = 0; u < U; ++u) a = _mm512_fmadd_ps(_mm512_set1_ps(dz[n * U + u]), wt[v][u], a);
      float* o = h + n * K + 16 * v;
      _mm512_storeu_ps(o, relu ? _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_loadu_ps(o), zero, _CMP_GT_OQ), a) : a);
    }
  }
}

template <int KV>
void pixel_backward_t(const Conv2dShape& s, bool relu, const float* x, const float* wc, const float* bc,
                      index_t U, const float* wd, const float* dz, index_t pix0, index_t pix1, float* dwc,
                      float* dbc, float* dwd, bool overwrite, float* h) {
  constexpr index_t K = 16 * KV;
  const index_t img = s.H * s.W * s.C, N = s.N;
  index_t off[kMaxTaps], wrow[kMaxTaps];
  __m512 db[KV];
#pragma GCC unroll 2
  for (int v = 0; v < KV; ++v) db[v] = _mm512_setzero_ps();
  const PixelConv<KV> conv(s, x, wc, bc, relu);
  for (index_t pix = pix0; pix < pix1; ++pix) {
    if (pix + 1 < pix1) {
      if (dwc) prefetch_rows(wd + (pix + 1) * K * U, K * U);
      prefetch_rows(dwd + (pix + 1) * K * U, K * U);
    }
    const int nt = conv(pix, h, off, wrow);
    dense_rows_grad<KV>(N, U, h, dz, dwd + pix * K * U, overwrite);
    if (dwc == nullptr) continue;   // the Dense's gradients only
    dh_of_pixel<KV>(N, U, relu, dz, wd + pix * K * U, h);   // h now holds dh
    // the convolution's weight gradient: dwc[tap] += sum over images x[n][tap] dh[n], in chunks
    // of up to TC taps of equal size (9 taps: one chunk), and the bias gradient in the first
    constexpr int TC = 24 / KV;
    const int chunks = (nt + TC - 1) / TC, per = chunks ? (nt + chunks - 1) / chunks : 0;
    if (nt == 0 && dbc)   // a pixel whose window is all padding still has act(bias) and a dh
      for (index_t n = 0; n < N; ++n)
#pragma GCC unroll 2
        for (int v = 0; v < KV; ++v) db[v] = _mm512_add_ps(db[v], _mm512_loadu_ps(h + n * K + 16 * v));
    for (int t0 = 0; t0 < nt; t0 += per) {
      const int tc = nt - t0 < per ? nt - t0 : per;
      const bool bias = dbc != nullptr && t0 == 0;
      __m512 a[TC][KV];
#pragma GCC unroll 24
      for (int i = 0; i < TC; ++i)
#pragma GCC unroll 2
        for (int v = 0; v < KV; ++v) a[i][v] = _mm512_setzero_ps();
      for (index_t n = 0; n < N; ++n) {
        const float* xn = x + n * img;
        __m512 g[KV];
#pragma GCC unroll 2
        for (int v = 0; v < KV; ++v) g[v] = _mm512_loadu_ps(h + n * K + 16 * v);
        if (bias)
#pragma GCC unroll 2
          for (int v = 0; v < KV; ++v) db[v] = _mm512_add_ps(db[v], g[v]);
#pragma GCC unroll 24
        for (int i = 0; i < TC; ++i) {
          if (i < tc) {
            const __m512 xv = _mm512_set1_ps(xn[off[t0 + i]]);
#pragma GCC unroll 2
            for (int v = 0; v < KV; ++v) a[i][v] = _mm512_fmadd_ps(xv, g[v], a[i][v]);
          }
        }
      }
      for (int i = 0; i < tc; ++i)
#pragma GCC unroll 2
        for (int v = 0; v < KV; ++v) {
          float* o = dwc + wrow[t0 + i] + 16 * v;
          _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), a[i][v]));
        }
    }
  }
  if (dbc)
#pragma GCC unroll 2
    for (int v = 0; v < KV; ++v) _mm512_storeu_ps(dbc + 16 * v, _mm512_add_ps(_mm512_loadu_ps(dbc + 16 * v), db[v]));
}

}  // namespace

int pixel_max_taps() { return kMaxTaps; }

// For output pixels [pix0, pix1): their Dense rows of dwd (overwritten or added to), and
// dwc/dbc (K = 16 or 32 wide rows) added to, unless dwc is nullptr; h: N x K floats of scratch.
void pixel_backward(const Conv2dShape& s, bool relu, const float* x, const float* wc, const float* bc, index_t U,
                    const float* wd, const float* dz, index_t pix0, index_t pix1, float* dwc, float* dbc,
                    float* dwd, bool overwrite, float* h) {
  if (s.K == 32) return pixel_backward_t<2>(s, relu, x, wc, bc, U, wd, dz, pix0, pix1, dwc, dbc, dwd, overwrite, h);
  pixel_backward_t<1>(s, relu, x, wc, bc, U, wd, dz, pix0, pix1, dwc, dbc, dwd, overwrite, h);
}

}  // namespace kilnet::cpu::avx512
