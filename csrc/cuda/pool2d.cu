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

// The sizes in the index type of the launch: 32-bit when every flat index fits (the common
// case: 64-bit division is several times slower on the GPU), else 64-bit.
template <class Idx>
struct Dims {
  Idx N, H, W, C, R, S, P, Q, sh, sw, ph, pw;
  explicit Dims(const Pool2dShape& s)
      : N(Idx(s.N)), H(Idx(s.H)), W(Idx(s.W)), C(Idx(s.C)), R(Idx(s.R)), S(Idx(s.S)), P(Idx(s.P)),
        Q(Idx(s.Q)), sh(Idx(s.stride_h)), sw(Idx(s.stride_w)), ph(Idx(s.pad_h)), pw(Idx(s.pad_w)) {}
};

template <class Idx>
struct Range { Idx lo, hi; };

// The real (unpadded) input range [lo, hi) of the window starting at `start` of length `len`.
template <class Idx>
__device__ __forceinline__ Range<Idx> clip(Idx start, Idx len, Idx size) {
  return {start > 0 ? start : Idx(0), start + len < size ? start + len : size};
}

// The forward's comparison (as pool2d.cpp): strictly greater keeps the first maximum; a NaN
// always wins, so NaN propagates.
__device__ __forceinline__ bool takes(float v, float best) { return v > best || v != v; }

// The windows p (rows; likewise q for columns) that cover input row h: those with
// p*stride - pad <= h < p*stride - pad + len, clamped to [0, P). Returns [lo, hi).
template <class Idx>
__device__ __forceinline__ Range<Idx> covering(Idx h, Idx pad, Idx len, Idx stride, Idx P) {
  const Idx top = h + pad;                  // >= 0
  const Idx hi = top / stride + 1;          // p <= top / stride
  const Idx first = top - len + 1;          // p*stride >= top - len + 1
  const Idx lo = first <= 0 ? Idx(0) : (first + stride - 1) / stride;
  return {lo, hi < P ? hi : P};
}

#define KILNET_GRID_STRIDE(Idx, i, n) \
  for (Idx i = Idx(blockIdx.x) * Idx(blockDim.x) + Idx(threadIdx.x); i < (n); i += Idx(gridDim.x) * Idx(blockDim.x))

template <class Idx>
__global__ void maxpool_fwd_kernel(Dims<Idx> d, const float* __restrict__ x, float* __restrict__ y) {
  KILNET_GRID_STRIDE(Idx, i, d.N * d.P * d.Q * d.C) {
    const Idx c = i % d.C;
    Idx r = i / d.C;
    const Idx q = r % d.Q; r /= d.Q;
    const Idx p = r % d.P;
    const Idx n = r / d.P;
    const Range<Idx> hr = clip(p * d.sh - d.ph, d.R, d.H), wr = clip(q * d.sw - d.pw, d.S, d.W);
    const float* xn = x + n * d.H * d.W * d.C + c;
    float best = xn[(hr.lo * d.W + wr.lo) * d.C];
    for (Idx h = hr.lo; h < hr.hi; ++h)
      for (Idx w = (h == hr.lo ? wr.lo + 1 : wr.lo); w < wr.hi; ++w) {
        const float v = xn[(h * d.W + w) * d.C];
        best = takes(v, best) ? v : best;
      }
    y[i] = best;
  }
}

// dx[n, h, w, c] = sum of dy over the windows that cover (h, w) and whose first maximum (the
// forward's winner, recomputed from x) is (h, w).
template <class Idx>
__global__ void maxpool_bwd_kernel(Dims<Idx> d, const float* __restrict__ x,
                                   const float* __restrict__ dy, float* __restrict__ dx) {
  KILNET_GRID_STRIDE(Idx, i, d.N * d.H * d.W * d.C) {
    const Idx c = i % d.C;
    Idx r = i / d.C;
    const Idx w0 = r % d.W; r /= d.W;
    const Idx h0 = r % d.H;
    const Idx n = r / d.H;
    const float* xn = x + n * d.H * d.W * d.C + c;
    const float* dyn = dy + n * d.P * d.Q * d.C + c;
    const Range<Idx> pr = covering(h0, d.ph, d.R, d.sh, d.P);
    const Range<Idx> qr = covering(w0, d.pw, d.S, d.sw, d.Q);
    float acc = 0.f;
    for (Idx p = pr.lo; p < pr.hi; ++p) {
      const Range<Idx> hr = clip(p * d.sh - d.ph, d.R, d.H);
      for (Idx q = qr.lo; q < qr.hi; ++q) {
        const Range<Idx> wr = clip(q * d.sw - d.pw, d.S, d.W);
        Idx bh = hr.lo, bw = wr.lo;
        float best = xn[(hr.lo * d.W + wr.lo) * d.C];
        for (Idx h = hr.lo; h < hr.hi; ++h)
          for (Idx w = (h == hr.lo ? wr.lo + 1 : wr.lo); w < wr.hi; ++w) {
            const float v = xn[(h * d.W + w) * d.C];
            if (takes(v, best)) { best = v; bh = h; bw = w; }
          }
        if (bh == h0 && bw == w0) acc += dyn[(p * d.Q + q) * d.C];
      }
    }
    dx[i] = acc;
  }
}

