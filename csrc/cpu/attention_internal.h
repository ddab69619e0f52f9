// attention_internal.h — private to attention.cpp (the tiled driver, the portable tile kernels,
// the reference) and attention_avx2.cpp (the AVX2/FMA tile kernels). Declarations only: an
// inline function here would be compiled once with and once without -mavx2.
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu::attn_detail {

// The tile kernels the driver calls. Every product in the forward and the backward has the form
//   C[m][c] (+)= sum_k A(m, k) * B[k][c]      A(m, k) = a[m*a_rs + k*a_ks]  (any strides)
//                                              B[k][c] = b[k*b_ks + c]       (rows contiguous)
// so one kernel serves S^T = K Q^T, O += P V, dV += P^T dO, dP^T = V dO^T, dK += dS^T Q and
// dQ += dS K, reading q, k, v, dout straight from the BTNH arrays (row stride N*H).
struct TileKernels {
  void (*gemm)(index_t M, index_t N, index_t K, const float* a, index_t a_rs, index_t a_ks,
               const float* b, index_t b_ks, float* c, index_t c_rs, bool accumulate);
  // S[r][i] = exp(S[r][i] - shift[i]) for r < M, i < N (N % 8 == 0, row stride ld); when
  // colsum is not null, colsum[i] += sum_r of the new S[r][i].
  void (*exp_cols)(index_t M, index_t N, float* S, index_t ld, const float* shift, float* colsum);
  // One online-softmax step over a tile of logits S (M >= 1 rows, N % 8 == 0 columns, one per
  // query): per column, m_new = max(m, max_r S), alpha = exp(m - m_new) (0 while no finite
  // logit was seen), S = exp(S - m_new), l = l*alpha + sum_r S, m = m_new.
  void (*softmax_step)(index_t M, index_t N, float* S, index_t ld, float* m, float* l, float* alpha);
  // dP[r][i] = P[r][i] * (dP[r][i] - D[i]) (N % 8 == 0)
  void (*dsoftmax)(index_t M, index_t N, const float* P, float* dP, index_t ld, const float* D);
};

const TileKernels& portable_kernels();
#if defined(KILNET_HAVE_AVX2_BUILD)
const TileKernels& avx2_kernels();
#endif

}  // namespace kilnet::cpu::attn_detail
