// dropout.cu — inverted dropout on the GPU (see dropout.h). The mask comes from the same
// counter-based hash of (seed, i) as the CPU (detail::hash24) with the same integer threshold
// and the same float scale, so masks and outputs are bit-identical to kilnet._cpu for a seed.
// float4 when aligned; y may be x and dx may be dy (same thread reads then writes an element).
#include <cmath>
#include "elem_reduce.cuh"
#include "kilnet/detail/elementwise.h"
#include "kilnet/dropout.h"

namespace kilnet::cuda {
namespace {

__device__ __forceinline__ float keep_scale(std::uint64_t seed, index_t i, std::uint32_t threshold, float scale) {
  return detail::hash24(seed, std::uint64_t(i)) >= threshold ? scale : 0.f;
}

__global__ void dropout_forward_kernel(index_t n, bool vec, const float* x, std::uint32_t threshold,
                                       float scale, std::uint64_t seed, float* mask, float* y) {
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  const index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const index_t n4 = vec ? n / 4 : 0;
  for (index_t i = t; i < n4; i += stride) {
    const float4 xv = reinterpret_cast<const float4*>(x)[i];
    float4 mv, yv;
    mv.x = keep_scale(seed, 4 * i + 0, threshold, scale);
    mv.y = keep_scale(seed, 4 * i + 1, threshold, scale);
    mv.z = keep_scale(seed, 4 * i + 2, threshold, scale);
    mv.w = keep_scale(seed, 4 * i + 3, threshold, scale);
    yv.x = xv.x * mv.x; yv.y = xv.y * mv.y; yv.z = xv.z * mv.z; yv.w = xv.w * mv.w;
    reinterpret_cast<float4*>(mask)[i] = mv;
    reinterpret_cast<float4*>(y)[i] = yv;
  }
  for (index_t i = n4 * 4 + t; i < n; i += stride) {
    const float m = keep_scale(seed, i, threshold, scale);
    const float xi = x[i];
    mask[i] = m;
    y[i] = xi * m;
  }
}

__global__ void dropout_backward_kernel(index_t n, bool vec, const float* mask, const float* dy, float* dx) {
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  const index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const index_t n4 = vec ? n / 4 : 0;
  for (index_t i = t; i < n4; i += stride) {
    const float4 mv = reinterpret_cast<const float4*>(mask)[i];
    const float4 gv = reinterpret_cast<const float4*>(dy)[i];
    float4 r;
    r.x = gv.x * mv.x; r.y = gv.y * mv.y; r.z = gv.z * mv.z; r.w = gv.w * mv.w;
    reinterpret_cast<float4*>(dx)[i] = r;
  }
  for (index_t i = n4 * 4 + t; i < n; i += stride) dx[i] = dy[i] * mask[i];
}

}  // namespace

void dropout_forward(index_t n, const float* x, double rate, std::uint64_t seed, float* mask, float* y,
                     void* stream) {
  if (n <= 0) return;
  // Exactly the CPU's constants (dropout.cpp): u >= rate  <=>  hash24 >= ceil(rate * 2^24).
  const float scale = float(1.0 / (1.0 - rate));
  const std::uint32_t threshold = std::uint32_t(std::ceil(rate * 16777216.0));
  const bool vec = elem::aligned16(x, mask, y);
  const index_t items = vec ? n / 4 + n % 4 : n;
  dropout_forward_kernel<<<elem::stream_grid(items), 256, 0, as_stream(stream)>>>(n, vec, x, threshold, scale,
                                                                                 seed, mask, y);
  KILNET_CHECK_LAUNCH("dropout_forward_kernel");
}

void dropout_backward(index_t n, const float* mask, const float* dy, float* dx, void* stream) {
  if (n <= 0) return;
  const bool vec = elem::aligned16(mask, dy, dx);
  const index_t items = vec ? n / 4 + n % 4 : n;
  dropout_backward_kernel<<<elem::stream_grid(items), 256, 0, as_stream(stream)>>>(n, vec, mask, dy, dx);
  KILNET_CHECK_LAUNCH("dropout_backward_kernel");
}

}  // namespace kilnet::cuda