template <class Idx>
__global__ void avgpool_fwd_kernel(Dims<Idx> d, const float* __restrict__ x, float* __restrict__ y) {
  KILNET_GRID_STRIDE(Idx, i, d.N * d.P * d.Q * d.C) {
    const Idx c = i % d.C;
    Idx r = i / d.C;
    const Idx q = r % d.Q; r /= d.Q;
    const Idx p = r % d.P;
    const Idx n = r / d.P;
    const Range<Idx> hr = clip(p * d.sh - d.ph, d.R, d.H), wr = clip(q * d.sw - d.pw, d.S, d.W);
    const float* xn = x + n * d.H * d.W * d.C + c;
    float sum = 0.f;
    for (Idx h = hr.lo; h < hr.hi; ++h)
      for (Idx w = wr.lo; w < wr.hi; ++w) sum += xn[(h * d.W + w) * d.C];
    y[i] = sum / float((hr.hi - hr.lo) * (wr.hi - wr.lo));
  }
}

// dx[n, h, w, c] = sum over the windows covering (h, w) of dy / (the window's real size).
template <class Idx>
__global__ void avgpool_bwd_kernel(Dims<Idx> d, const float* __restrict__ dy, float* __restrict__ dx) {
  KILNET_GRID_STRIDE(Idx, i, d.N * d.H * d.W * d.C) {
    const Idx c = i % d.C;
    Idx r = i / d.C;
    const Idx w0 = r % d.W; r /= d.W;
    const Idx h0 = r % d.H;
    const Idx n = r / d.H;
    const float* dyn = dy + n * d.P * d.Q * d.C + c;
    const Range<Idx> pr = covering(h0, d.ph, d.R, d.sh, d.P);
    const Range<Idx> qr = covering(w0, d.pw, d.S, d.sw, d.Q);
    float acc = 0.f;
    for (Idx p = pr.lo; p < pr.hi; ++p) {
      const Range<Idx> hr = clip(p * d.sh - d.ph, d.R, d.H);
      for (Idx q = qr.lo; q < qr.hi; ++q) {
        const Range<Idx> wr = clip(q * d.sw - d.pw, d.S, d.W);
        const float count = float((hr.hi - hr.lo) * (wr.hi - wr.lo));
        acc += dyn[(p * d.Q + q) * d.C] / count;
      }
    }
    dx[i] = acc;
  }
}

// y[n, c] = (sum over k of x[n, k, c], in order) / HW: one thread per (n, c).
template <class Idx>
__global__ void gap_fwd_kernel(Idx N, Idx HW, Idx C, const float* __restrict__ x, float* __restrict__ y) {
  KILNET_GRID_STRIDE(Idx, i, N * C) {
    const Idx n = i / C, c = i % C;
    const float* xn = x + n * HW * C + c;
    float sum = 0.f;
    for (Idx k = 0; k < HW; ++k) sum += xn[k * C];
    y[i] = sum / float(HW);
  }
}

template <class Idx>
__global__ void gap_bwd_kernel(Idx N, Idx HW, Idx C, const float* __restrict__ dy, float* __restrict__ dx) {
  KILNET_GRID_STRIDE(Idx, i, N * HW * C) {
    const Idx c = i % C, n = i / (HW * C);
    dx[i] = dy[n * C + c] / float(HW);
  }
}

#undef KILNET_GRID_STRIDE

constexpr int kBlock = 256;

