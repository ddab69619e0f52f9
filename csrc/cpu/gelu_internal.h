// gelu_internal.h — the AVX2 GELU blocks (gelu_avx2.cpp), called by gelu.cpp on AVX2 machines,
// and the AVX-512 ones (gelu_avx512.cpp) on AVX-512 machines.
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu::gelu_detail {
void forward_avx2(index_t n, const float* x, float* y, bool approximate);
void backward_avx2(index_t n, const float* x, const float* dy, float* dx, bool approximate);
#if defined(KILNET_HAVE_AVX512_BUILD)
void forward_avx512(index_t n, const float* x, float* y, bool approximate);
void backward_avx512(index_t n, const float* x, const float* dy, float* dx, bool approximate);
#endif
}  // namespace kilnet::cpu::gelu_detail
