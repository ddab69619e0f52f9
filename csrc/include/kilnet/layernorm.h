// layernorm.h — layer normalization over the last axis (Keras's LayerNormalization with the
// normalized axes flattened into one): M rows of C values each.
//   x, y, dy, dx: M x C.  gamma, beta, dgamma, dbeta: C.  mean, invstd: M (one per row).
// Forward, per row: mean = sum x / C, var = sum (x - mean)^2 / C (biased), invstd =
//   1/sqrt(var + eps); y = gamma*(x - mean)*invstd + beta. mean and invstd are written out for
//   the backward pass. gamma nullptr means 1 (scale=False), beta nullptr 0 (center=False).
//   rms (Keras's deprecated rms_scaling=True): y = gamma*x*invstd, the same invstd (from the
//   centered variance), no mean subtracted and no beta.
// Backward, with z = (x - c)*invstd (c = mean, or 0 with rms), xhat = (x - mean)*invstd and
//   g = gamma*dy:  dx = invstd*(g - mean_row(g) - xhat*mean_row(g*z))   (rms: no mean_row(g) term)
//   dgamma += sum_rows dy*z;  dbeta += sum_rows dy.  dx is overwritten; each output may be nullptr.
// The column sums are deterministic and independent of the thread count: rows are cut into
// blocks whose size depends only on (M, C); each block's float partial sums are added in block
// order in double.
#pragma once
#include <cstdint>
#include "kilnet/common.h"

namespace kilnet::cpu {

void layernorm_forward(index_t M, index_t C, const float* x, const float* gamma, const float* beta,
                       float eps, bool rms, float* mean, float* invstd, float* y);
void layernorm_backward(index_t M, index_t C, const float* x, const float* dy, const float* gamma,
                        const float* mean, const float* invstd, bool rms, float* dx, float* dgamma,
                        float* dbeta);
// The same with bfloat16 bits (uint16) for x and y (forward) and for x (backward): each row is
// widened into a float32 row, the float32 row kernels run on it, and y's row is rounded once
// (nearest even); mean, invstd, dy, dx and the column sums stay float32. (Mixed precision: the
// layer's input and output stay bfloat16, no conversion passes around it.)
void layernorm_forward_bf16(index_t M, index_t C, const std::uint16_t* x, const float* gamma, const float* beta,
                            float eps, bool rms, float* mean, float* invstd, std::uint16_t* y);
void layernorm_backward_bf16(index_t M, index_t C, const std::uint16_t* x, const float* dy, const float* gamma,
                             const float* mean, const float* invstd, bool rms, float* dx, float* dgamma,
                             float* dbeta);
void layernorm_forward_ref(index_t M, index_t C, const float* x, const float* gamma, const float* beta,
                           float eps, bool rms, float* mean, float* invstd, float* y);
void layernorm_backward_ref(index_t M, index_t C, const float* x, const float* dy, const float* gamma,
                            const float* mean, const float* invstd, bool rms, float* dx, float* dgamma,
                            float* dbeta);

}  // namespace kilnet::cpu

namespace kilnet::cuda {

// The same on device pointers, run on `stream`: one warp-per-row pass for the forward and dx,
// and dgamma/dbeta from fixed row-block partials added in block order (no atomics: the same
// bits every run). Scratch for the partials comes from cudaMallocAsync on the stream.
void layernorm_forward(index_t M, index_t C, const float* x, const float* gamma, const float* beta,
                       float eps, bool rms, float* mean, float* invstd, float* y, void* stream);
void layernorm_backward(index_t M, index_t C, const float* x, const float* dy, const float* gamma,
                        const float* mean, const float* invstd, bool rms, float* dx, float* dgamma,
                        float* dbeta, void* stream);

}  // namespace kilnet::cuda
