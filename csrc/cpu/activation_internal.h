// activation_internal.h — the AVX-512 elementwise activations (activation_avx512.cpp), called by
// activation.cpp when use_avx512(). Declarations only.
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu::activation_detail {

#if defined(KILNET_HAVE_AVX512_BUILD)
// y = act(x) for Sigmoid and Tanh (the ones the portable loop computes with scalar libm calls,
// ~7 and ~13 ns an element); returns false, touching nothing, for any other activation.
// serial: on the calling thread only (no parallel region of its own).
bool forward_avx512(Act act, index_t n, const float* x, float* y, bool serial = false);
#endif

}  // namespace kilnet::cpu::activation_detail
