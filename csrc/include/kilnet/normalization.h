// normalization.h — batch normalization over the last (channel) axis, Keras's semantics.
//   M rows (every axis but the channel axis flattened: N*H*W for NHWC), C channels.
//   x, y, dy, dx: M x C.  gamma, beta, moving_mean, moving_var, mean, invstd, dgamma, dbeta: C.
// Forward, training (batch statistics):
//   mean = sum_m x / M,  var = sum_m (x - mean)^2 / M   (biased, as Keras's ops.moments)
//   moving_mean = moving_mean*momentum + mean*(1 - momentum); moving_var likewise with var
// Forward, inference: mean = moving_mean, var = moving_var, nothing is updated.
// Both: invstd = 1/sqrt(var + eps); y = gamma*(x - mean)*invstd + beta; mean and invstd are
//   written out for the backward pass. gamma nullptr means 1 (scale=False), beta nullptr 0
//   (center=False).
// Backward, with xhat = (x - mean)*invstd:
//   dbeta += sum_m dy;  dgamma += sum_m dy*xhat     (each may be nullptr)
//   batch_stats (the forward ran in training mode, so mean and var depend on x):
//     dx = gamma*invstd*(dy - sum_m dy/M - xhat*sum_m(dy*xhat)/M)
//   otherwise (inference: the statistics are constants): dx = gamma*invstd*dy
//   dx is overwritten; nullptr skips it.
// Sums over the M rows are accumulated in double.
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu {

void batchnorm_forward(index_t M, index_t C, const float* x, const float* gamma, const float* beta,
                       float* moving_mean, float* moving_var, float momentum, float eps,
                       bool training, float* mean, float* invstd, float* y);
void batchnorm_backward(index_t M, index_t C, const float* x, const float* dy, const float* gamma,
                        const float* mean, const float* invstd, bool batch_stats, float* dx,
                        float* dgamma, float* dbeta);
void batchnorm_forward_ref(index_t M, index_t C, const float* x, const float* gamma,
                           const float* beta, float* moving_mean, float* moving_var,
                           float momentum, float eps, bool training, float* mean, float* invstd,
                           float* y);
void batchnorm_backward_ref(index_t M, index_t C, const float* x, const float* dy,
                            const float* gamma, const float* mean, const float* invstd,
                            bool batch_stats, float* dx, float* dgamma, float* dbeta);

}  // namespace kilnet::cpu

namespace kilnet::cuda {

// The same operations on device pointers, run on `stream`. Column sums are accumulated in
// double in a fixed order (per-block partials, then a per-channel pass over the blocks): the
// result does not depend on timing, and no atomics are used. Scratch for the partials comes
// from cudaMallocAsync on the stream.
void batchnorm_forward(index_t M, index_t C, const float* x, const float* gamma, const float* beta,
                       float* moving_mean, float* moving_var, float momentum, float eps,
                       bool training, float* mean, float* invstd, float* y, void* stream);
void batchnorm_backward(index_t M, index_t C, const float* x, const float* dy, const float* gamma,
                        const float* mean, const float* invstd, bool batch_stats, float* dx,
                        float* dgamma, float* dbeta, void* stream);

}  // namespace kilnet::cuda
