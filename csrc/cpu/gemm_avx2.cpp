// gemm_avx2.cpp — the AVX2/FMA micro-kernel of the SGEMM (the only GEMM code built with
// -mavx2 -mfma; gemm.cpp calls it only when use_avx2() is true).
// It computes one MR x NR = 6 x 16 tile of C from a sliver of A (packed, or in place through
// strides) and a packed sliver of B; see gemm_internal.h for the contract. No std:: templates here on purpose: their out-of-line copies
// are shared with the portable translation units at link time and must not contain AVX2 code.
#include "gemm_internal.h"

#if defined(KILNET_HAVE_AVX2_BUILD) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#include "gemm_prefetch.h"

namespace kilnet::cpu::gemm_detail {

namespace {

// Store lanes 0..w-1 of v (0 < w < 8) at p, nothing past them. Piecewise 4/2/1-float stores:
// vmaskmovps stores are much slower on AMD Zen, and an edge tile is every tile when N < 16.
inline void store_first(float* p, __m256 v, int w) {
  __m128 x = _mm256_castps256_ps128(v);
  if (w >= 4) {
    _mm_storeu_ps(p, x);
    x = _mm256_extractf128_ps(v, 1);
    p += 4;
    w -= 4;
  }
  if (w >= 2) {
    _mm_storel_pi(reinterpret_cast<__m64*>(p), x);
    x = _mm_movehl_ps(x, x);
    p += 2;
    w -= 2;
  }
  if (w) _mm_store_ss(p, x);
}

// Row sweep of a 1- or 2-row A sliver (the last sliver of M = 32 = 5*6 + 2 in the Dense dX
// dY·Wᵀ), full-width tiles two at a time: 2 rows x 32 columns in 8 accumulators, a third of the
// FMAs of two 6-row tiles. Each element gets the same operations in the same order as in the
// 6-row loop below, so the result is the same bit for bit. Returns the number of tiles done.
index_t sweep_2x32(index_t kc, const float* a, index_t cs_a, index_t o1, const float* b,
                   float* c, index_t ldc, int m, const Epilogue& ep, const Sweep& sw) {
  const bool scale = ep.alpha != 1.f, read_c = ep.beta != 0.f, beta1 = ep.beta == 1.f;
  const index_t pairs = sw.count / 2;
  for (index_t t = 0; t < 2 * pairs; t += 2) {
    const float* b2 = b + sw.b_step;   // the second tile's B sliver
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps(), c02 = _mm256_setzero_ps(),
           c03 = _mm256_setzero_ps(), c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps(),
           c12 = _mm256_setzero_ps(), c13 = _mm256_setzero_ps();
    const float* ak = a;
#pragma GCC unroll 4
    for (index_t k = 0; k < kc; ++k) {
      const __m256 b0 = _mm256_load_ps(b + k * NR), b1 = _mm256_load_ps(b + k * NR + 8);
      const __m256 b2v = _mm256_load_ps(b2 + k * NR), b3 = _mm256_load_ps(b2 + k * NR + 8);
      const __m256 a0 = _mm256_broadcast_ss(ak), a1 = _mm256_broadcast_ss(ak + o1);
      c00 = _mm256_fmadd_ps(a0, b0, c00); c01 = _mm256_fmadd_ps(a0, b1, c01);
      c02 = _mm256_fmadd_ps(a0, b2v, c02); c03 = _mm256_fmadd_ps(a0, b3, c03);
      c10 = _mm256_fmadd_ps(a1, b0, c10); c11 = _mm256_fmadd_ps(a1, b1, c11);
      c12 = _mm256_fmadd_ps(a1, b2v, c12); c13 = _mm256_fmadd_ps(a1, b3, c13);
      ak += cs_a;
    }
    const float* bt = ep.bias ? ep.bias + t * sw.bias_step : nullptr;
    auto put = [&](float* ci, __m256 acc, const float* bias) {
      const __m256 bv = bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps();
      acc = scale ? _mm256_fmadd_ps(acc, _mm256_set1_ps(ep.alpha), bv) : _mm256_add_ps(acc, bv);
      if (read_c)
        acc = beta1 ? _mm256_add_ps(_mm256_loadu_ps(ci), acc)
                    : _mm256_fmadd_ps(_mm256_set1_ps(ep.beta), _mm256_loadu_ps(ci), acc);
      _mm256_storeu_ps(ci, acc);
    };
    float* c2 = c + sw.c_step;
    const float* bt2 = bt ? bt + sw.bias_step : nullptr;
    put(c, c00, bt); put(c + 8, c01, bt ? bt + 8 : nullptr);
    put(c2, c02, bt2); put(c2 + 8, c03, bt2 ? bt2 + 8 : nullptr);
    if (m > 1) {
      put(c + ldc, c10, bt); put(c + ldc + 8, c11, bt ? bt + 8 : nullptr);
      put(c2 + ldc, c12, bt2); put(c2 + ldc + 8, c13, bt2 ? bt2 + 8 : nullptr);
    }
    b += 2 * sw.b_step;
    c += 2 * sw.c_step;
  }
  return 2 * pairs;
}

}  // namespace

// A transposed B (the Dense layer's dY·Wᵀ, W stored 21632 x 10) is packed by 8x8 transposes in
// ymm registers, with masked loads for the last k < 8 (nothing past a column is read): about
// twice as fast as the SSE 4x4 blocks plus scalar remainder in pack_b.
void pack_bt_16_avx2(const float* src, index_t cs, index_t kc, float* dst) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (index_t k = 0; k < kc; k += 8) {
    const int w = kc - k < 8 ? int(kc - k) : 8;
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(w), lane);
    for (int c0 = 0; c0 < NR; c0 += 8) {
      const float* s = src + c0 * cs + k;
      __m256 r[8];
      for (int i = 0; i < 8; ++i)
        r[i] = w == 8 ? _mm256_loadu_ps(s + i * cs) : _mm256_maskload_ps(s + i * cs, mask);
      // 8x8 transpose: r[i][q] (column c0+i, k+q) -> t[q][i].
      const __m256 u0 = _mm256_unpacklo_ps(r[0], r[1]), u1 = _mm256_unpackhi_ps(r[0], r[1]);
      const __m256 u2 = _mm256_unpacklo_ps(r[2], r[3]), u3 = _mm256_unpackhi_ps(r[2], r[3]);
      const __m256 u4 = _mm256_unpacklo_ps(r[4], r[5]), u5 = _mm256_unpackhi_ps(r[4], r[5]);
      const __m256 u6 = _mm256_unpacklo_ps(r[6], r[7]), u7 = _mm256_unpackhi_ps(r[6], r[7]);
      const __m256 v0 = _mm256_shuffle_ps(u0, u2, 0x44), v1 = _mm256_shuffle_ps(u0, u2, 0xEE);
      const __m256 v2 = _mm256_shuffle_ps(u1, u3, 0x44), v3 = _mm256_shuffle_ps(u1, u3, 0xEE);
      const __m256 v4 = _mm256_shuffle_ps(u4, u6, 0x44), v5 = _mm256_shuffle_ps(u4, u6, 0xEE);
      const __m256 v6 = _mm256_shuffle_ps(u5, u7, 0x44), v7 = _mm256_shuffle_ps(u5, u7, 0xEE);
      __m256 t[8];
      t[0] = _mm256_permute2f128_ps(v0, v4, 0x20); t[4] = _mm256_permute2f128_ps(v0, v4, 0x31);
      t[1] = _mm256_permute2f128_ps(v1, v5, 0x20); t[5] = _mm256_permute2f128_ps(v1, v5, 0x31);
      t[2] = _mm256_permute2f128_ps(v2, v6, 0x20); t[6] = _mm256_permute2f128_ps(v2, v6, 0x31);
      t[3] = _mm256_permute2f128_ps(v3, v7, 0x20); t[7] = _mm256_permute2f128_ps(v3, v7, 0x31);
      for (int q = 0; q < w; ++q) _mm256_store_ps(dst + (k + q) * NR + c0, t[q]);
    }
  }
}

