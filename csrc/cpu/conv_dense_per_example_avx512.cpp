// conv_dense_per_example_avx512.cpp — DP-SGD's per-example pass over the fused Conv2D -> Flatten
// -> Dense pair (conv_dense.cpp's conv_dense_per_example) for any number of channels, up to 16
// units and 256 taps R*S*C, ReLU or linear: each example's own convolution weight and bias gradients and |h|^2 (the
// Dense weight gradient's squared norm is |h|^2 |dz|^2), with the convolution's output h and its
// gradient dh computed pixel by pixel and never stored (the unfused DP step wrote h and dh of the
// whole batch, 2 x 2.8 MB at batch 32 on the canonical CNN, and read them back twice).
//
// 16 examples in the lanes, as the forward (conv_dense_lanes_avx512.cpp): for channel k, over all
// output pixels, h = act(b[k] + sum over taps wc[tap][k] x[tap]) (T FMAs), dh = act'(h) * sum over
// units wd[pixel, k, u] dz[u] (U FMAs, the examples' dz in registers), and the weight gradient of
// each tap dwc[tap][k] += x[tap] dh (T FMAs) into accumulators that stay in registers for the
// whole channel: every FMA a full vector, and no address computed per tap beyond a constant
// offset. With the channels in the lanes instead (one example a pass, its accumulators in
// registers) the same FMAs ran at about half the rate, in the per-tap offsets' scalar work.
//
// Built with the AVX-512 flags; includes no project header with inline functions and
// instantiates no std:: templates (see conv2d_avx512.cpp).
#include <immintrin.h>

#include "kilnet/conv2d.h"   // Conv2dShape (a plain struct; no inline functions)
#include "lanes_avx512.h"
#include "transpose_avx512.h"

#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"   // GCC 12's _mm512_max_ps (a false alarm)

