// softmax_internal.h — the two passes every softmax row makes (the row's max, then exp(x - max)
// and its sum), shared by softmax_forward (activation.cpp) and softmax_crossentropy (loss.cpp).
// With AVX2+FMA they run 8 lanes at a time with a polynomial exp (softmax_avx2.cpp), with
// AVX-512 16 (softmax_avx512.cpp); a scalar std::exp row of 1000 classes costs ~6 ns per
// element, the vector one under 1. Not public.
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu::softmax_detail {

// max over x[0..n), n >= 1
float row_max(index_t n, const float* x);
// out[j] = exp(x[j] - shift) for j < n; returns their sum, accumulated in double (a float running
// sum over 1e5 classes drifts ~1e-4 relative). out may alias x.
double exp_shift_sum(index_t n, const float* x, float shift, float* out);

#if defined(KILNET_HAVE_AVX2_BUILD)
float row_max_avx2(index_t n, const float* x);
double exp_shift_sum_avx2(index_t n, const float* x, float shift, float* out);
#endif
#if defined(KILNET_HAVE_AVX512_BUILD)   // softmax_avx512.cpp; only when use_avx512()
float row_max_avx512(index_t n, const float* x);
double exp_shift_sum_avx512(index_t n, const float* x, float shift, float* out);
#endif

}  // namespace kilnet::cpu::softmax_detail
