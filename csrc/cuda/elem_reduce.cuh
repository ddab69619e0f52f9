// elem_reduce.cuh — deterministic reductions for the elementwise families (activation, loss,
// optim): warp and block sums/maxima in a fixed order, stream-ordered scratch, and the
// "partials -> one value" finish that either writes a device float (no sync) or returns the
// value to the host (sync). No float atomics anywhere: the same inputs give the same bits.
#pragma once
#include <cuda_runtime.h>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include "launch.cuh"

namespace kilnet::cuda {
namespace elem {
// Internal linkage: every .cu file that includes this gets its own copies (its own finish_kernel
// registered with its own module), so no kernel is shared across translation units.
namespace {

// Butterfly (xor) reductions: every lane ends with the same value, in a fixed order.
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide sum; every thread of the block must call it (it synchronizes) and gets the result.
// blockDim.x must be a multiple of 32 (all our launches use 128..1024).
template <class T>
__device__ __forceinline__ T block_sum(T v) {
  __shared__ T sh[33];
  v = warp_sum(v);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();   // the previous call's readers of sh are done
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    T x = lane < nw ? sh[lane] : T(0);
    x = warp_sum(x);
    if (lane == 0) sh[32] = x;
  }
  __syncthreads();
  return sh[32];
}

__device__ __forceinline__ float block_max(float v) {
  __shared__ float sh[33];
  v = warp_max(v);
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) sh[w] = v;
  __syncthreads();
  if (w == 0) {
    float x = lane < nw ? sh[lane] : -INFINITY;
    x = warp_max(x);
    if (lane == 0) sh[32] = x;
  }
  __syncthreads();
  return sh[32];
}

// A "group" works on one row at a time: a warp (many short rows) or a whole block (long rows).
// Loops over rows are uniform across the group (every thread of it has the same row), so the
// group's reductions (shuffles or __syncthreads) are always reached by all of its threads.
struct WarpGroup {
  __device__ int rank() const { return threadIdx.x & 31; }
  __device__ int size() const { return 32; }
  __device__ index_t first_row() const { return index_t(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); }
  __device__ index_t row_stride() const { return index_t(gridDim.x) * (blockDim.x >> 5); }
  __device__ float max(float v) const { return warp_max(v); }
  template <class T> __device__ T sum(T v) const { return warp_sum(v); }
};
struct BlockGroup {
  __device__ int rank() const { return threadIdx.x; }
  __device__ int size() const { return blockDim.x; }
  __device__ index_t first_row() const { return blockIdx.x; }
  __device__ index_t row_stride() const { return gridDim.x; }
  __device__ float max(float v) const { return block_max(v); }
  template <class T> __device__ T sum(T v) const { return block_sum(v); }
};

// Rows of at most 1024 columns held in registers by one warp: VPT values per lane (a power of
// two, cols <= 32 * VPT), element j = lane + 32 k in slot k. with_vpt calls f with
// std::integral_constant<int, VPT> for the smallest VPT that fits.
template <class F>
inline void with_vpt(index_t cols, F f) {
  if (cols <= 32) f(std::integral_constant<int, 1>{});
  else if (cols <= 64) f(std::integral_constant<int, 2>{});
  else if (cols <= 128) f(std::integral_constant<int, 4>{});
  else if (cols <= 256) f(std::integral_constant<int, 8>{});
  else if (cols <= 512) f(std::integral_constant<int, 16>{});
  else f(std::integral_constant<int, 32>{});
}

// Stream-ordered scratch: cudaMallocAsync now, cudaFreeAsync on the same stream when it goes
// out of scope (the free is ordered after every kernel already queued that uses it).
struct Scratch {
  void* ptr = nullptr;
  cudaStream_t stream;
  Scratch(size_t bytes, cudaStream_t s) : stream(s) {
    check(cudaMallocAsync(&ptr, bytes, s), "cudaMallocAsync (reduction scratch)");
  }
  ~Scratch() {
    if (ptr) cudaFreeAsync(ptr, stream);   // errors here would surface at the next check
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  template <class T> T* as(size_t byte_offset = 0) const {
    return reinterpret_cast<T*>(static_cast<char*>(ptr) + byte_offset);
  }
};

// Partial sums: a fixed grid (a function of the sizes only) so the order is always the same.
constexpr int kReduceBlocks = 1024;
constexpr int kReduceThreads = 256;

// One block: value = (sum_k a*part1[k] + b*part2[k]) / denom, in double and in a fixed order.
// part2 may be null. Writes the double to *res and, when out is not null, float(value) to *out.
template <int Threads>
__global__ void __launch_bounds__(Threads) finish_kernel(int nparts, const double* part1,
                                                         const double* part2, double a, double b,
                                                         double denom, double* res, float* out) {
  double s1 = 0.0, s2 = 0.0;
  for (int k = threadIdx.x; k < nparts; k += Threads) {
    s1 += part1[k];
    if (part2) s2 += part2[k];
  }
  s1 = block_sum(s1);
  s2 = block_sum(s2);
  if (threadIdx.x == 0) {
    const double v = (part2 ? a * s1 + b * s2 : a * s1) / denom;
    *res = v;
    if (out) *out = float(v);
  }
}

inline void launch_finish(int nparts, const double* part1, const double* part2, double a, double b,
                          double denom, double* res, float* out, cudaStream_t s) {
  finish_kernel<256><<<1, 256, 0, s>>>(nparts, part1, part2, a, b, denom, res, out);
  KILNET_CHECK_LAUNCH("finish_kernel");
}

// The host side of a value-returning call: copy the double back and wait for the stream.
inline double read_back(const double* res, cudaStream_t s) {
  double v = 0.0;
  check(cudaMemcpyAsync(&v, res, sizeof(double), cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync (loss value)");
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize (loss value)");
  return v;
}

// All of a and b and c (and d, e) 16-byte aligned: the float4 path is safe.
inline bool aligned16(const void* a, const void* b = nullptr, const void* c = nullptr,
                      const void* d = nullptr, const void* e = nullptr) {
  auto u = [](const void* p) { return reinterpret_cast<std::uintptr_t>(p) & 15u; };
  return (u(a) | u(b) | u(c) | u(d) | u(e)) == 0;
}

// A grid for a grid-stride loop over n items (n may be 0): one item per thread on small arrays,
// capped at 4224 blocks (32 per SM of an H100/H200) so big arrays loop a few times per thread.
inline unsigned stream_grid(index_t n, int block = 256) {
  index_t g = (n + block - 1) / block;
  return unsigned(std::max<index_t>(1, std::min<index_t>(g, 132 * 32)));
}

}  // namespace
}  // namespace elem
}  // namespace kilnet::cuda
