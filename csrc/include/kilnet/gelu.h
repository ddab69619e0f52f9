// gelu.h — GELU forward and backward on the CPU: exact (x/2 (1 + erf(x/sqrt 2)), Keras's and
// PyTorch's default) or the tanh approximation. The backward needs the INPUT x (not y).
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu {

void gelu_forward(index_t n, const float* x, float* y, bool approximate);               // y may alias x
void gelu_backward(index_t n, const float* x, const float* dy, float* dx, bool approximate);  // dx may alias dy
void gelu_forward_ref(index_t n, const float* x, float* y, bool approximate);
void gelu_backward_ref(index_t n, const float* x, const float* dy, float* dx, bool approximate);

}  // namespace kilnet::cpu
