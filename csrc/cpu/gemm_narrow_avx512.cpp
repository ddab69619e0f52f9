// gemm_narrow_avx512.cpp — gemm's products with at most 16 columns (a Dense layer's logits and
// weight gradient with <= 16 units) on AVX-512: a row of B and of C is one zmm (the columns
// past N masked), 8 rows of C at a time share each loaded row of B, op(A) is read in place.
// The general path pads N to the 16-wide AVX2 tile and packs both operands for every block:
// 32x21632x10 ran at 0.29 ms through it, 0.19 here (Zen 4, 1 thread).
//
// Every element is one FMA chain over k in order, as in gemm_rect's micro-kernels, and the
// epilogue is theirs for alpha = 1 and beta 0 or 1 without bias (acc + 0, or C + (acc + 0)), and
// gemm.cpp hands over gemm_rect's K blocks one at a time: the same bits as the general path.
//
// Built with the AVX-512 flags; includes no project header with inline functions and
// instantiates no std:: templates (see conv2d_avx512.cpp).
#include <immintrin.h>

#include "kilnet/conv2d.h"   // index_t (a plain header; no inline functions)

namespace kilnet::cpu::avx512 {
namespace {

inline __mmask16 lanes(index_t n) { return __mmask16((1u << unsigned(n)) - 1u); }

// R rows of C from row i: C[i + r] (+)= sum over k of a(r, k) * B[k], a(r, k) = A at r*rs + k*ks.
template <int R>
inline void rows(index_t K, index_t N, const float* A, index_t rs, index_t ks, const float* B, index_t ldb, float* C,
                 index_t ldc, bool accumulate) {
  const __mmask16 m = lanes(N);
  __m512 acc[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (index_t k = 0; k < K; ++k) {
    const __m512 b = _mm512_maskz_loadu_ps(m, B + k * ldb);
    const float* a = A + k * ks;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(a[r * rs]), b, acc[r]);
  }
  // the micro-kernels' epilogue: acc + bias (0 here: -0 becomes +0 as there), then C + that
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
    float* c = C + r * ldc;
    const __m512 v = _mm512_add_ps(acc[r], zero);
    _mm512_mask_storeu_ps(c, m, accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(m, c), v) : v);
  }
}

// Rows [i0, i1) of C: 8 at a time, then 4, 2, 1.
void row_range(index_t i0, index_t i1, index_t K, index_t N, const float* A, index_t rs, index_t ks,
               const float* B, index_t ldb, float* C, index_t ldc, bool accumulate) {
  index_t i = i0;
  for (; i + 8 <= i1; i += 8) rows<8>(K, N, A + i * rs, rs, ks, B, ldb, C + i * ldc, ldc, accumulate);
  if (i + 4 <= i1) rows<4>(K, N, A + i * rs, rs, ks, B, ldb, C + i * ldc, ldc, accumulate), i += 4;
  if (i + 2 <= i1) rows<2>(K, N, A + i * rs, rs, ks, B, ldb, C + i * ldc, ldc, accumulate), i += 2;
  if (i < i1) rows<1>(K, N, A + i * rs, rs, ks, B, ldb, C + i * ldc, ldc, accumulate);
}

}  // namespace

// C[i0:i1, 0:N] = op(A) B (+ C when accumulate), N <= 16, B row-major (K x N, row stride ldb);
// op(A) = A (M x K, row stride lda) or, with ta, A^T (A is K x M).
void gemm_narrow(bool ta, index_t i0, index_t i1, index_t N, index_t K, const float* A, index_t lda, const float* B,
                 index_t ldb, float* C, index_t ldc, bool accumulate) {
  const index_t rs = ta ? 1 : lda, ks = ta ? lda : 1;
  row_range(i0, i1, K, N, A, rs, ks, B, ldb, C, ldc, accumulate);
}

}  // namespace kilnet::cpu::avx512
