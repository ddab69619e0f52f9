// conv_dense_lanes_avx512.cpp — the forward of the fused Conv2D -> Flatten -> Dense pixel path
// (conv_dense.cpp) with 16 images in the lanes of each vector.
//
// With the channels in the lanes (the backward's layout, conv_dense_avx512.cpp) the logits of
// an image take one FMA per channel on a row of U of the 16 lanes (U = 10: 62% of each FMA
// used). With the images in the lanes every product is a full vector: channel k of 16 images
// is h = act(b[k] + sum over taps wc[tap][k] x[tap]) with the taps' x vectors held in registers
// for the pixel, and it goes straight into U logit accumulators that stay in registers for all
// the pixels of the call: T + U FMAs per channel and 16 images where the channels-in-lanes path
// took (T + 16) per 16 channels and image. The sums run in the order of the 8-image groups there
// (bias, then the taps; pixels, then channels): the same bits where N is a multiple of 8.
//
// Built with the AVX-512 flags; includes no project header with inline functions outside an
// anonymous namespace and instantiates no std:: templates (see conv2d_avx512.cpp).
#include <immintrin.h>

#include "kilnet/conv2d.h"   // Conv2dShape (a plain struct; no inline functions)
#include "lanes_avx512.h"
#include "transpose_avx512.h"

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"   // GCC 12's _mm512_max_ps (a false alarm)

namespace kilnet::cpu::avx512 {
namespace {

inline __mmask16 lanes(index_t u) { return __mmask16((1u << unsigned(u)) - 1u); }

constexpr int kMaxTaps = 64;   // as conv_dense_avx512.cpp's pixel path (conv_dense.cpp checks it)
constexpr int kMaxK = 32;      // channels the pixel path takes
constexpr int kRegTaps = 9;    // the taps whose x vectors a pixel holds in registers (3x3, one channel)

// The next pixel's Dense rows, fetched while this one computes (cold after the optimizer's pass).
inline void prefetch_rows(const float* w, index_t n) {
  const char* p = reinterpret_cast<const char*>(w);
  for (index_t b = 0; b < n * index_t(sizeof(float)); b += 64) _mm_prefetch(p + b, _MM_HINT_T0);
}

struct Taps {
  int T = 0;                    // all taps of a window
  index_t rel[kMaxTaps];        // offset of tap t from the window's first value (elements)
  float wct[kMaxK * kMaxTaps];  // wct[k * T + t] = wc[tap t][k]: a channel's taps contiguous

  Taps(const Conv2dShape& s, const float* wc) {
    for (index_t r = 0; r < s.R; ++r)
      for (index_t t = 0; t < s.S; ++t)
        for (index_t c = 0; c < s.C; ++c) {
          rel[T] = (r * s.dilation_h * s.W + t * s.dilation_w) * s.C + c;
          for (index_t k = 0; k < s.K; ++k) wct[k * s.R * s.S * s.C + T] = wc[((r * s.S + t) * s.C + c) * s.K + k];
          ++T;
        }
  }
};

// What a call's groups of 16 images share.
struct Call {
  const Conv2dShape& s;
  Taps tp;
  float bias[kMaxK];
  __m512 floor;   // 0 for ReLU (max(0, NaN) = NaN, as every ReLU of kilnet), -inf for linear
  const float* wd;
  index_t pix0, pix1;

  Call(const Conv2dShape& s_, bool relu, const float* wc, const float* bc, const float* wd_, index_t p0, index_t p1)
      : s(s_), tp(s_, wc), wd(wd_), pix0(p0), pix1(p1) {
    for (index_t k = 0; k < s.K; ++k) bias[k] = bc ? bc[k] : 0.0f;
    floor = relu ? _mm512_setzero_ps() : _mm512_set1_ps(-__builtin_inff());
  }
};

// z rows of the group's ni images (+)= their logits over the call's pixels, from xg (the
// group's images in the lanes), on W's lanes (16, or 8 for a group of up to 8: lanes_avx512.h).
// NU = U, a template argument: with a test u < U per FMA (or a switch on U per channel, which
// left the accumulators on the stack) the loop ran 25-35% slower.
template <class W, int NU>
void group_logits_on(const Call& c, const float* xg, index_t ni, float* z) {
  using V = typename W::V;
  const Conv2dShape& s = c.s;
  const index_t K = s.K;
  const int T = c.tp.T;
  const V floor = W::low(c.floor);
  V za[16];
#pragma GCC unroll 16
  for (int u = 0; u < 16; ++u) za[u] = W::zero();
  index_t off[kMaxTaps];
  int tix[kMaxTaps];
  for (index_t pix = c.pix0; pix < c.pix1; ++pix) {
    if (pix + 1 < c.pix1) prefetch_rows(c.wd + (pix + 1) * K * NU, K * NU);
    const float* w = c.wd + pix * K * NU;   // the pixel's K rows of the Dense weights
    const index_t p = pix / s.Q, q = pix % s.Q;
    const index_t ih = p * s.stride_h - s.pad_h, iw = q * s.stride_w - s.pad_w;
    const bool interior =
        ih >= 0 && ih + (s.R - 1) * s.dilation_h < s.H && iw >= 0 && iw + (s.S - 1) * s.dilation_w < s.W;
    if (interior && T == kRegTaps) {   // 3x3 windows of one channel: the taps' x in registers
      const float* xb = xg + (ih * s.W + iw) * s.C * 16;
      V xv[kRegTaps];
#pragma GCC unroll 9
      for (int t = 0; t < kRegTaps; ++t) xv[t] = W::load(xb + c.tp.rel[t] * 16);
      for (index_t k = 0; k < K; ++k) {
        const float* wk = c.tp.wct + k * kRegTaps;
        V h = W::set1(c.bias[k]);
#pragma GCC unroll 9
        for (int t = 0; t < kRegTaps; ++t) h = W::fmadd(W::set1(wk[t]), xv[t], h);
        h = W::max(floor, h);
#pragma GCC unroll 16
        for (int u = 0; u < NU; ++u) za[u] = W::fmadd(W::set1(w[k * NU + u]), h, za[u]);
      }
      continue;
    }
    int nt = 0;   // the taps inside the image, in the order of wc's rows
    for (index_t r = 0, t = 0; r < s.R; ++r)
      for (index_t e = 0; e < s.S; ++e)
        for (index_t ch = 0; ch < s.C; ++ch, ++t) {
          const index_t row = ih + r * s.dilation_h, col = iw + e * s.dilation_w;
          if (row < 0 || row >= s.H || col < 0 || col >= s.W) continue;
          off[nt] = (row * s.W + col) * s.C + ch;
          tix[nt] = static_cast<int>(t);
          ++nt;
        }
    for (index_t k = 0; k < K; ++k) {
      const float* wk = c.tp.wct + k * T;
      V h = W::set1(c.bias[k]);
      for (int t = 0; t < nt; ++t) h = W::fmadd(W::set1(wk[tix[t]]), W::load(xg + off[t] * 16), h);
      h = W::max(floor, h);
#pragma GCC unroll 16
      for (int u = 0; u < NU; ++u) za[u] = W::fmadd(W::set1(w[k * NU + u]), h, za[u]);
    }
  }
  __m512 zt[16];
#pragma GCC unroll 16
  for (int u = 0; u < 16; ++u) zt[u] = W::wide(za[u]);
  transpose16x16_ps(zt);   // zt[j]: the U logits of image j of the group (lanes >= U are 0)
  const __mmask16 m = lanes(NU);
  for (index_t j = 0; j < ni; ++j) {
    float* o = z + j * NU;
    _mm512_mask_storeu_ps(o, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, o), zt[j]));
  }
}

