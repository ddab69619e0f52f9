// activation.h — elementwise activations and the row softmax.
//   n elements; rows x cols for softmax (softmax along the last axis).
// Backward is written in terms of the forward OUTPUT y (relu: y > 0, sigmoid: y(1-y),
// tanh: 1-y^2), so a layer keeps only y. dx may alias dy (in-place backward).
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu {

void activation_forward(Act act, index_t n, const float* x, float* y);      // y may alias x
void activation_backward(Act act, index_t n, const float* y, const float* dy, float* dx);
void activation_forward_ref(Act act, index_t n, const float* x, float* y);
void activation_backward_ref(Act act, index_t n, const float* y, const float* dy, float* dx);

void softmax_forward(index_t rows, index_t cols, const float* x, float* y);  // stable: max subtracted
void softmax_backward(index_t rows, index_t cols, const float* y, const float* dy, float* dx);
void softmax_forward_ref(index_t rows, index_t cols, const float* x, float* y);
void softmax_backward_ref(index_t rows, index_t cols, const float* y, const float* dy, float* dx);

}  // namespace kilnet::cpu

namespace kilnet::cuda {

// The same operations on device pointers, run on `stream` (a CUDA stream handle; nullptr = the legacy
// default stream). Elementwise: float4 when aligned; softmax: a warp per row up to 1024 columns,
// a block per row above. y may alias x and dx may alias dy, as on the CPU.
void activation_forward(Act act, index_t n, const float* x, float* y, void* stream);
void activation_backward(Act act, index_t n, const float* y, const float* dy, float* dx, void* stream);
void softmax_forward(index_t rows, index_t cols, const float* x, float* y, void* stream);
void softmax_backward(index_t rows, index_t cols, const float* y, const float* dy, float* dx, void* stream);

}  // namespace kilnet::cuda
