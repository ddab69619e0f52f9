// attention_kern_avx512.h — the attention tile kernels (attention_internal.h's contracts) on 16
// lanes: the float32 gemm, the softmax passes and the transposing packer. In an anonymous
// namespace, included only by files built with the AVX-512 flags: attention_avx512.cpp (the
// float32 items) and attention_amx.cpp (the bfloat16 items, which replace only the gemm).
//
// gemm: register tiles of up to 6 rows x 64 columns (24 zmm accumulators and 4 B vectors of the
// 32 registers; the A values go in as embedded broadcasts {1to16}). One 64-column panel covers a
// whole 64-query tile or a head dim of 64 in one pass over K, so each B row is loaded once per 6
// rows of C. A may be any strided view (a row of K, a column of P^T); the last vector of a B row
// goes through a lane mask (head dims like 8, 63 or 80 need no padding copy).
#pragma once
#include <immintrin.h>
#include <cmath>
#include "attention_internal.h"
#include "vexp_avx512.h"

// GCC 12's avx512fintrin.h passes _mm512_undefined_ps() as the unused merge source of max/min/
// roundscale: -W(maybe-)uninitialized reports it at every use (a false alarm).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

namespace kilnet::cpu::attn_detail {
namespace {

inline __mmask16 lanes(index_t n) {   // lanes [0, n) on, n in [1, 16]
  return static_cast<__mmask16>((1u << n) - 1u);
}

// C[R][NV*16] (+)= A[R][K] B[K][NV*16]; PART: the last vector has only the lanes of msk.
template <int R, int NV, bool PART>
void micro(index_t K, const float* a, index_t a_rs, index_t a_ks, const float* b, index_t b_ks,
           float* c, index_t c_rs, bool acc, __mmask16 msk) {
  // Named accumulators (unused ones fold away): GCC keeps an indexed array on the stack.
  __m512 c00 = _mm512_setzero_ps(), c01 = c00, c02 = c00, c03 = c00, c10 = c00, c11 = c00,
         c12 = c00, c13 = c00, c20 = c00, c21 = c00, c22 = c00, c23 = c00, c30 = c00, c31 = c00,
         c32 = c00, c33 = c00, c40 = c00, c41 = c00, c42 = c00, c43 = c00, c50 = c00, c51 = c00,
         c52 = c00, c53 = c00;
  for (index_t k = 0; k < K; ++k) {
    const float* bk = b + k * b_ks;
    auto ld = [&](int v) {
      return (PART && v == NV - 1) ? _mm512_maskz_loadu_ps(msk, bk + 16 * v) : _mm512_loadu_ps(bk + 16 * v);
    };
    const __m512 b0 = ld(0);
    const __m512 b1 = NV > 1 ? ld(1) : b0;
    const __m512 b2 = NV > 2 ? ld(2) : b0;
    const __m512 b3 = NV > 3 ? ld(3) : b0;
    const float* ak = a + k * a_ks;
#define KILNET_ROW(r, x0, x1, x2, x3)                                \
    if (R > r) {                                                     \
      const __m512 av = _mm512_set1_ps(ak[r * a_rs]);                \
      x0 = _mm512_fmadd_ps(av, b0, x0);                              \
      if (NV > 1) x1 = _mm512_fmadd_ps(av, b1, x1);                  \
      if (NV > 2) x2 = _mm512_fmadd_ps(av, b2, x2);                  \
      if (NV > 3) x3 = _mm512_fmadd_ps(av, b3, x3);                  \
    }
    KILNET_ROW(0, c00, c01, c02, c03) KILNET_ROW(1, c10, c11, c12, c13)
    KILNET_ROW(2, c20, c21, c22, c23) KILNET_ROW(3, c30, c31, c32, c33)
    KILNET_ROW(4, c40, c41, c42, c43) KILNET_ROW(5, c50, c51, c52, c53)
#undef KILNET_ROW
  }
  // C (+)= the accumulators; the last vector of a partial panel through the lane mask.
  auto put = [&](int r, int v, __m512 x) {
    float* p = c + r * c_rs + 16 * v;
    if (PART && v == NV - 1) {
      if (acc) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(msk, p));
      _mm512_mask_storeu_ps(p, msk, x);
    } else {
      if (acc) x = _mm512_add_ps(x, _mm512_loadu_ps(p));
      _mm512_storeu_ps(p, x);
    }
  };
  const __m512 rows[6][4] = {{c00, c01, c02, c03}, {c10, c11, c12, c13}, {c20, c21, c22, c23},
                             {c30, c31, c32, c33}, {c40, c41, c42, c43}, {c50, c51, c52, c53}};
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) put(r, v, rows[r][v]);
}