void ukernel_6x16_avx2(index_t kc, const float* a, index_t rs_a, index_t cs_a, const float* b,
                       float* c, index_t ldc, int m, int n, const Epilogue& ep, const Sweep& sw) {
  // Offsets of the MR rows of A; rows past m repeat row m-1 so nothing outside A is read.
  index_t o[MR];
  for (int r = 0; r < MR; ++r) o[r] = (r < m ? r : m - 1) * rs_a;
  const float* bias = ep.bias;
  // With alpha == 1 and beta in {0, 1} (every call the layers make) the epilogue is adds only:
  // on Zen the FP adders are separate pipes from the two FMA units. Same rounding either way.
  const bool scale = ep.alpha != 1.f, read_c = ep.beta != 0.f, beta1 = ep.beta == 1.f;

  // A 1- or 2-row sliver swept along a row: two tiles at a time with a third of the FMAs.
  index_t t0 = 0;
  if (m <= 2 && n == NR && sw.a_step == 0 && sw.count >= 2) {
    t0 = sweep_2x32(kc, a, cs_a, o[1], b, c, ldc, m, ep, sw);
    b += t0 * sw.b_step;
    c += t0 * sw.c_step;
  }

  // The tiles of the sweep, one after the other; the setup above is paid once per sweep, which
  // matters when K is small (K = 9 or 10: one tile is only 54-60 cycles of FMAs).
  for (index_t t = t0; t < sw.count; ++t, a += sw.a_step, b += sw.b_step, c += sw.c_step) {
    // Warm the C lines of the next tile (of this one, for the first) while the FMAs run.
    const float* cn = t ? c + sw.c_step : c;
    for (int i = 0; i < m; ++i) _mm_prefetch(reinterpret_cast<const char*>(cn + i * ldc), _MM_HINT_T0);
    if (t == 0)
      for (int i = 0; i < m; ++i)
        _mm_prefetch(reinterpret_cast<const char*>(c + sw.c_step + i * ldc), _MM_HINT_T0);
    __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
    __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
    __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
    __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
    __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
    __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();

    // Rank-1 update per k: 2 aligned loads of B, 6 broadcasts of A, 12 FMAs; with a prefetch
    // stream, one of its lines every 4 k (24 cycles of FMAs).
    const float* ak = a;
    const float* bk = b;
#define KILNET_STEP                                                                                   \
  {                                                                                                   \
    const __m256 b0 = _mm256_load_ps(bk), b1 = _mm256_load_ps(bk + 8);                                \
    __m256 ai;                                                                                        \
    ai = _mm256_broadcast_ss(ak + o[0]); c00 = _mm256_fmadd_ps(ai, b0, c00); c01 = _mm256_fmadd_ps(ai, b1, c01); \
    ai = _mm256_broadcast_ss(ak + o[1]); c10 = _mm256_fmadd_ps(ai, b0, c10); c11 = _mm256_fmadd_ps(ai, b1, c11); \
    ai = _mm256_broadcast_ss(ak + o[2]); c20 = _mm256_fmadd_ps(ai, b0, c20); c21 = _mm256_fmadd_ps(ai, b1, c21); \
    ai = _mm256_broadcast_ss(ak + o[3]); c30 = _mm256_fmadd_ps(ai, b0, c30); c31 = _mm256_fmadd_ps(ai, b1, c31); \
    ai = _mm256_broadcast_ss(ak + o[4]); c40 = _mm256_fmadd_ps(ai, b0, c40); c41 = _mm256_fmadd_ps(ai, b1, c41); \
    ai = _mm256_broadcast_ss(ak + o[5]); c50 = _mm256_fmadd_ps(ai, b0, c50); c51 = _mm256_fmadd_ps(ai, b1, c51); \
    ak += cs_a;                                                                                       \
    bk += NR;                                                                                         \
  }
    KILNET_GEMM_K_LOOP(kc, sw.pf, KILNET_STEP)
#undef KILNET_STEP

    // Epilogue: C = alpha*acc + bias + beta*C on the m x n valid corner, one tile row at a time
    // (rows() hands the accumulators to a lambda by name so they stay in registers). The
    // constants are loaded here, per tile, so that they do not hold registers during the FMAs.
    auto rows = [&](auto&& row) {
      row(c, c00, c01);
      if (m > 1) row(c + ldc, c10, c11);
      if (m > 2) row(c + 2 * ldc, c20, c21);
      if (m > 3) row(c + 3 * ldc, c30, c31);
      if (m > 4) row(c + 4 * ldc, c40, c41);
      if (m > 5) row(c + 5 * ldc, c50, c51);
    };
    const float* bt = bias ? bias + t * sw.bias_step : nullptr;
    auto finish = [&](__m256 acc, __m256 bv, __m256 cv) {
      acc = scale ? _mm256_fmadd_ps(acc, _mm256_broadcast_ss(&ep.alpha), bv) : _mm256_add_ps(acc, bv);
      if (read_c) acc = beta1 ? _mm256_add_ps(cv, acc) : _mm256_fmadd_ps(_mm256_broadcast_ss(&ep.beta), cv, acc);
      return acc;
    };
    if (n == NR) {   // full-width tile: plain vector loads and stores
      const __m256 bias0 = bt ? _mm256_loadu_ps(bt) : _mm256_setzero_ps();
      const __m256 bias1 = bt ? _mm256_loadu_ps(bt + 8) : _mm256_setzero_ps();
      rows([&](float* ci, __m256 lo, __m256 hi) {
        lo = finish(lo, bias0, read_c ? _mm256_loadu_ps(ci) : lo);
        hi = finish(hi, bias1, read_c ? _mm256_loadu_ps(ci + 8) : hi);
        _mm256_storeu_ps(ci, lo);
        _mm256_storeu_ps(ci + 8, hi);
      });
      continue;
    }
    // Narrow tile (n < NR): masked loads and piecewise stores touch only the n valid columns of
    // C and bias; the padded columns were computed from zeros and are dropped.
    const int w1 = n - 8;   // valid columns in the right half (<= 0: none)
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);
    const __m256i mask1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(w1), lane);
    const __m256 bias0 = bt ? _mm256_maskload_ps(bt, mask0) : _mm256_setzero_ps();
    const __m256 bias1 = bt ? _mm256_maskload_ps(bt + 8, mask1) : _mm256_setzero_ps();
    rows([&](float* ci, __m256 lo, __m256 hi) {
      lo = finish(lo, bias0, read_c ? _mm256_maskload_ps(ci, mask0) : lo);
      if (n >= 8) _mm256_storeu_ps(ci, lo);
      else store_first(ci, lo, n);
      if (w1 <= 0) return;
      hi = finish(hi, bias1, read_c ? _mm256_maskload_ps(ci + 8, mask1) : hi);
      store_first(ci + 8, hi, w1);
    });
  }
}

}  // namespace kilnet::cpu::gemm_detail

#endif  // AVX2 build
