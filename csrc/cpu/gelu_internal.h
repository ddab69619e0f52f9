// gelu_internal.h — the AVX2 GELU blocks (gelu_avx2.cpp), called by gelu.cpp on AVX2 machines,
// and the AVX-512 ones (gelu_avx512.cpp) on AVX-512 machines.
#pragma once
#include <cstdint>
#include "kilnet/common.h"

namespace kilnet::cpu::gelu_detail {
// serial: on the calling thread only (inside a caller's parallel loop: store_ahead.h's staging).
void forward_avx2(index_t n, const float* x, float* y, bool approximate, bool serial = false);
void backward_avx2(index_t n, const float* x, const float* dy, float* dx, bool approximate, bool serial = false);
#if defined(KILNET_HAVE_AVX512_BUILD)
void forward_avx512(index_t n, const float* x, float* y, bool approximate, bool serial = false);
void backward_avx512(index_t n, const float* x, const float* dy, float* dx, bool approximate, bool serial = false);
// y rounded to bfloat16 in the register (the bits of float_to_bf16), on all threads.
void forward_bf16_avx512(index_t n, const float* x, std::uint16_t* y, bool approximate);
// bfloat16 x widened in the register (the bits of bf16_to_float), on all threads.
void forward_bf16_in_avx512(index_t n, const std::uint16_t* x, std::uint16_t* y, bool approximate);
void backward_bf16_x_avx512(index_t n, const std::uint16_t* x, const float* dy, float* dx, bool approximate);
void backward_bf16_xdx_avx512(index_t n, const std::uint16_t* x, const float* dy, std::uint16_t* dx, bool approximate);
#endif
}  // namespace kilnet::cpu::gelu_detail