using Micro = void (*)(index_t, const float*, index_t, index_t, const float*, index_t, float*, index_t,
                       bool, __mmask16);

template <int R>
Micro pick(int nv, bool part) {
  switch (nv) {
    case 1: return part ? &micro<R, 1, true> : &micro<R, 1, false>;
    case 2: return part ? &micro<R, 2, true> : &micro<R, 2, false>;
    case 3: return part ? &micro<R, 3, true> : &micro<R, 3, false>;
    default: return part ? &micro<R, 4, true> : &micro<R, 4, false>;
  }
}

Micro pick_rows(index_t r, int nv, bool part) {
  switch (r) {
    case 1: return pick<1>(nv, part);
    case 2: return pick<2>(nv, part);
    case 3: return pick<3>(nv, part);
    case 4: return pick<4>(nv, part);
    case 5: return pick<5>(nv, part);
    default: return pick<6>(nv, part);
  }
}

[[maybe_unused]] void gemm_avx512(index_t M, index_t N, index_t K, const float* a, index_t a_rs, index_t a_ks,
                 const float* b, index_t b_ks, float* c, index_t c_rs, bool accumulate) {
  // Column panels of up to 64 outside, row tiles inside: a K x 64 panel of B stays in L1.
  for (index_t c0 = 0; c0 < N; c0 += 64) {
    const index_t nc = N - c0 < 64 ? N - c0 : 64;
    const int nv = int((nc + 15) / 16);
    const bool part = nc % 16 != 0;
    const __mmask16 msk = lanes(part ? nc % 16 : 16);
    const Micro full = pick_rows(6, nv, part);
    index_t r0 = 0;
    for (; r0 + 6 <= M; r0 += 6)
      full(K, a + r0 * a_rs, a_rs, a_ks, b + c0, b_ks, c + r0 * c_rs + c0, c_rs, accumulate, msk);
    if (r0 < M)
      pick_rows(M - r0, nv, part)(K, a + r0 * a_rs, a_rs, a_ks, b + c0, b_ks, c + r0 * c_rs + c0, c_rs,
                                  accumulate, msk);
  }
}

void exp_cols_avx512(index_t M, index_t N, float* S, index_t ld, const float* shift, float* colsum) {
  for (index_t i = 0; i < N; i += 16) {
    const __mmask16 k = lanes(N - i < 16 ? N - i : 16);
    const __m512 sh = _mm512_maskz_loadu_ps(k, shift + i);
    __m512 sum = _mm512_setzero_ps();
    for (index_t r = 0; r < M; ++r) {
      float* p = S + r * ld + i;
      const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p), sh));
      _mm512_mask_storeu_ps(p, k, e);
      sum = _mm512_add_ps(sum, e);
    }
    if (colsum)
      _mm512_mask_storeu_ps(colsum + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, colsum + i), sum));
  }
}

