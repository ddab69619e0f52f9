// gelu.h — GELU forward and backward on the CPU: exact (x/2 (1 + erf(x/sqrt 2)), Keras's and
// PyTorch's default) or the tanh approximation. The backward needs the INPUT x (not y).
#pragma once
#include <cstdint>
#include "kilnet/common.h"

namespace kilnet::cpu {

void gelu_forward(index_t n, const float* x, float* y, bool approximate);               // y may alias x
void gelu_backward(index_t n, const float* x, const float* dy, float* dx, bool approximate);  // dx may alias dy
// The forward with a bfloat16 y (uint16 bits, rounded to nearest even once): a mixed-precision
// layer's output written without a float32 copy of it.
void gelu_forward_bf16(index_t n, const float* x, std::uint16_t* y, bool approximate);
// A bfloat16 x (a mixed-precision layer's pre-activation, rounded once by its GEMM), widened
// exactly: the forward into a bfloat16 y (may alias x), the backward into float32 dx (may alias dy).
void gelu_forward_bf16_in(index_t n, const std::uint16_t* x, std::uint16_t* y, bool approximate);
void gelu_backward_bf16_x(index_t n, const std::uint16_t* x, const float* dy, float* dx, bool approximate);
// The same gradient rounded once to bfloat16 (the operand the bfloat16 GEMMs after it take anyway:
// half the bytes written and read twice by a mixed-precision Dense's dW and dx products).
void gelu_backward_bf16_xdx(index_t n, const std::uint16_t* x, const float* dy, std::uint16_t* dx, bool approximate);
void gelu_forward_ref(index_t n, const float* x, float* y, bool approximate);
void gelu_backward_ref(index_t n, const float* x, const float* dy, float* dx, bool approximate);

}  // namespace kilnet::cpu
