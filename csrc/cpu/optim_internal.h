// optim_internal.h — the AVX-512 optimizer updates (optim_avx512.cpp), called by optim.cpp on
// each thread's range of the flat buffer when use_avx512(). Declarations only. Each function is
// the loop of the matching update in optim.cpp, 16 lanes at a time, with the same operations in
// the same order and no fused multiply-add: the results are bit-for-bit those of the portable
// loops (IEEE +, -, *, / and sqrt are exactly rounded at any width).
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu::optim_detail {

#if defined(KILNET_HAVE_AVX512_BUILD)
// vel nullptr: plain SGD (p -= lr g)
void sgd_avx512(index_t n, float* p, const float* g, float* vel, float lr, float momentum, bool nesterov);
// Adam (decay false) and AdamW (p - p wdl first); c1 = 1 - b1, c2 = 1 - b2
void adam_avx512(index_t n, float* p, const float* g, float* m, float* v, float alpha, float c1, float c2,
                 float eps, bool decay, float wdl);
// avg nullptr: not centered; mom nullptr: no momentum
void rmsprop_avx512(index_t n, float* p, const float* g, float* v, float* avg, float* mom, float lr, float rho,
                    float momentum, float eps, float wdl);
void adagrad_avx512(index_t n, float* p, const float* g, float* acc, float lr, float eps, float wdl);
#endif

}  // namespace kilnet::cpu::optim_detail