void softmax_step_avx512(index_t M, index_t N, float* S, index_t ld, float* m, float* l, float* alpha) {
  const __m512 ninf = _mm512_set1_ps(-HUGE_VALF);
  for (index_t i = 0; i < N; i += 16) {
    const __mmask16 k = lanes(N - i < 16 ? N - i : 16);
    const __m512 mo = _mm512_mask_loadu_ps(ninf, k, m + i);
    __m512 mx = mo;
    for (index_t r = 0; r < M; ++r) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(ninf, k, S + r * ld + i));
    // no finite logit yet (mx = -inf): shift by 0 so exp(-inf - 0) = 0, never -inf - -inf
    const __m512 sh = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(mx, ninf, _CMP_EQ_OQ), mx, _mm512_setzero_ps());
    const __m512 a = exp16(_mm512_sub_ps(mo, sh));
    __m512 sum = _mm512_setzero_ps();
    for (index_t r = 0; r < M; ++r) {
      float* p = S + r * ld + i;
      const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p), sh));
      _mm512_mask_storeu_ps(p, k, e);
      sum = _mm512_add_ps(sum, e);
    }
    _mm512_mask_storeu_ps(alpha + i, k, a);
    _mm512_mask_storeu_ps(m + i, k, mx);
    _mm512_mask_storeu_ps(l + i, k, _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, l + i), a, sum));
  }
}

void dsoftmax_avx512(index_t M, index_t N, const float* P, float* dP, index_t ld, const float* D) {
  for (index_t r = 0; r < M; ++r)
    for (index_t i = 0; i < N; i += 16) {
      const __mmask16 k = lanes(N - i < 16 ? N - i : 16);
      float* q = dP + r * ld + i;
      _mm512_mask_storeu_ps(q, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, P + r * ld + i),
                                                _mm512_sub_ps(_mm512_maskz_loadu_ps(k, q),
                                                              _mm512_maskz_loadu_ps(k, D + i))));
    }
}

// In-register transpose of 16 rows of 16 floats: r[c] becomes column c.
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  auto pd = [](__m512 x) { return _mm512_castps_pd(x); };
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {   // r[4i + j], 128-bit lane L: column 4L + j of rows 4i .. 4i+3
    r[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[4 * i + 0]), pd(t[4 * i + 2])));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[4 * i + 0]), pd(t[4 * i + 2])));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[4 * i + 1]), pd(t[4 * i + 3])));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[4 * i + 1]), pd(t[4 * i + 3])));
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {   // gather the four 128-bit lanes of each column
    t[i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0x88);
    t[4 + i] = _mm512_shuffle_f32x4(r[i], r[4 + i], 0xdd);
    t[8 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0x88);
    t[12 + i] = _mm512_shuffle_f32x4(r[8 + i], r[12 + i], 0xdd);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88);
    r[4 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0x88);
    r[8 + i] = _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd);
    r[12 + i] = _mm512_shuffle_f32x4(t[4 + i], t[12 + i], 0xdd);
  }
}

// pack_transposed (attention_driver.h) by 16 x 16 blocks: t[h][i] = src[i][h] * mul for i < mq,
// 0 for mq <= i < BQ. The scalar version stores every float separately 256 bytes apart.
void transpose_avx512(index_t H, index_t mq, const float* src, index_t ld, float mul, float* t) {
  const __m512 m = _mm512_set1_ps(mul);
  for (index_t h0 = 0; h0 < H; h0 += 16) {
    const index_t nh = H - h0 < 16 ? H - h0 : 16;
    const __mmask16 hk = lanes(nh);
    for (index_t i0 = 0; i0 < BQ; i0 += 16) {
      __m512 r[16];
#pragma GCC unroll 16
      for (int i = 0; i < 16; ++i)
        r[i] = i0 + i < mq ? _mm512_mul_ps(m, _mm512_maskz_loadu_ps(hk, src + (i0 + i) * ld + h0))
                           : _mm512_setzero_ps();
      transpose16(r);
      for (index_t h = 0; h < nh; ++h) _mm512_storeu_ps(t + (h0 + h) * BQ + i0, r[h]);
    }
  }
}

}  // namespace
}  // namespace kilnet::cpu::attn_detail
