// gelu_internal.h — the AVX2 GELU blocks (gelu_avx2.cpp), called by gelu.cpp on AVX2 machines.
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu::gelu_detail {
void forward_avx2(index_t n, const float* x, float* y, bool approximate);
void backward_avx2(index_t n, const float* x, const float* dy, float* dx, bool approximate);
}  // namespace kilnet::cpu::gelu_detail
