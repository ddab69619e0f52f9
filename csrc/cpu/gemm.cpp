// gemm.cpp — row-major SGEMM: the dispatch, the reference, and the bias gradient.
#include <algorithm>
#include <vector>
#include "kilnet/gemm.h"
#include "parallel.h"

namespace kilnet::cpu {

static inline float at(const float* X, index_t ld, bool trans, index_t i, index_t j) {
  return trans ? X[j * ld + i] : X[i * ld + j];
}

void gemm_ref(bool ta, bool tb, index_t M, index_t N, index_t K, float alpha, const float* A,
              index_t lda, const float* B, index_t ldb, float beta, float* C, index_t ldc,
              const float* bias) {
  for (index_t i = 0; i < M; ++i)
    for (index_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (index_t k = 0; k < K; ++k) acc += double(at(A, lda, ta, i, k)) * at(B, ldb, tb, k, j);
      double c = alpha * acc + (bias ? bias[j] : 0.f);
      if (beta != 0.f) c += double(beta) * C[i * ldc + j];
      C[i * ldc + j] = float(c);
    }
}

// Simple row-parallel kernel: op(B) rows streamed in i-k-j order so the inner loop vectorizes.
void gemm(bool ta, bool tb, index_t M, index_t N, index_t K, float alpha, const float* A,
          index_t lda, const float* B, index_t ldb, float beta, float* C, index_t ldc,
          const float* bias) {
  std::vector<float> Bt;
  if (tb) {   // materialize op(B) once: K x N
    Bt.resize(size_t(K * N));
    for (index_t k = 0; k < K; ++k)
      for (index_t j = 0; j < N; ++j) Bt[k * N + j] = B[j * ldb + k];
    B = Bt.data();
    ldb = N;
  }
#pragma omp parallel for num_threads(threads_for(M * N * K, 1 << 16)) schedule(static)
  for (index_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (beta == 0.f) std::fill(c, c + N, 0.f);
    else if (beta != 1.f) for (index_t j = 0; j < N; ++j) c[j] *= beta;
    for (index_t k = 0; k < K; ++k) {
      const float a = alpha * at(A, lda, ta, i, k);
      const float* b = B + k * ldb;
      for (index_t j = 0; j < N; ++j) c[j] += a * b[j];
    }
    if (bias) for (index_t j = 0; j < N; ++j) c[j] += bias[j];
  }
}

void bias_backward(index_t M, index_t N, const float* dy, float* db) {
  // Rows are summed in a fixed order so the result does not depend on the thread count.
#pragma omp parallel for num_threads(threads_for(M * N)) schedule(static)
  for (index_t j0 = 0; j0 < N; j0 += 64) {
    const index_t j1 = std::min(N, j0 + 64);
    for (index_t i = 0; i < M; ++i)
      for (index_t j = j0; j < j1; ++j) db[j] += dy[i * N + j];
  }
}

void bias_backward_ref(index_t M, index_t N, const float* dy, float* db) {
  for (index_t j = 0; j < N; ++j) {
    double s = 0.0;
    for (index_t i = 0; i < M; ++i) s += dy[i * N + j];
    db[j] += float(s);
  }
}

}  // namespace kilnet::cpu
