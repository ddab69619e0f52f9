// attention_internal.h — private to attention.cpp (the thread team, the portable tile kernels, the
// reference), attention_driver.h (the work items) and attention_avx2.cpp / attention_avx512.cpp
// (the AVX2/FMA and AVX-512 tile kernels). Declarations only: an inline function here would be
// compiled once with and once without the ISA flags.
#pragma once
#include "kilnet/attention.h"
#include "kilnet/common.h"

namespace kilnet::cpu::attn_detail {

constexpr index_t BQ = 64;   // query columns of a tile (a multiple of 8: exp_cols' lanes)
constexpr index_t BK = 64;   // key rows of a tile (48/96/128 and 48/96 query columns: no faster)

// The contracts of the tile kernels each ISA file gives attention_driver.h (as static members
// of a class). Every product in the forward and the backward has the form
//   C[m][c] (+)= sum_k A(m, k) * B[k][c]      A(m, k) = a[m*a_rs + k*a_ks]  (any strides)
//                                              B[k][c] = b[k*b_ks + c]       (rows contiguous)
// so one gemm serves S^T = K Q^T, O += P V, dV += P^T dO, dP^T = V dO^T, dK += dS^T Q and
// dQ += dS K, reading the packed tiles.
//   gemm(M, N, K, a, a_rs, a_ks, b, b_ks, c, c_rs, accumulate)
//   exp_cols(M, N, S, ld, shift, colsum): S[r][i] = exp(S[r][i] - shift[i]) for r < M, i < N
//     (N % 8 == 0, row stride ld); when colsum is not null, colsum[i] += sum_r of the new S[r][i].
//   softmax_step(M, N, S, ld, m, l, alpha): one online-softmax step over a tile of logits S
//     (M >= 1 rows, N % 8 == 0 columns, one per query): per column, m_new = max(m, max_r S),
//     alpha = exp(m - m_new) (0 while no finite logit was seen), S = exp(S - m_new),
//     l = l*alpha + sum_r S, m = m_new.
//   dsoftmax(M, N, P, dP, ld, D): dP[r][i] = P[r][i] * (dP[r][i] - D[i]) (N % 8 == 0)

// The driver's work items compiled for one ISA level (attention_driver.h instantiated in
// attention.cpp, attention_avx2.cpp, attention_avx512.cpp). `work` is one thread's scratch of
// forward_scratch_floats / backward_scratch_floats (attention_driver.h) floats.
struct Items {
  void (*forward)(const AttnShape& s, const float* q, const float* k, const float* v, const AttnMask& m,
                  float* out, float* lse, index_t b, index_t n, index_t qt0, index_t qt1, float* work);
  void (*backward)(const AttnShape& s, const float* q, const float* k, const float* v, const AttnMask& m,
                   const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv,
                   index_t b, index_t kh, float* work);
};

const Items& portable_items();
#if defined(KILNET_HAVE_AVX2_BUILD)
const Items& avx2_items();
#endif
#if defined(KILNET_HAVE_AVX512_BUILD)
const Items& avx512_items();
#endif
#if defined(KILNET_HAVE_AMX_BUILD)
// bfloat16 products on AMX tiles (attention_amx.cpp): only where bf16_level() is "amx".
const Items& amx_items();
#endif
#if defined(KILNET_HAVE_AVX512BF16_BUILD)
// The same on VDPBF16PS (attention_avx512bf16.cpp): only where bf16_level() is "avx512bf16".
const Items& avx512bf16_items();
#endif

// The rows' mean of v over all T keys (row stride ld): the output of a row with no allowed key
// (Keras). In attention.cpp (sums in double).
void mean_rows(index_t T, index_t H, const float* v, index_t ld, float* out);

}  // namespace kilnet::cpu::attn_detail