// 32-bit indices when the largest flat index (input or output, with a window's overshoot)
// stays far below 2^31.
bool small_index(const Pool2dShape& s) {
  const index_t lim = index_t(1) << 30;
  return s.N * s.H * s.W * s.C < lim && s.N * s.P * s.Q * s.C < lim &&
         (s.P * s.stride_h + s.R) * s.W * s.C < lim && (s.Q * s.stride_w + s.S) * s.C < lim;
}

}  // namespace

// Each entry point picks the index type, then launches one grid-stride kernel.
void maxpool2d_forward(const Pool2dShape& s, const float* x, float* y, void* stream) {
  const index_t n = s.N * s.P * s.Q * s.C;
  if (n == 0) return;
  const cudaStream_t st = as_stream(stream);
  if (small_index(s)) maxpool_fwd_kernel<int><<<grid_for(n, kBlock), kBlock, 0, st>>>(Dims<int>(s), x, y);
  else maxpool_fwd_kernel<index_t><<<grid_for(n, kBlock), kBlock, 0, st>>>(Dims<index_t>(s), x, y);
  KILNET_CHECK_LAUNCH("maxpool_fwd_kernel");
}

void maxpool2d_backward(const Pool2dShape& s, const float* x, const float* dy, float* dx, void* stream) {
  const index_t n = s.N * s.H * s.W * s.C;
  if (n == 0) return;
  const cudaStream_t st = as_stream(stream);
  if (small_index(s)) maxpool_bwd_kernel<int><<<grid_for(n, kBlock), kBlock, 0, st>>>(Dims<int>(s), x, dy, dx);
  else maxpool_bwd_kernel<index_t><<<grid_for(n, kBlock), kBlock, 0, st>>>(Dims<index_t>(s), x, dy, dx);
  KILNET_CHECK_LAUNCH("maxpool_bwd_kernel");
}

void avgpool2d_forward(const Pool2dShape& s, const float* x, float* y, void* stream) {
  const index_t n = s.N * s.P * s.Q * s.C;
  if (n == 0) return;
  const cudaStream_t st = as_stream(stream);
  if (small_index(s)) avgpool_fwd_kernel<int><<<grid_for(n, kBlock), kBlock, 0, st>>>(Dims<int>(s), x, y);
  else avgpool_fwd_kernel<index_t><<<grid_for(n, kBlock), kBlock, 0, st>>>(Dims<index_t>(s), x, y);
  KILNET_CHECK_LAUNCH("avgpool_fwd_kernel");
}

void avgpool2d_backward(const Pool2dShape& s, const float* dy, float* dx, void* stream) {
  const index_t n = s.N * s.H * s.W * s.C;
  if (n == 0) return;
  const cudaStream_t st = as_stream(stream);
  if (small_index(s)) avgpool_bwd_kernel<int><<<grid_for(n, kBlock), kBlock, 0, st>>>(Dims<int>(s), dy, dx);
  else avgpool_bwd_kernel<index_t><<<grid_for(n, kBlock), kBlock, 0, st>>>(Dims<index_t>(s), dy, dx);
  KILNET_CHECK_LAUNCH("avgpool_bwd_kernel");
}

void global_avgpool2d_forward(index_t N, index_t HW, index_t C, const float* x, float* y, void* stream) {
  if (N * C == 0) return;
  const cudaStream_t st = as_stream(stream);
  if (N * HW * C < (index_t(1) << 30))
    gap_fwd_kernel<int><<<grid_for(N * C, kBlock), kBlock, 0, st>>>(int(N), int(HW), int(C), x, y);
  else
    gap_fwd_kernel<index_t><<<grid_for(N * C, kBlock), kBlock, 0, st>>>(N, HW, C, x, y);
  KILNET_CHECK_LAUNCH("gap_fwd_kernel");
}

void global_avgpool2d_backward(index_t N, index_t HW, index_t C, const float* dy, float* dx, void* stream) {
  const index_t n = N * HW * C;
  if (n == 0) return;
  const cudaStream_t st = as_stream(stream);
  if (n < (index_t(1) << 30))
    gap_bwd_kernel<int><<<grid_for(n, kBlock), kBlock, 0, st>>>(int(N), int(HW), int(C), dy, dx);
  else
    gap_bwd_kernel<index_t><<<grid_for(n, kBlock), kBlock, 0, st>>>(N, HW, C, dy, dx);
  KILNET_CHECK_LAUNCH("gap_bwd_kernel");
}

}  // namespace kilnet::cuda
