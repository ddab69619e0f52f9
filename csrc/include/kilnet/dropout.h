// dropout.h — inverted dropout with a counter-based random mask.
//   n elements; x, y, mask, dy, dx all n long.
//   keep element i iff u(seed, i) >= rate, with u uniform in [0, 1) (detail::uniform_hash);
//   mask[i] = keep ? 1/(1 - rate) : 0;  y = x * mask;  backward: dx = dy * mask.
//   rate is a double, as Keras's Python float: the scale is float(1/(1 - rate)) (10 for 0.9,
//   where float arithmetic would give 9.999998).
//   The draw depends only on (seed, i): the same mask for any thread count, and on any device.
//   0 <= rate < 1. y may be x, and dx may be dy (in place).
#pragma once
#include <cstdint>
#include "kilnet/common.h"

namespace kilnet::cpu {

void dropout_forward(index_t n, const float* x, double rate, std::uint64_t seed, float* mask, float* y);
void dropout_backward(index_t n, const float* mask, const float* dy, float* dx);
void dropout_forward_ref(index_t n, const float* x, double rate, std::uint64_t seed, float* mask, float* y);
void dropout_backward_ref(index_t n, const float* mask, const float* dy, float* dx);

}  // namespace kilnet::cpu

namespace kilnet::cuda {

// The same operations on device pointers, run on `stream` (a CUDA stream handle): bit-identical masks
// and outputs to kilnet::cpu for the same seed.
void dropout_forward(index_t n, const float* x, double rate, std::uint64_t seed, float* mask, float* y,
                     void* stream);
void dropout_backward(index_t n, const float* mask, const float* dy, float* dx, void* stream);

}  // namespace kilnet::cuda
