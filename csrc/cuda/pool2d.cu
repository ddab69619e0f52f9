// pool2d.cu — max / average / global average pooling on the GPU, NHWC (see kilnet/pool2d.h).
// One thread per output element (forward) or per dx element (backward), channel fastest, so a
// warp reads 32 consecutive channels. Each thread follows the CPU kernel's exact order of
// comparisons and additions, so the results are bit-identical to kilnet::cpu's fast path:
//   - max forward: the clipped window's first position, then `takes` in scan order (r, then s);
//   - backward is a gather: a dx element loops over the windows that cover it, in (p, q) order
//     (the order the CPU adds them in), and adds their dy (max: only windows whose recomputed
//     argmax is this element). No two threads write the same dx: no atomics, no races, and
//     overlapping windows (stride < window) need nothing special.
#include "kilnet/pool2d.h"
#include "launch.cuh"

namespace kilnet::cuda {

namespace {

struct Range { index_t lo, hi; };

__device__ __forceinline__ Range clip(index_t start, index_t len, index_t size) {
  return {start > 0 ? start : 0, start + len < size ? start + len : size};
}
__device__ __forceinline__ Range win_rows(const Pool2dShape& s, index_t p) {
  return clip(p * s.stride_h - s.pad_h, s.R, s.H);
}
__device__ __forceinline__ Range win_cols(const Pool2dShape& s, index_t q) {
  return clip(q * s.stride_w - s.pad_w, s.S, s.W);
}

// The forward's comparison (as pool2d.cpp): strictly greater keeps the first maximum; a NaN
// always wins, so NaN propagates.
__device__ __forceinline__ bool takes(float v, float best) { return v > best || v != v; }

// The windows p (rows; likewise q for columns) that cover input row h: those with
// p*stride - pad <= h < p*stride - pad + R, clamped to [0, P). Returns [lo, hi).
__device__ __forceinline__ Range covering(index_t h, index_t pad, index_t len, index_t stride,
                                          index_t P) {
  const index_t top = h + pad;                  // >= 0
  const index_t hi = top / stride + 1;          // p <= top / stride
  const index_t first = top - len + 1;          // p*stride >= top - len + 1
  const index_t lo = first <= 0 ? 0 : (first + stride - 1) / stride;
  return {lo, hi < P ? hi : P};
}

__global__ void maxpool_fwd_kernel(Pool2dShape s, const float* __restrict__ x, float* __restrict__ y) {
  const index_t total = s.N * s.P * s.Q * s.C;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += index_t(gridDim.x) * blockDim.x) {
    const index_t c = i % s.C;
    index_t r = i / s.C;
    const index_t q = r % s.Q; r /= s.Q;
    const index_t p = r % s.P;
    const index_t n = r / s.P;
    const Range hr = win_rows(s, p), wr = win_cols(s, q);
    const float* xn = x + n * s.H * s.W * s.C + c;
    float best = xn[(hr.lo * s.W + wr.lo) * s.C];
    for (index_t h = hr.lo; h < hr.hi; ++h)
      for (index_t w = (h == hr.lo ? wr.lo + 1 : wr.lo); w < wr.hi; ++w) {
        const float v = xn[(h * s.W + w) * s.C];
        best = takes(v, best) ? v : best;
      }
    y[i] = best;
  }
}

// dx[n, h, w, c] = sum of dy over the windows that cover (h, w) and whose first maximum (the
// forward's winner, recomputed from x) is (h, w).
__global__ void maxpool_bwd_kernel(Pool2dShape s, const float* __restrict__ x,
                                   const float* __restrict__ dy, float* __restrict__ dx) {
  const index_t total = s.N * s.H * s.W * s.C;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += index_t(gridDim.x) * blockDim.x) {
    const index_t c = i % s.C;
    index_t r = i / s.C;
    const index_t w0 = r % s.W; r /= s.W;
    const index_t h0 = r % s.H;
    const index_t n = r / s.H;
    const float* xn = x + n * s.H * s.W * s.C + c;
    const float* dyn = dy + n * s.P * s.Q * s.C + c;
    const Range pr = covering(h0, s.pad_h, s.R, s.stride_h, s.P);
    const Range qr = covering(w0, s.pad_w, s.S, s.stride_w, s.Q);
    float acc = 0.f;
    for (index_t p = pr.lo; p < pr.hi; ++p) {
      const Range hr = win_rows(s, p);
      for (index_t q = qr.lo; q < qr.hi; ++q) {
        const Range wr = win_cols(s, q);
        index_t bh = hr.lo, bw = wr.lo;
        float best = xn[(hr.lo * s.W + wr.lo) * s.C];
        for (index_t h = hr.lo; h < hr.hi; ++h)
          for (index_t w = (h == hr.lo ? wr.lo + 1 : wr.lo); w < wr.hi; ++w) {
            const float v = xn[(h * s.W + w) * s.C];
            if (takes(v, best)) { best = v; bh = h; bw = w; }
          }
        if (bh == h0 && bw == w0) acc += dyn[(p * s.Q + q) * s.C];
      }
    }
    dx[i] = acc;
  }
}