namespace kilnet::cpu::avx512 {
namespace {

constexpr int TR = 9;          // taps' accumulators a pass over the pixels (registers)
constexpr int kMaxTaps = 256;  // R*S*C taken (conv_dense.cpp asks per_example_max_taps)

inline __mmask16 lanes(index_t u) { return __mmask16((1u << unsigned(u)) - 1u); }

// The images the pass reads, 16 to a group with the examples in the lanes: when an output pixel's
// window reaches the padding, the padding is made explicit (zeros), so that no tap is tested.
struct Padded {
  index_t hp, wp;   // rows and columns
};

Padded padded_of(const Conv2dShape& s) {
  const index_t hp = (s.P - 1) * s.stride_h + (s.R - 1) * s.dilation_h + 1;
  const index_t wp = (s.Q - 1) * s.stride_w + (s.S - 1) * s.dilation_w + 1;
  if (s.pad_h == 0 && s.pad_w == 0 && hp <= s.H && wp <= s.W) return {s.H, s.W};
  return {hp, wp};
}

struct Call {
  const Conv2dShape& s;
  Padded d;
  bool relu;
  index_t U, T;
  const float* wc;
  const float* bc;
  const float* wd;
  const float* xt;         // the padded images in the lanes, group after group
  index_t rel[kMaxTaps + TR] = {};   // the taps' offsets (values) in a padded image; extra taps: 0
};

// Channel k of group g (xg its padded images in the lanes, dzv[u] its examples' dz[u]): acc[t]
// for taps [t0, t0 + TR) over all pixels; hq += h^2 and db += dh in the first chunk, which also
// keeps dh per pixel in dbuf when there are more chunks. TT = T when it is 9 (unrolled), else 0.
// W: 16 lanes, or 8 for a group of up to 8 examples (lanes_avx512.h).
template <class W, int NU, int TT>
void channel_chunk(const Call& c, const float* xg, const typename W::V (&dzv)[16], index_t k, index_t t0,
                   typename W::V (&acc)[TR], typename W::V& hq, typename W::V& db, float* dbuf) {
  using V = typename W::V;
  const Conv2dShape& s = c.s;
  const index_t K = s.K, T = TT ? TT : c.T;
  const bool first = t0 == 0, keep = T > TR;
  const V zero = W::zero();
  const V bias = W::set1(c.bc ? c.bc[k] : 0.0f);
  const V floor = c.relu ? zero : W::set1(-__builtin_inff());   // max(0, NaN) = NaN, as every ReLU of kilnet
  float wk[kMaxTaps];
  for (index_t t = 0; t < T; ++t) wk[t] = c.wc[t * K + k];
  const index_t* rt = c.rel + t0;
  const index_t row = s.stride_h * c.d.wp * s.C * 16, col = s.stride_w * s.C * 16;
#pragma GCC unroll 9
  for (int t = 0; t < TR; ++t) acc[t] = zero;
  for (index_t p = 0; p < s.P; ++p)
    for (index_t q = 0; q < s.Q; ++q) {
      const index_t pix = p * s.Q + q;
      const float* xb = xg + p * row + q * col;
      V g;
      if (first) {
        V h0 = bias, h1 = zero;
        if (TT) {
#pragma GCC unroll 9
          for (int t = 0; t < TT; ++t) {
            if (t % 2 == 0)
              h0 = W::fmadd(W::set1(wk[t]), W::load(xb + c.rel[t] * 16), h0);
            else
              h1 = W::fmadd(W::set1(wk[t]), W::load(xb + c.rel[t] * 16), h1);
          }
        } else {
          index_t t = 0;
          for (; t + 2 <= T; t += 2) {   // two chains: the taps' FMAs are a dependent sum
            h0 = W::fmadd(W::set1(wk[t]), W::load(xb + c.rel[t] * 16), h0);
            h1 = W::fmadd(W::set1(wk[t + 1]), W::load(xb + c.rel[t + 1] * 16), h1);
          }
          if (t < T) h0 = W::fmadd(W::set1(wk[t]), W::load(xb + c.rel[t] * 16), h0);
        }
        const V h = W::max(floor, W::add(h0, h1));
        hq = W::fmadd(h, h, hq);
        const float* w = c.wd + (pix * K + k) * NU;   // the pixel's Dense row of channel k
        V e0 = zero, e1 = zero;
#pragma GCC unroll 16
        for (int u = 0; u < NU; ++u) {
          if (u % 2 == 0)
            e0 = W::fmadd(W::set1(w[u]), dzv[u], e0);
          else
            e1 = W::fmadd(W::set1(w[u]), dzv[u], e1);
        }
        g = W::add(e0, e1);
        if (c.relu) g = W::where_positive(h, g);
        db = W::add(db, g);
        if (keep) W::store(dbuf + pix * 16, g);
      } else {
        g = W::load(dbuf + pix * 16);
      }
#pragma GCC unroll 9
      for (int t = 0; t < TR; ++t) acc[t] = W::fmadd(W::load(xb + rt[t] * 16), g, acc[t]);
    }
}

// Channels [k0, k1) of the group of ni examples from n on W's lanes: their rows of per (row
// floats an example) and |h|^2 summed over those channels into hsq16 (16 lanes).
template <class W, int NU>
void group_channels_on(const Call& c, const float* dz, index_t n, index_t ni, index_t k0, index_t k1, float* per,
                       index_t row, float* hsq16, float* dbuf) {
  using V = typename W::V;
  const Conv2dShape& s = c.s;
  const index_t K = s.K, T = c.T;
  const float* xg = c.xt + (n / 16) * c.d.hp * c.d.wp * s.C * 16;
  __m512 d16[16];
#pragma GCC unroll 16
  for (int j = 0; j < 16; ++j) d16[j] = j < ni ? _mm512_maskz_loadu_ps(lanes(NU), dz + (n + j) * NU) : _mm512_setzero_ps();
  transpose16x16_ps(d16);   // d16[u]: dz[.][u] of the group's examples
  V dzv[16];
#pragma GCC unroll 16
  for (int u = 0; u < 16; ++u) dzv[u] = W::low(d16[u]);
  V hq = W::zero();
  alignas(64) float lane[16];
  for (index_t k = k0; k < k1; ++k) {
    V db = W::zero();
    for (index_t t0 = 0; t0 < T; t0 += TR) {
      V acc[TR];
      if (T == 9)
        channel_chunk<W, NU, 9>(c, xg, dzv, k, t0, acc, hq, db, dbuf);
      else
        channel_chunk<W, NU, 0>(c, xg, dzv, k, t0, acc, hq, db, dbuf);
      const index_t tc = T - t0 < TR ? T - t0 : TR;
      for (index_t t = 0; t < tc; ++t) {
        W::store(lane, acc[t]);
        for (index_t j = 0; j < ni; ++j) per[(n + j) * row + (t0 + t) * K + k] = lane[j];
      }
    }
    if (c.bc) {
      W::store(lane, db);
      for (index_t j = 0; j < ni; ++j) per[(n + j) * row + T * K + k] = lane[j];
    }
  }
  W::store(lane, hq);
  for (index_t j = 0; j < ni; ++j) hsq16[j] += lane[j];
}

template <int NU>
void group_channels(const Call& c, const float* dz, index_t n, index_t ni, index_t k0, index_t k1, float* per,
                    index_t row, float* hsq16, float* dbuf) {
  if (ni <= 8)
    group_channels_on<Lanes8, NU>(c, dz, n, ni, k0, k1, per, row, hsq16, dbuf);
  else
    group_channels_on<Lanes16, NU>(c, dz, n, ni, k0, k1, per, row, hsq16, dbuf);
}

}  // namespace

int per_example_max_taps() { return kMaxTaps; }

// Floats of the padded images in the lanes (per_example_images), and of the scratch each thread
// of per_example_channels needs.
index_t per_example_images_size(const Conv2dShape& s) {
  const Padded d = padded_of(s);
  return (s.N + 15) / 16 * d.hp * d.wp * s.C * 16;
}
index_t per_example_scratch(const Conv2dShape& s) { return s.P * s.Q * 16 + (s.N + 15) / 16 * 16; }

// xt := the images, 16 to a group with the examples in the lanes (missing ones 0), padded: each
// image row's W*C values in 16 x 16 blocks transposed in registers.
void per_example_images(const Conv2dShape& s, const float* x, float* xt) {
  const Padded d = padded_of(s);
  const index_t WC = s.W * s.C, gsize = d.hp * d.wp * s.C * 16, all = per_example_images_size(s);
  if (d.hp != s.H || d.wp != s.W)   // the padding's zeros (else every value is written below)
    for (index_t i = 0; i < all; ++i) xt[i] = 0.0f;
  for (index_t g = 0; g * 16 < s.N; ++g) {
    const index_t ni = s.N - 16 * g < 16 ? s.N - 16 * g : 16;
    for (index_t ih = 0; ih < s.H; ++ih) {
      const index_t r = ih + s.pad_h;
      if (r >= d.hp) break;
      float* dst = xt + g * gsize + (r * d.wp + s.pad_w) * s.C * 16;
      for (index_t i0 = 0; i0 < WC; i0 += 16) {
        const index_t w = WC - i0 < 16 ? WC - i0 : 16;
        __m512 v[16];
#pragma GCC unroll 16
        for (int j = 0; j < 16; ++j)
          v[j] = j < ni ? _mm512_maskz_loadu_ps(lanes(w), x + ((16 * g + j) * s.H + ih) * WC + i0) : _mm512_setzero_ps();
        transpose16x16_ps(v);   // v[i]: value i0 + i of the row, 16 examples
        for (index_t i = 0; i < w; ++i)
          if ((i0 + i) / s.C + s.pad_w < d.wp) _mm512_storeu_ps(dst + (i0 + i) * 16, v[i]);
      }
    }
  }
}

// Channels [k0, k1) of every example: per[n] = [dwc_n (R*S*C*K), dbc_n (K, when bc)] in those
// channels' columns, and hsq[n] += |h_n|^2 over those channels (a partial sum of the thread's
// own). xt: per_example_images.
void per_example_channels(const Conv2dShape& s, bool relu, const float* xt, const float* wc, const float* bc,
                          index_t U, const float* wd, const float* dz, index_t k0, index_t k1, float* per, float* hsq,
                          float* scratch) {
  Call c{s, padded_of(s), relu, U, s.R * s.S * s.C, wc, bc, wd, xt};
  index_t t = 0;
  for (index_t r = 0; r < s.R; ++r)
    for (index_t e = 0; e < s.S; ++e)
      for (index_t ch = 0; ch < s.C; ++ch) c.rel[t++] = (r * s.dilation_h * c.d.wp + e * s.dilation_w) * s.C + ch;
  const index_t row = c.T * s.K + (bc ? s.K : 0);
  float* dbuf = scratch;
  float* hsq16 = scratch + s.P * s.Q * 16;
  for (index_t n = 0; n < s.N; n += 16) {
    const index_t ni = s.N - n < 16 ? s.N - n : 16;
    float* h16 = hsq16 + n;
    for (int j = 0; j < 16; ++j) h16[j] = 0.0f;
    switch (U) {
      case 1: group_channels<1>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      case 2: group_channels<2>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      case 3: group_channels<3>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      case 4: group_channels<4>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      case 5: group_channels<5>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      case 6: group_channels<6>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      case 7: group_channels<7>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      case 8: group_channels<8>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      case 9: group_channels<9>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      case 10: group_channels<10>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      case 11: group_channels<11>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      case 12: group_channels<12>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      case 13: group_channels<13>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      case 14: group_channels<14>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      case 15: group_channels<15>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;
      default: group_channels<16>(c, dz, n, ni, k0, k1, per, row, h16, dbuf); break;   // U <= 16 (conv_dense.cpp)
    }
    for (index_t j = 0; j < ni; ++j) hsq[n + j] += h16[j];
  }
}

}  // namespace kilnet::cpu::avx512
