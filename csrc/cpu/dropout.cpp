// dropout.cpp — inverted dropout (see dropout.h): one pass writes the mask and the output.
#include <cmath>
#include "kilnet/dropout.h"
#include "kilnet/detail/elementwise.h"
#include "parallel.h"

namespace kilnet::cpu {

// u >= rate with u = bits * 2^-24 is bits >= ceil(rate * 2^24): an integer compare (no 64-bit
// integer to float conversion per element), the same mask as the reference's float compare.
void dropout_forward(index_t n, const float* x, double rate, std::uint64_t seed, float* mask, float* y) {
  const float scale = float(1.0 / (1.0 - rate));
  const std::uint32_t threshold = std::uint32_t(std::ceil(rate * 16777216.0));
#pragma omp parallel for num_threads(threads_for(n, 1 << 14)) schedule(static)
  for (index_t i = 0; i < n; ++i) {
    const float m = detail::hash24(seed, std::uint64_t(i)) >= threshold ? scale : 0.f;
    mask[i] = m;
    y[i] = x[i] * m;
  }
}

void dropout_backward(index_t n, const float* mask, const float* dy, float* dx) {
#pragma omp parallel for simd num_threads(threads_for(n)) schedule(static)
  for (index_t i = 0; i < n; ++i) dx[i] = dy[i] * mask[i];
}

void dropout_forward_ref(index_t n, const float* x, double rate, std::uint64_t seed, float* mask, float* y) {
  for (index_t i = 0; i < n; ++i) {
    const bool keep = double(detail::uniform_hash(seed, std::uint64_t(i))) >= rate;
    mask[i] = keep ? float(1.0 / (1.0 - rate)) : 0.f;
    y[i] = x[i] * mask[i];
  }
}

void dropout_backward_ref(index_t n, const float* mask, const float* dy, float* dx) {
  for (index_t i = 0; i < n; ++i) dx[i] = mask[i] * dy[i];
}

}  // namespace kilnet::cpu
