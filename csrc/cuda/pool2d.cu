// pool2d.cu — max / average / global average pooling on the GPU, NHWC (see kilnet/pool2d.h).
// One thread per output element (forward) or per dx element (backward), channel fastest, so a
// warp reads 32 consecutive channels. Each thread follows the CPU kernel's exact order of
// comparisons and additions, so the results are bit-identical to kilnet::cpu's fast path:
//   - max forward: the clipped window's first position, then `takes` in scan order (r, then s);
//   - backward is a gather: a dx element loops over the windows that cover it, in (p, q) order
//     (the order the CPU adds them in), and adds their dy (max: only windows whose recomputed
//     argmax is this element). No two threads write the same dx: no atomics, no races, and
//     overlapping windows (stride < window) need nothing special.
#include <cstdint>
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

// V channels per thread: 4 (float4 loads and stores) when C % 4 == 0 and the pointers are
// 16-byte aligned, else 1. Each channel still does exactly the scalar operations.
template <int V>
struct Vec { float v[V]; };

template <int V>
__device__ __forceinline__ Vec<V> load(const float* p) {
  Vec<V> r;
  if constexpr (V == 4) {
    const float4 t = *reinterpret_cast<const float4*>(p);
    r.v[0] = t.x; r.v[1] = t.y; r.v[2] = t.z; r.v[3] = t.w;
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) r.v[k] = p[k];
  }
  return r;
}

template <int V>
__device__ __forceinline__ void store(float* p, const Vec<V>& r) {
  if constexpr (V == 4) {
    *reinterpret_cast<float4*>(p) = make_float4(r.v[0], r.v[1], r.v[2], r.v[3]);
  } else {
#pragma unroll
    for (int k = 0; k < V; ++k) p[k] = r.v[k];
  }
}

// Thread i owns channels [c, c + V) of one output pixel (forward) or input pixel (backward);
// its first element's flat index is i * V.
template <class Idx, int V>
__global__ void maxpool_fwd_kernel(Dims<Idx> d, const float* __restrict__ x, float* __restrict__ y) {
  const Idx CV = d.C / V;
  KILNET_GRID_STRIDE(Idx, i, d.N * d.P * d.Q * CV) {
    const Idx c = (i % CV) * V;
    Idx r = i / CV;
    const Idx q = r % d.Q; r /= d.Q;
    const Idx p = r % d.P;
    const Idx n = r / d.P;
    const Range<Idx> hr = clip(p * d.sh - d.ph, d.R, d.H), wr = clip(q * d.sw - d.pw, d.S, d.W);
    const float* xn = x + n * d.H * d.W * d.C + c;
    Vec<V> best = load<V>(xn + (hr.lo * d.W + wr.lo) * d.C);
    for (Idx h = hr.lo; h < hr.hi; ++h)
      for (Idx w = (h == hr.lo ? wr.lo + 1 : wr.lo); w < wr.hi; ++w) {
        const Vec<V> v = load<V>(xn + (h * d.W + w) * d.C);
#pragma unroll
        for (int k = 0; k < V; ++k) best.v[k] = takes(v.v[k], best.v[k]) ? v.v[k] : best.v[k];
      }
    store<V>(y + i * V, best);
  }
}

