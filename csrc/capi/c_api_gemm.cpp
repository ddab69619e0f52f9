// c_api_gemm.cpp — the C API of the GEMM family (kilnet/c_api.h, kilnet/gemm.h).
#include "capi_internal.h"
#include "kilnet/gemm.h"

using namespace kilnet;
using namespace kilnet::capi;

extern "C" {

int kilnet_gemm(int trans_a, int trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                int64_t ldc, const float* bias) {
  return guarded("kilnet_gemm", [&] {
    positive("M", M); positive("N", N); positive("K", K);
    need("A", A); need("B", B); need("C", C);
    // op(A) is M x K: A itself is M x K, or K x M when transposed; likewise B.
    const int64_t a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
    const int64_t b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
    if (lda < a_cols)
      fail(KILNET_ERR_SHAPE, "lda must be >= ", a_cols,
           trans_a ? " (M: A is transposed, stored K x M)" : " (K: A is M x K)", ", got ", lda);
    if (ldb < b_cols)
      fail(KILNET_ERR_SHAPE, "ldb must be >= ", b_cols,
           trans_b ? " (K: B is transposed, stored N x K)" : " (N: B is K x N)", ", got ", ldb);
    if (ldc < N) fail(KILNET_ERR_SHAPE, "ldc must be >= ", N, " (N: C is M x N), got ", ldc);
    const Span c = matrix("C", C, M, N, ldc);
    no_overlap(c, matrix("A", A, a_rows, a_cols, lda));
    no_overlap(c, matrix("B", B, b_rows, b_cols, ldb));
    if (bias) no_overlap(c, span("bias", bias, N));
    cpu::gemm(trans_a != 0, trans_b != 0, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias);
  });
}

int kilnet_bias_backward(int64_t M, int64_t N, const float* dy, float* db) {
  return guarded("kilnet_bias_backward", [&] {
    positive("M", M); positive("N", N);
    need("dy", dy); need("db", db);
    no_overlap(span("db", db, N), span("dy", dy, product({M, N})));
    cpu::bias_backward(M, N, dy, db);
  });
}

}  // extern "C"