template <int NU>
void group_logits(const Call& c, const float* xg, index_t ni, float* z) {
  if (ni <= 8)
    group_logits_on<Lanes8, NU>(c, xg, ni, z);
  else
    group_logits_on<Lanes16, NU>(c, xg, ni, z);
}

}  // namespace

// Whether the forward takes this convolution (its arrays' sizes; conv_dense.cpp's pixel path asks).
bool lanes_fit(const Conv2dShape& s) { return s.K <= kMaxK && s.R * s.S * s.C <= kMaxTaps; }

// xt[g][i][j] = x[16g + j][i] for i < F (an image's H*W*C values), lanes of missing images 0:
// 16 x 16 blocks transposed in registers.
void images_in_lanes(index_t N, index_t F, const float* x, float* xt) {
  for (index_t g = 0; g * 16 < N; ++g) {
    const index_t ni = N - 16 * g < 16 ? N - 16 * g : 16;
    float* dst = xt + g * F * 16;
    for (index_t i0 = 0; i0 < F; i0 += 16) {
      const index_t w = F - i0 < 16 ? F - i0 : 16;
      __m512 r[16];
#pragma GCC unroll 16
      for (int j = 0; j < 16; ++j)
        r[j] = j < ni ? _mm512_maskz_loadu_ps(lanes(w), x + (16 * g + j) * F + i0) : _mm512_setzero_ps();
      transpose16x16_ps(r);   // r[i]: value i0 + i of the 16 images
      for (index_t i = 0; i < w; ++i) _mm512_storeu_ps(dst + (i0 + i) * 16, r[i]);
    }
  }
}

// z (N x U) += the logits of output pixels [pix0, pix1), from xt (images_in_lanes of x).
void pixel_forward(const Conv2dShape& s, bool relu, const float* xt, const float* wc, const float* bc, index_t U,
                   const float* wd, index_t pix0, index_t pix1, float* z) {
  const index_t F = s.H * s.W * s.C;
  const Call c(s, relu, wc, bc, wd, pix0, pix1);
  for (index_t g = 0; g * 16 < s.N; ++g) {
    const float* xg = xt + g * F * 16;
    const index_t ni = s.N - 16 * g < 16 ? s.N - 16 * g : 16;
    float* zg = z + 16 * g * U;
    switch (U) {
      case 1: group_logits<1>(c, xg, ni, zg); break;
      case 2: group_logits<2>(c, xg, ni, zg); break;
      case 3: group_logits<3>(c, xg, ni, zg); break;
      case 4: group_logits<4>(c, xg, ni, zg); break;
      case 5: group_logits<5>(c, xg, ni, zg); break;
      case 6: group_logits<6>(c, xg, ni, zg); break;
      case 7: group_logits<7>(c, xg, ni, zg); break;
      case 8: group_logits<8>(c, xg, ni, zg); break;
      case 9: group_logits<9>(c, xg, ni, zg); break;
      case 10: group_logits<10>(c, xg, ni, zg); break;
      case 11: group_logits<11>(c, xg, ni, zg); break;
      case 12: group_logits<12>(c, xg, ni, zg); break;
      case 13: group_logits<13>(c, xg, ni, zg); break;
      case 14: group_logits<14>(c, xg, ni, zg); break;
      case 15: group_logits<15>(c, xg, ni, zg); break;
      default: group_logits<16>(c, xg, ni, zg); break;   // conv_dense.cpp takes U <= 16
    }
  }
}

}  // namespace kilnet::cpu::avx512