// dx[n, h, w, c] = sum of dy over the windows that cover (h, w) and whose first maximum (the
// forward's winner, recomputed from x) is (h, w).
template <class Idx, int V>
__global__ void maxpool_bwd_kernel(Dims<Idx> d, const float* __restrict__ x,
                                   const float* __restrict__ dy, float* __restrict__ dx) {
  const Idx CV = d.C / V;
  KILNET_GRID_STRIDE(Idx, i, d.N * d.H * d.W * CV) {
    const Idx c = (i % CV) * V;
    Idx r = i / CV;
    const Idx w0 = r % d.W; r /= d.W;
    const Idx h0 = r % d.H;
    const Idx n = r / d.H;
    const float* xn = x + n * d.H * d.W * d.C + c;
    const float* dyn = dy + n * d.P * d.Q * d.C + c;
    const Range<Idx> pr = covering(h0, d.ph, d.R, d.sh, d.P);
    const Range<Idx> qr = covering(w0, d.pw, d.S, d.sw, d.Q);
    Vec<V> acc;
#pragma unroll
    for (int k = 0; k < V; ++k) acc.v[k] = 0.f;
    for (Idx p = pr.lo; p < pr.hi; ++p) {
      const Range<Idx> hr = clip(p * d.sh - d.ph, d.R, d.H);
      for (Idx q = qr.lo; q < qr.hi; ++q) {
        const Range<Idx> wr = clip(q * d.sw - d.pw, d.S, d.W);
        // The forward's scan; win[k]: channel k's first maximum is (h0, w0) so far.
        Vec<V> best = load<V>(xn + (hr.lo * d.W + wr.lo) * d.C);
        bool win[V];
#pragma unroll
        for (int k = 0; k < V; ++k) win[k] = hr.lo == h0 && wr.lo == w0;
        for (Idx h = hr.lo; h < hr.hi; ++h)
          for (Idx w = (h == hr.lo ? wr.lo + 1 : wr.lo); w < wr.hi; ++w) {
            const Vec<V> v = load<V>(xn + (h * d.W + w) * d.C);
            const bool here = h == h0 && w == w0;
#pragma unroll
            for (int k = 0; k < V; ++k)
              if (takes(v.v[k], best.v[k])) { best.v[k] = v.v[k]; win[k] = here; }
          }
        const Vec<V> g = load<V>(dyn + (p * d.Q + q) * d.C);
#pragma unroll
        for (int k = 0; k < V; ++k)
          if (win[k]) acc.v[k] += g.v[k];
      }
    }
    store<V>(dx + i * V, acc);
  }
}

template <class Idx, int V>
__global__ void avgpool_fwd_kernel(Dims<Idx> d, const float* __restrict__ x, float* __restrict__ y) {
  const Idx CV = d.C / V;
  KILNET_GRID_STRIDE(Idx, i, d.N * d.P * d.Q * CV) {
    const Idx c = (i % CV) * V;
    Idx r = i / CV;
    const Idx q = r % d.Q; r /= d.Q;
    const Idx p = r % d.P;
    const Idx n = r / d.P;
    const Range<Idx> hr = clip(p * d.sh - d.ph, d.R, d.H), wr = clip(q * d.sw - d.pw, d.S, d.W);
    const float* xn = x + n * d.H * d.W * d.C + c;
    Vec<V> sum;
#pragma unroll
    for (int k = 0; k < V; ++k) sum.v[k] = 0.f;
    for (Idx h = hr.lo; h < hr.hi; ++h)
      for (Idx w = wr.lo; w < wr.hi; ++w) {
        const Vec<V> v = load<V>(xn + (h * d.W + w) * d.C);
#pragma unroll
        for (int k = 0; k < V; ++k) sum.v[k] += v.v[k];
      }
    const float count = float((hr.hi - hr.lo) * (wr.hi - wr.lo));
#pragma unroll
    for (int k = 0; k < V; ++k) sum.v[k] = sum.v[k] / count;
    store<V>(y + i * V, sum);
  }
}

