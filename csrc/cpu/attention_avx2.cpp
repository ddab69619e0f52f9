// attention_avx2.cpp — the attention tile kernels (attention_internal.h) on 8 lanes with FMA, and
// the work items of attention_driver.h built on them.
// Compiled with -mavx2 -mfma; used only when use_avx2().
//
// gemm: register tiles of up to 6 rows x 16 columns (12 accumulators, 2 B vectors and one
// broadcast: 15 of the 16 ymm registers). A is read by broadcasts, so it can be any strided
// view (a row of K, a column of P^T); B rows are loaded as vectors, the last partial vector
// with a mask (head dims like 5 or 80 need no padding copy, and nothing past a row is read).
#include <immintrin.h>
#include <cmath>
#include "attention_driver.h"
#include "attention_internal.h"
#include "vexp_avx2.h"

namespace kilnet::cpu::attn_detail {
namespace {

inline __m256i tail_mask(index_t n) {   // lanes [0, n) on, n in [1, 8]
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), idx);
}

// C[R][NV*8] (+)= A[R][K] B[K][NV*8]; PART: the last vector has only some lanes (msk).
template <int R, int NV, bool PART>
void micro(index_t K, const float* a, index_t a_rs, index_t a_ks, const float* b, index_t b_ks,
           float* c, index_t c_rs, bool acc, __m256i msk) {
  // Twelve named accumulators (unused ones fold away): GCC keeps a __m256 array indexed in
  // loops on the stack, reloading and spilling it every k step.
  __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
         c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
  const float* b1 = b + 8;
  for (index_t k = 0; k < K; ++k) {
    const float* bk = b + k * b_ks;
    const __m256 bv0 = (PART && NV == 1) ? _mm256_maskload_ps(bk, msk) : _mm256_loadu_ps(bk);
    __m256 bv1 = bv0;
    if (NV == 2) bv1 = PART ? _mm256_maskload_ps(b1 + k * b_ks, msk) : _mm256_loadu_ps(b1 + k * b_ks);
    const float* ak = a + k * a_ks;
    __m256 av;
#define KILNET_ROW(r, x0, x1)                                   \
    if (R > r) {                                                \
      av = _mm256_broadcast_ss(ak + r * a_rs);                  \
      x0 = _mm256_fmadd_ps(av, bv0, x0);                        \
      if (NV == 2) x1 = _mm256_fmadd_ps(av, bv1, x1);           \
    }
    KILNET_ROW(0, c00, c01) KILNET_ROW(1, c10, c11) KILNET_ROW(2, c20, c21)
    KILNET_ROW(3, c30, c31) KILNET_ROW(4, c40, c41) KILNET_ROW(5, c50, c51)
#undef KILNET_ROW
  }
  // C (+)= the accumulators; the last vector of a partial panel through the lane mask.
  auto put = [&](int r, int v, __m256 x) {
    float* p = c + r * c_rs + 8 * v;
    if (PART && v == NV - 1) {
      if (acc) x = _mm256_add_ps(x, _mm256_maskload_ps(p, msk));
      _mm256_maskstore_ps(p, msk, x);
    } else {
      if (acc) x = _mm256_add_ps(x, _mm256_loadu_ps(p));
      _mm256_storeu_ps(p, x);
    }
  };
  const __m256 rows[6][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) put(r, v, rows[r][v]);
}

using Micro = void (*)(index_t, const float*, index_t, index_t, const float*, index_t, float*, index_t,
                       bool, __m256i);

