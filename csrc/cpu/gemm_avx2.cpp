// gemm_avx2.cpp — the AVX2/FMA micro-kernel of the SGEMM (the only GEMM code built with
// -mavx2 -mfma; gemm.cpp calls it only when use_avx2() is true).
// It computes one MR x NR = 6 x 16 tile of C from packed slivers of A and B (see
// gemm_internal.h for the layout). No std:: templates here on purpose: their out-of-line copies
// are shared with the portable translation units at link time and must not contain AVX2 code.
#include "gemm_internal.h"

#if defined(KILNET_HAVE_AVX2_BUILD) && defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

namespace kilnet::cpu::gemm_detail {

namespace {

// One row of the tile: v = alpha*acc + beta*c + bias, full 8-wide vectors.
inline __m256 epilogue8(__m256 acc, const float* c, const float* bias, __m256 alpha, __m256 beta,
                        bool read_c) {
  __m256 v = _mm256_mul_ps(acc, alpha);
  if (read_c) v = _mm256_fmadd_ps(beta, _mm256_loadu_ps(c), v);
  if (bias) v = _mm256_add_ps(v, _mm256_loadu_ps(bias));
  return v;
}

}  // namespace

void ukernel_6x16_avx2(index_t kc, const float* a, const float* b, float* c, index_t ldc, int m,
                       int n, const Epilogue& ep) {
  // Warm the C tile's cache lines while the FMAs run (the tile is written only at the end).
  for (int i = 0; i < m; ++i) _mm_prefetch(reinterpret_cast<const char*>(c + i * ldc), _MM_HINT_T0);

  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();

  // Rank-1 update per k: 2 aligned loads of B, 6 broadcasts of A, 12 FMAs.
#pragma GCC unroll 4
  for (index_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8);
    __m256 ai;
    ai = _mm256_broadcast_ss(a + 0); c00 = _mm256_fmadd_ps(ai, b0, c00); c01 = _mm256_fmadd_ps(ai, b1, c01);
    ai = _mm256_broadcast_ss(a + 1); c10 = _mm256_fmadd_ps(ai, b0, c10); c11 = _mm256_fmadd_ps(ai, b1, c11);
    ai = _mm256_broadcast_ss(a + 2); c20 = _mm256_fmadd_ps(ai, b0, c20); c21 = _mm256_fmadd_ps(ai, b1, c21);
    ai = _mm256_broadcast_ss(a + 3); c30 = _mm256_fmadd_ps(ai, b0, c30); c31 = _mm256_fmadd_ps(ai, b1, c31);
    ai = _mm256_broadcast_ss(a + 4); c40 = _mm256_fmadd_ps(ai, b0, c40); c41 = _mm256_fmadd_ps(ai, b1, c41);
    ai = _mm256_broadcast_ss(a + 5); c50 = _mm256_fmadd_ps(ai, b0, c50); c51 = _mm256_fmadd_ps(ai, b1, c51);
    a += MR;
    b += NR;
  }

  const __m256 alpha = _mm256_set1_ps(ep.alpha), beta = _mm256_set1_ps(ep.beta);
  const bool read_c = ep.beta != 0.f;
  const __m256 acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21},
                             {c30, c31}, {c40, c41}, {c50, c51}};

  if (m == MR && n == NR) {   // interior tile: straight vector stores
    for (int i = 0; i < MR; ++i) {
      float* ci = c + i * ldc;
      _mm256_storeu_ps(ci, epilogue8(acc[i][0], ci, ep.bias, alpha, beta, read_c));
      _mm256_storeu_ps(ci + 8, epilogue8(acc[i][1], ci + 8, ep.bias ? ep.bias + 8 : nullptr,
                                         alpha, beta, read_c));
    }
    return;
  }

  // Edge tile (m < MR or n < NR): spill the accumulators to a small buffer and write only the
  // m x n corner with scalar code. The padded rows/columns were computed from zeros and are
  // dropped; nothing outside C (or bias) is touched.
  alignas(32) float tile[MR][NR];
  for (int i = 0; i < MR; ++i) {
    _mm256_store_ps(tile[i], acc[i][0]);
    _mm256_store_ps(tile[i] + 8, acc[i][1]);
  }
  for (int i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    for (int j = 0; j < n; ++j) {
      float v = ep.alpha * tile[i][j];
      if (read_c) v += ep.beta * ci[j];
      if (ep.bias) v += ep.bias[j];
      ci[j] = v;
    }
  }
}

}  // namespace kilnet::cpu::gemm_detail

#endif  // AVX2 build
