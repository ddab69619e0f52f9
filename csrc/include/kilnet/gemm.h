// gemm.h — general matrix multiply, row-major.
//   C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] + beta * C[M,N] (+ bias[N] broadcast over rows)
//   op(A) = A (lda >= K) or A^T when trans_a (A stored K x M, lda >= M); likewise B.
//   beta == 0 means C is written without being read (it may hold NaN).
// Backward of Y = X·W + b is two GEMMs and a column sum:
//   dX = dY·W^T,  dW += X^T·dY,  db += colsum(dY)   (bias_backward)
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu {

// BLIS-style: packed panels, a 12x32 AVX-512 or 6x16 AVX2/FMA micro-kernel when the CPU has it
// (else a portable one; gemm_kernel() says which), OpenMP over C. The result does not depend on the thread count. Throws std::bad_alloc if
// its per-thread packing buffers (< 7 MB each) cannot be allocated.
// colsum (optional, N floats): += op(B)'s column sums, the bias gradient of dW = X^T·dY. With B
// not transposed they are summed while B is packed (no second pass over dY), in k order, so the
// same at any thread count.
void gemm(bool trans_a, bool trans_b, index_t M, index_t N, index_t K, float alpha,
          const float* A, index_t lda, const float* B, index_t ldb, float beta,
          float* C, index_t ldc, const float* bias, float* colsum = nullptr);
// The micro-kernel gemm() uses for wide products (N > 16): "avx512 12x32", "avx2 6x16" (also on
// AVX-512 CPUs that split 512-bit FMAs, where it measured faster, unless KILNET_GEMM=avx512
// asks for the AVX-512 one) or "portable".
const char* gemm_kernel();
// Naive triple loop accumulating in double: the reference the tests compare against.
void gemm_ref(bool trans_a, bool trans_b, index_t M, index_t N, index_t K, float alpha,
              const float* A, index_t lda, const float* B, index_t ldb, float beta,
              float* C, index_t ldc, const float* bias);

// db[N] += sum over the M rows of dY[M,N]
void bias_backward(index_t M, index_t N, const float* dy, float* db);
void bias_backward_ref(index_t M, index_t N, const float* dy, float* db);

}  // namespace kilnet::cpu

namespace kilnet::cuda {

// The same operations on device pointers, run on `stream` (a CUDA stream handle; nullptr = the legacy
// default stream). Tiled SGEMM: shared-memory and register blocking, float4 loads, warp tiles.
// With tf32() on (set_tf32, off by default) it uses the TF32 tensor cores: faster, ~1e-3 error.
void gemm(bool trans_a, bool trans_b, index_t M, index_t N, index_t K, float alpha,
          const float* A, index_t lda, const float* B, index_t ldb, float beta,
          float* C, index_t ldc, const float* bias, void* stream);
void bias_backward(index_t M, index_t N, const float* dy, float* db, void* stream);

}  // namespace kilnet::cuda