// dx[n, h, w, c] = sum over the windows covering (h, w) of dy / (the window's real size).
template <class Idx, int V>
__global__ void avgpool_bwd_kernel(Dims<Idx> d, const float* __restrict__ dy, float* __restrict__ dx) {
  const Idx CV = d.C / V;
  KILNET_GRID_STRIDE(Idx, i, d.N * d.H * d.W * CV) {
    const Idx c = (i % CV) * V;
    Idx r = i / CV;
    const Idx w0 = r % d.W; r /= d.W;
    const Idx h0 = r % d.H;
    const Idx n = r / d.H;
    const float* dyn = dy + n * d.P * d.Q * d.C + c;
    const Range<Idx> pr = covering(h0, d.ph, d.R, d.sh, d.P);
    const Range<Idx> qr = covering(w0, d.pw, d.S, d.sw, d.Q);
    Vec<V> acc;
#pragma unroll
    for (int k = 0; k < V; ++k) acc.v[k] = 0.f;
    for (Idx p = pr.lo; p < pr.hi; ++p) {
      const Range<Idx> hr = clip(p * d.sh - d.ph, d.R, d.H);
      for (Idx q = qr.lo; q < qr.hi; ++q) {
        const Range<Idx> wr = clip(q * d.sw - d.pw, d.S, d.W);
        const float count = float((hr.hi - hr.lo) * (wr.hi - wr.lo));
        const Vec<V> g = load<V>(dyn + (p * d.Q + q) * d.C);
#pragma unroll
        for (int k = 0; k < V; ++k) acc.v[k] += g.v[k] / count;
      }
    }
    store<V>(dx + i * V, acc);
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

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Launches kernel<Idx, V> over n / V threads: Idx int when the sizes allow, V = 4 when the
// channels come in aligned groups of 4 (all pointers 16-byte aligned), else 1.
#define KILNET_POOL_LAUNCH(kernel, s, n, vec4, st, ...)                                      \
  do {                                                                                       \
    const int V_ = (vec4) ? 4 : 1;                                                           \
    const unsigned g_ = grid_for((n) / V_, kBlock);                                          \
    if (small_index(s)) {                                                                    \
      if (V_ == 4) kernel<int, 4><<<g_, kBlock, 0, st>>>(Dims<int>(s), __VA_ARGS__);         \
      else kernel<int, 1><<<g_, kBlock, 0, st>>>(Dims<int>(s), __VA_ARGS__);                 \
    } else {                                                                                 \
      if (V_ == 4) kernel<index_t, 4><<<g_, kBlock, 0, st>>>(Dims<index_t>(s), __VA_ARGS__); \
      else kernel<index_t, 1><<<g_, kBlock, 0, st>>>(Dims<index_t>(s), __VA_ARGS__);         \
    }                                                                                        \
    KILNET_CHECK_LAUNCH(#kernel);                                                            \
  } while (0)

void maxpool2d_forward(const Pool2dShape& s, const float* x, float* y, void* stream) {
  const index_t n = s.N * s.P * s.Q * s.C;
  if (n == 0) return;
  const bool vec4 = s.C % 4 == 0 && aligned16(x) && aligned16(y);
  KILNET_POOL_LAUNCH(maxpool_fwd_kernel, s, n, vec4, as_stream(stream), x, y);
}

void maxpool2d_backward(const Pool2dShape& s, const float* x, const float* dy, float* dx, void* stream) {
  const index_t n = s.N * s.H * s.W * s.C;
  if (n == 0) return;
  const bool vec4 = s.C % 4 == 0 && aligned16(x) && aligned16(dy) && aligned16(dx);
  KILNET_POOL_LAUNCH(maxpool_bwd_kernel, s, n, vec4, as_stream(stream), x, dy, dx);
}

void avgpool2d_forward(const Pool2dShape& s, const float* x, float* y, void* stream) {
  const index_t n = s.N * s.P * s.Q * s.C;
  if (n == 0) return;
  const bool vec4 = s.C % 4 == 0 && aligned16(x) && aligned16(y);
  KILNET_POOL_LAUNCH(avgpool_fwd_kernel, s, n, vec4, as_stream(stream), x, y);
}

void avgpool2d_backward(const Pool2dShape& s, const float* dy, float* dx, void* stream) {
  const index_t n = s.N * s.H * s.W * s.C;
  if (n == 0) return;
  const bool vec4 = s.C % 4 == 0 && aligned16(dy) && aligned16(dx);
  KILNET_POOL_LAUNCH(avgpool_bwd_kernel, s, n, vec4, as_stream(stream), dy, dx);
}

#undef KILNET_POOL_LAUNCH

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
