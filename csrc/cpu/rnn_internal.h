// rnn_internal.h — private to rnn.cpp (the BPTT driver and the portable step kernels),
// rnn_avx2.cpp (the AVX2/FMA step kernels) and rnn_avx512.cpp (the AVX-512 ones). Declarations
// only: an inline function defined here would be compiled once with and once without the vector
// flags, and the linker may keep either copy.
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu::rnn_detail {

// The recurrent matrix is packed once per call into panels of NR columns: panel p holds K rows
// of NR floats (columns past N are zero), at p*K*NR. MR rows of C are computed at a time.
constexpr int MR = 6;
constexpr int NR = 16;

// The per-step kernels. Row r of every matrix argument starts at base + r*ld; m <= MR rows.
struct StepKernels {
  // C[m x n] = Cinit + [A | A2][m x (k + k2)] · Bp[0:k+k2]: A2 (k2 columns, may be 0)
  // continues A's columns, so x_t W + h_{t-1} U is one product with [W; U] packed. The panels
  // of Bp hold kp >= k + k2 rows. Cinit nullptr: zeros; ldci == 0: the same row (a bias) for
  // every row; Cinit may be C itself (in place).
  void (*gemm_rows)(index_t m, index_t n, index_t k, const float* A, index_t lda, index_t k2,
                    const float* A2, index_t lda2, const float* Bp, index_t kp, const float* Cinit,
                    index_t ldci, float* C, index_t ldc);

  // Forward gate math of one step. h, c, c_prev, h_prev, huh: ld H; gates, hu: ld G*H.
  // SimpleRNN: h holds x W + b + h_prev U on entry (m*H contiguous), h_t on return.
  void (*rnn_fwd)(index_t m, index_t H, Act a, float* h);
  // LSTM: gates hold the pre-activations on entry, the activated i f g o on return; tc = a(c).
  void (*lstm_fwd)(index_t m, index_t H, Act a, Act s, float* gates, const float* c_prev, float* c,
                   float* tc, float* h);
  // GRU: gates hold x W + b_in on entry, the activated z r hh on return; hu = h_prev U + b_rec.
  void (*gru_fwd)(index_t m, index_t H, Act a, Act s, float* gates, const float* hu,
                  const float* h_prev, float* huh, float* h);

  // Backward gate math of one step: the gradient wrt h_t is dh (ld H; dz_{t+1} U^T, nullptr at
  // the last step) + dy (ld ldy; nullptr when no output gradient reaches this step).
  // dz (ld G*H) is the gradient wrt the pre-activations x W + b.
  void (*rnn_bwd)(index_t m, index_t H, Act a, const float* dh, const float* dy, index_t ldy,
                  const float* h, float* dz);
  // LSTM: dc (ld H) enters as the gradient wrt c_t from step t+1, leaves as the one for c_{t-1}.
  void (*lstm_bwd)(index_t m, index_t H, Act a, Act s, const float* dh, const float* dy,
                   index_t ldy, const float* gates, const float* c_prev, const float* tc, float* dc,
                   float* dz);
  // GRU: carry (ld H) enters as dh_{t+1} z_{t+1} (part of dh_t), leaves as dh_t z_t; dhu (ld 3H)
  // is the gradient wrt h_{t-1} U + b_rec.
  void (*gru_bwd)(index_t m, index_t H, Act a, Act s, const float* dh, const float* dy, index_t ldy,
                  const float* gates, const float* huh, const float* h_prev, float* carry,
                  float* dz, float* dhu);

  // true: the backward gate kernels ask for the next row's inputs (and output lines) as they go,
  // so the driver does not prefetch each row block's inputs in one burst before its dh GEMM.
  bool prefetches_ahead;
};

#if defined(KILNET_HAVE_AVX2_BUILD)
const StepKernels& avx2_step_kernels();     // rnn_avx2.cpp; only when use_avx2()
#endif
#if defined(KILNET_HAVE_AVX512_BUILD)
const StepKernels& avx512_step_kernels();   // rnn_avx512.cpp; only when use_avx512()
#endif

}  // namespace kilnet::cpu::rnn_detail