__global__ void avgpool_fwd_kernel(Pool2dShape s, const float* __restrict__ x, float* __restrict__ y) {
  const index_t total = s.N * s.P * s.Q * s.C;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += index_t(gridDim.x) * blockDim.x) {
    const index_t c = i % s.C;
    index_t r = i / s.C;
    const index_t q = r % s.Q; r /= s.Q;
    const index_t p = r % s.P;
    const index_t n = r / s.P;
    const Range hr = win_rows(s, p), wr = win_cols(s, q);
    const float* xn = x + n * s.H * s.W * s.C + c;
    float sum = 0.f;
    for (index_t h = hr.lo; h < hr.hi; ++h)
      for (index_t w = wr.lo; w < wr.hi; ++w) sum += xn[(h * s.W + w) * s.C];
    y[i] = sum / float((hr.hi - hr.lo) * (wr.hi - wr.lo));
  }
}

// dx[n, h, w, c] = sum over the windows covering (h, w) of dy / (the window's real size).
__global__ void avgpool_bwd_kernel(Pool2dShape s, const float* __restrict__ dy, float* __restrict__ dx) {
  const index_t total = s.N * s.H * s.W * s.C;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += index_t(gridDim.x) * blockDim.x) {
    const index_t c = i % s.C;
    index_t r = i / s.C;
    const index_t w0 = r % s.W; r /= s.W;
    const index_t h0 = r % s.H;
    const index_t n = r / s.H;
    const float* dyn = dy + n * s.P * s.Q * s.C + c;
    const Range pr = covering(h0, s.pad_h, s.R, s.stride_h, s.P);
    const Range qr = covering(w0, s.pad_w, s.S, s.stride_w, s.Q);
    float acc = 0.f;
    for (index_t p = pr.lo; p < pr.hi; ++p) {
      const Range hr = win_rows(s, p);
      for (index_t q = qr.lo; q < qr.hi; ++q) {
        const Range wr = win_cols(s, q);
        const float count = float((hr.hi - hr.lo) * (wr.hi - wr.lo));
        acc += dyn[(p * s.Q + q) * s.C] / count;
      }
    }
    dx[i] = acc;
  }
}

// y[n, c] = (sum over i of x[n, i, c], in order) / HW: one thread per (n, c).
__global__ void gap_fwd_kernel(index_t N, index_t HW, index_t C, const float* __restrict__ x,
                               float* __restrict__ y) {
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < N * C;
       i += index_t(gridDim.x) * blockDim.x) {
    const index_t n = i / C, c = i % C;
    const float* xn = x + n * HW * C + c;
    float sum = 0.f;
    for (index_t k = 0; k < HW; ++k) sum += xn[k * C];
    y[i] = sum / float(HW);
  }
}

__global__ void gap_bwd_kernel(index_t N, index_t HW, index_t C, const float* __restrict__ dy,
                               float* __restrict__ dx) {
  const index_t total = N * HW * C;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += index_t(gridDim.x) * blockDim.x) {
    const index_t c = i % C, n = i / (HW * C);
    dx[i] = dy[n * C + c] / float(HW);
  }
}

constexpr int kBlock = 256;

}  // namespace

void maxpool2d_forward(const Pool2dShape& s, const float* x, float* y, void* stream) {
  const index_t n = s.N * s.P * s.Q * s.C;
  if (n == 0) return;
  maxpool_fwd_kernel<<<grid_for(n, kBlock), kBlock, 0, as_stream(stream)>>>(s, x, y);
  KILNET_CHECK_LAUNCH("maxpool_fwd_kernel");
}

void maxpool2d_backward(const Pool2dShape& s, const float* x, const float* dy, float* dx, void* stream) {
  const index_t n = s.N * s.H * s.W * s.C;
  if (n == 0) return;
  maxpool_bwd_kernel<<<grid_for(n, kBlock), kBlock, 0, as_stream(stream)>>>(s, x, dy, dx);
  KILNET_CHECK_LAUNCH("maxpool_bwd_kernel");
}

void avgpool2d_forward(const Pool2dShape& s, const float* x, float* y, void* stream) {
  const index_t n = s.N * s.P * s.Q * s.C;
  if (n == 0) return;
  avgpool_fwd_kernel<<<grid_for(n, kBlock), kBlock, 0, as_stream(stream)>>>(s, x, y);
  KILNET_CHECK_LAUNCH("avgpool_fwd_kernel");
}

void avgpool2d_backward(const Pool2dShape& s, const float* dy, float* dx, void* stream) {
  const index_t n = s.N * s.H * s.W * s.C;
  if (n == 0) return;
  avgpool_bwd_kernel<<<grid_for(n, kBlock), kBlock, 0, as_stream(stream)>>>(s, dy, dx);
  KILNET_CHECK_LAUNCH("avgpool_bwd_kernel");
}

void global_avgpool2d_forward(index_t N, index_t HW, index_t C, const float* x, float* y, void* stream) {
  if (N * C == 0) return;
  gap_fwd_kernel<<<grid_for(N * C, kBlock), kBlock, 0, as_stream(stream)>>>(N, HW, C, x, y);
  KILNET_CHECK_LAUNCH("gap_fwd_kernel");
}

void global_avgpool2d_backward(index_t N, index_t HW, index_t C, const float* dy, float* dx, void* stream) {
  if (N * HW * C == 0) return;
  gap_bwd_kernel<<<grid_for(N * HW * C, kBlock), kBlock, 0, as_stream(stream)>>>(N, HW, C, dy, dx);
  KILNET_CHECK_LAUNCH("gap_bwd_kernel");
}

}  // namespace kilnet::cuda