template <int R>
Micro pick(int nv, bool part) {
  if (nv == 2) return part ? &micro<R, 2, true> : &micro<R, 2, false>;
  return part ? &micro<R, 1, true> : &micro<R, 1, false>;
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

void gemm_avx2(index_t M, index_t N, index_t K, const float* a, index_t a_rs, index_t a_ks,
               const float* b, index_t b_ks, float* c, index_t c_rs, bool accumulate) {
  // Column panels outside, row tiles inside: a K x 16 panel of B stays in L1 for all rows.
  for (index_t c0 = 0; c0 < N; c0 += 16) {
    const index_t nc = N - c0 < 16 ? N - c0 : 16;
    const int nv = nc > 8 ? 2 : 1;
    const bool part = nc % 8 != 0;
    const __m256i msk = tail_mask(part ? nc % 8 : 8);
    const Micro full = pick_rows(6, nv, part);
    index_t r0 = 0;
    for (; r0 + 6 <= M; r0 += 6)
      full(K, a + r0 * a_rs, a_rs, a_ks, b + c0, b_ks, c + r0 * c_rs + c0, c_rs, accumulate, msk);
    if (r0 < M)
      pick_rows(M - r0, nv, part)(K, a + r0 * a_rs, a_rs, a_ks, b + c0, b_ks, c + r0 * c_rs + c0, c_rs,
                                  accumulate, msk);
  }
}

void exp_cols_avx2(index_t M, index_t N, float* S, index_t ld, const float* shift, float* colsum) {
  for (index_t i = 0; i < N; i += 8) {
    const __m256 sh = _mm256_loadu_ps(shift + i);
    __m256 sum = _mm256_setzero_ps();
    for (index_t r = 0; r < M; ++r) {
      float* p = S + r * ld + i;
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), sh));
      _mm256_storeu_ps(p, e);
      sum = _mm256_add_ps(sum, e);
    }
    if (colsum) _mm256_storeu_ps(colsum + i, _mm256_add_ps(_mm256_loadu_ps(colsum + i), sum));
  }
}

void softmax_step_avx2(index_t M, index_t N, float* S, index_t ld, float* m, float* l, float* alpha) {
  const __m256 ninf = _mm256_set1_ps(-HUGE_VALF);
  for (index_t i = 0; i < N; i += 8) {
    const __m256 mo = _mm256_loadu_ps(m + i);
    __m256 mx = mo;
    for (index_t r = 0; r < M; ++r) mx = _mm256_max_ps(mx, _mm256_loadu_ps(S + r * ld + i));
    // no finite logit yet (mx = -inf): shift by 0 so exp(-inf - 0) = 0, never -inf - -inf
    const __m256 sh = _mm256_blendv_ps(mx, _mm256_setzero_ps(), _mm256_cmp_ps(mx, ninf, _CMP_EQ_OQ));
    const __m256 a = exp8(_mm256_sub_ps(mo, sh));
    __m256 sum = _mm256_setzero_ps();
    for (index_t r = 0; r < M; ++r) {
      float* p = S + r * ld + i;
      const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), sh));
      _mm256_storeu_ps(p, e);
      sum = _mm256_add_ps(sum, e);
    }
    _mm256_storeu_ps(alpha + i, a);
    _mm256_storeu_ps(m + i, mx);
    _mm256_storeu_ps(l + i, _mm256_fmadd_ps(_mm256_loadu_ps(l + i), a, sum));
  }
}

void dsoftmax_avx2(index_t M, index_t N, const float* P, float* dP, index_t ld, const float* D) {
  for (index_t r = 0; r < M; ++r)
    for (index_t i = 0; i < N; i += 8) {
      float* q = dP + r * ld + i;
      _mm256_storeu_ps(q, _mm256_mul_ps(_mm256_loadu_ps(P + r * ld + i),
                                        _mm256_sub_ps(_mm256_loadu_ps(q), _mm256_loadu_ps(D + i))));
    }
}

struct Avx2 {
  static constexpr auto transpose = &pack_transposed;
  static constexpr auto gemm = &gemm_avx2;
  static constexpr auto exp_cols = &exp_cols_avx2;
  static constexpr auto softmax_step = &softmax_step_avx2;
  static constexpr auto dsoftmax = &dsoftmax_avx2;
};

}  // namespace

const Items& avx2_items() {
  static const Items t{&forward_item<Avx2>, &backward_item<Avx2>};
  return t;
}

}  // namespace kilnet::cpu::attn_detail
