// layernorm_internal.h — the per-row work of layer normalization, shared by the driver
// (layernorm.cpp: threads, row blocks, the column-sum reduction) and its AVX2 and AVX-512
// versions (layernorm_avx2.cpp, layernorm_avx512.cpp). Not public.
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu::layernorm_detail {

// One row of the forward pass (see kilnet/layernorm.h); writes *mean, *invstd and y[0..C).
void row_forward(index_t C, const float* x, const float* gamma, const float* beta, float eps, bool rms,
                 float* mean, float* invstd, float* y);
// One row of the backward pass: dx (nullptr skips it) and, when pg/pb are not nullptr, adds
// dy*z into pg[0..C) and dy into pb[0..C) (the row block's float partial sums).
void row_backward(index_t C, const float* x, const float* dy, const float* gamma, float mean, float invstd,
                  bool rms, float* dx, float* pg, float* pb);

#if defined(KILNET_HAVE_AVX2_BUILD)
void row_forward_avx2(index_t C, const float* x, const float* gamma, const float* beta, float eps, bool rms,
                      float* mean, float* invstd, float* y);
void row_backward_avx2(index_t C, const float* x, const float* dy, const float* gamma, float mean,
                       float invstd, bool rms, float* dx, float* pg, float* pb);
#endif
#if defined(KILNET_HAVE_AVX512_BUILD)
void row_forward_avx512(index_t C, const float* x, const float* gamma, const float* beta, float eps, bool rms,
                        float* mean, float* invstd, float* y);
void row_backward_avx512(index_t C, const float* x, const float* dy, const float* gamma, float mean,
                         float invstd, bool rms, float* dx, float* pg, float* pb);
#endif

}  // namespace kilnet::cpu::layernorm_detail
