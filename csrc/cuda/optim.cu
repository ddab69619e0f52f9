// optim.cu — optimizer updates over the flat parameter buffer on the GPU (see optim.h).
// Every update is ONE launch over the whole buffer: a grid-stride loop of float4 loads/stores
// when all its buffers are 16-byte aligned (CuPy allocations are 256-byte aligned; views into the
// flat buffer may not be, and then the scalar loop runs), then a scalar loop for the n % 4 tail.
// The per-element formulas are loss.cpp's/optim.cpp's, in the same order of operations; the
// optional parts (momentum, nesterov, centered, weight decay) are template flags.
// Adam's bias correction alpha is computed on the host in double, as on the CPU.
// clip_by_norm: per segment sums of squares in double over a 2-D grid (segment x part), their
// fixed-order sum per segment (no atomics), then one scaling pass; l1l2_penalty: fixed-order partial sums.
#include <cmath>
#include <vector>
#include "elem_reduce.cuh"
#include "kilnet/detail/elementwise.h"
#include "kilnet/optim.h"

namespace kilnet::cuda {
namespace {

using elem::aligned16;
using elem::block_sum;

// Threads of a grid-stride loop: index and stride.
struct Grid {
  index_t t, stride;
  __device__ Grid() : t(index_t(blockIdx.x) * blockDim.x + threadIdx.x), stride(index_t(gridDim.x) * blockDim.x) {}
};

__device__ __forceinline__ float4 ld4(const float* p, index_t i) { return reinterpret_cast<const float4*>(p)[i]; }
__device__ __forceinline__ void st4(float* p, index_t i, float4 v) { reinterpret_cast<float4*>(p)[i] = v; }

// f(float& p, float g, float& s1, float& s2, float& s3) on every element; only the first NS state
// streams exist (the others may be null and are never touched).
// NS: number of state buffers actually present (S1, S2, S3 in that order).
template <int NS, class F>
__device__ __forceinline__ void update_loop(index_t n, bool vec, float* p, const float* g, float* s1,
                                            float* s2, float* s3, F f) {
  Grid gr;
  const index_t n4 = vec ? n / 4 : 0;
  for (index_t i = gr.t; i < n4; i += gr.stride) {
    float4 P = ld4(p, i);
    const float4 Gv = ld4(g, i);
    float4 A{0, 0, 0, 0}, B{0, 0, 0, 0}, C{0, 0, 0, 0};
    if constexpr (NS >= 1) A = ld4(s1, i);
    if constexpr (NS >= 2) B = ld4(s2, i);
    if constexpr (NS >= 3) C = ld4(s3, i);
    f(P.x, Gv.x, A.x, B.x, C.x);
    f(P.y, Gv.y, A.y, B.y, C.y);
    f(P.z, Gv.z, A.z, B.z, C.z);
    f(P.w, Gv.w, A.w, B.w, C.w);
    st4(p, i, P);
    if constexpr (NS >= 1) st4(s1, i, A);
    if constexpr (NS >= 2) st4(s2, i, B);
    if constexpr (NS >= 3) st4(s3, i, C);
  }
  for (index_t i = n4 * 4 + gr.t; i < n; i += gr.stride) {
    float P = p[i], A = 0.f, B = 0.f, C = 0.f;
    if constexpr (NS >= 1) A = s1[i];
    if constexpr (NS >= 2) B = s2[i];
    if constexpr (NS >= 3) C = s3[i];
    f(P, g[i], A, B, C);
    p[i] = P;
    if constexpr (NS >= 1) s1[i] = A;
    if constexpr (NS >= 2) s2[i] = B;
    if constexpr (NS >= 3) s3[i] = C;
  }
}

// --------------------------------------------------------------------------- SGD
// (Functors rather than device lambdas: no --extended-lambda needed.)
template <bool Momentum, bool Nesterov>
struct SgdOp {
  float lr, momentum;
  __device__ void operator()(float& pi, float gi, float& vi, float&, float&) const {
    if constexpr (!Momentum) {
      pi -= lr * gi;
    } else {
      const float v = momentum * vi - lr * gi;
      vi = v;
      pi += Nesterov ? momentum * v - lr * gi : v;
    }
  }
};
template <bool Momentum, bool Nesterov>
__global__ void sgd_kernel(index_t n, bool vec, float* p, const float* g, float* vel, float lr, float momentum) {
  update_loop<Momentum ? 1 : 0>(n, vec, p, g, vel, nullptr, nullptr, SgdOp<Momentum, Nesterov>{lr, momentum});
}

// --------------------------------------------------------------------------- Adam / AdamW
template <bool Decay>
struct AdamOp {
  float alpha, c1, c2, eps, wdl;
  __device__ void operator()(float& pi, float gi, float& mi, float& vi, float&) const {
    mi = mi + (gi - mi) * c1;
    vi = vi + (gi * gi - vi) * c2;
    if constexpr (Decay) pi = (pi - pi * wdl) - alpha * mi / (sqrtf(vi) + eps);
    else pi -= alpha * mi / (sqrtf(vi) + eps);
  }
};
// The hot one: 28 bytes per element (read p g m v, write p m v), pure streaming.
template <bool Decay>
__global__ void __launch_bounds__(256) adam_kernel(index_t n, bool vec, float* p, const float* g, float* m,
                                                   float* v, float alpha, float c1, float c2, float eps,
                                                   float wdl) {
  update_loop<2>(n, vec, p, g, m, v, nullptr, AdamOp<Decay>{alpha, c1, c2, eps, wdl});
}

// --------------------------------------------------------------------------- RMSprop
// State streams: s1 = velocity, then the average gradient (Centered), then the momentums.
template <bool Centered, bool Momentum>
struct RmspropOp {
  float lr, rho, c, momentum, eps, wdl;
  __device__ void operator()(float& pi, float gi, float& vi, float& s2, float& s3) const {
    pi -= pi * wdl;
    vi = rho * vi + c * gi * gi;
    float den = vi + eps;
    if constexpr (Centered) {
      s2 = rho * s2 + c * gi;   // s2 is the average gradient
      den = vi - s2 * s2 + eps;
    }
    const float inc = lr * gi / sqrtf(den);
    if constexpr (Momentum) {
      float& mi = Centered ? s3 : s2;
      mi = momentum * mi + inc;
      pi -= mi;
    } else {
      pi -= inc;
    }
  }
};
template <bool Centered, bool Momentum>
__global__ void rmsprop_kernel(index_t n, bool vec, float* p, const float* g, float* v, float* a, float* mom,
                               float lr, float rho, float momentum, float eps, float wdl) {
  update_loop<1 + int(Centered) + int(Momentum)>(n, vec, p, g, v, Centered ? a : mom, Centered ? mom : nullptr,
      RmspropOp<Centered, Momentum>{lr, rho, 1.f - rho, momentum, eps, wdl});
}

// --------------------------------------------------------------------------- Adagrad
struct AdagradOp {
  float lr, eps, wdl;
  __device__ void operator()(float& pi, float gi, float& ai, float&, float&) const {
    ai = ai + gi * gi;
    pi = (pi - pi * wdl) - lr * gi / sqrtf(ai + eps);
  }
};
__global__ void adagrad_kernel(index_t n, bool vec, float* p, const float* g, float* acc, float lr, float eps,
                               float wdl) {
  update_loop<1>(n, vec, p, g, acc, nullptr, nullptr, AdagradOp{lr, eps, wdl});
}

// --------------------------------------------------------------------------- clipping
// The CPU's std::min(std::max(g, -cv), cv): NaN stays NaN (fminf/fmaxf would drop it).
__device__ __forceinline__ float clamp_keep_nan(float g, float cv) {
  const float a = g < -cv ? -cv : g;
  return cv < a ? cv : a;
}

__global__ void clip_value_kernel(index_t n, bool vec, float* g, float cv) {
  Grid gr;
  const index_t n4 = vec ? n / 4 : 0;
  for (index_t i = gr.t; i < n4; i += gr.stride) {
    float4 G = ld4(g, i);
    G.x = clamp_keep_nan(G.x, cv); G.y = clamp_keep_nan(G.y, cv);
    G.z = clamp_keep_nan(G.z, cv); G.w = clamp_keep_nan(G.w, cv);
    st4(g, i, G);
  }
  for (index_t i = n4 * 4 + gr.t; i < n; i += gr.stride) g[i] = clamp_keep_nan(g[i], cv);
}

// Segment k = blockIdx.x, part = blockIdx.y of gridDim.y parts: each block sums the squares of
// its grid-stride share of the segment into partial[k * parts + part] (double).
__global__ void __launch_bounds__(256) seg_sumsq_kernel(const index_t* off, const float* g, double* partial) {
  const index_t k = blockIdx.x;
  const index_t lo = off[k], hi = off[k + 1];
  const index_t stride = index_t(gridDim.y) * blockDim.x;
  double s = 0.0;
  for (index_t i = lo + index_t(blockIdx.y) * blockDim.x + threadIdx.x; i < hi; i += stride) {
    const double x = g[i];
    s += x * x;
  }
  s = block_sum(s);
  if (threadIdx.x == 0) partial[k * gridDim.y + blockIdx.y] = s;
}

// One block per segment: add its parts' partial sums in order and turn the norm into the
// scale clipnorm / max(norm, clipnorm) (NaN when the norm is NaN, as on the CPU).
__global__ void __launch_bounds__(256) seg_norm_kernel(int parts, const double* partial, float clipnorm,
                                                       double* scale) {
  const index_t k = blockIdx.x;
  double s = 0.0;
  for (int q = threadIdx.x; q < parts; q += blockDim.x) s += partial[k * parts + q];
  s = block_sum(s);
  if (threadIdx.x == 0) {
    const double norm = sqrt(s);
    scale[k] = isnan(norm) ? norm : double(clipnorm) / fmax(norm, double(clipnorm));
  }
}

// The same 2-D grid as seg_sumsq_kernel: g *= float(scale[k]), skipped when the scale is 1.
__global__ void __launch_bounds__(256) seg_scale_kernel(const index_t* off, float* g, const double* scale) {
  const index_t k = blockIdx.x;
  const double sc = scale[k];
  if (sc == 1.0) return;   // norm <= clipnorm: unchanged (uniform across the block)
  const float sf = float(sc);
  const index_t lo = off[k], hi = off[k + 1];
  const index_t stride = index_t(gridDim.y) * blockDim.x;
  for (index_t i = lo + index_t(blockIdx.y) * blockDim.x + threadIdx.x; i < hi; i += stride) g[i] *= sf;
}

// --------------------------------------------------------------------------- L1/L2
__global__ void __launch_bounds__(256) l1l2_kernel(index_t n, const float* w, float l1, float l2, float* dw,
                                                   double* part1, double* part2) {
  Grid gr;
  const float two_l2 = 2.f * l2;
  double s1 = 0.0, s2 = 0.0;
  for (index_t i = gr.t; i < n; i += gr.stride) {
    const float wi = w[i];
    s1 += fabs(double(wi));
    s2 += double(wi) * double(wi);
    if (dw) dw[i] += l1 * float((wi > 0.f) - (wi < 0.f)) + two_l2 * wi;
  }
  s1 = block_sum(s1);
  s2 = block_sum(s2);
  if (threadIdx.x == 0) { part1[blockIdx.x] = s1; part2[blockIdx.x] = s2; }
}

// --------------------------------------------------------------------------- host helpers
float adam_alpha(float lr, float b1, float b2, index_t step) {   // optim.cpp's, in double
  const double t = double(step);
  return float(lr * std::sqrt(1.0 - std::pow(double(b2), t)) / (1.0 - std::pow(double(b1), t)));
}

// Blocks for an update over n elements: one float4 (or scalar) per thread on small buffers,
// capped so each thread loops a few times on huge ones.
unsigned update_grid(index_t n, bool vec) {
  return elem::stream_grid(vec ? n / 4 + n % 4 : n, 256);
}

}  // namespace

void sgd_update(index_t n, float* p, const float* g, float* vel, float lr, float momentum, bool nesterov,
                void* stream) {
  if (n <= 0) return;
  cudaStream_t s = as_stream(stream);
  if (momentum == 0.f || !vel) {
    const bool vec = aligned16(p, g);
    sgd_kernel<false, false><<<update_grid(n, vec), 256, 0, s>>>(n, vec, p, g, nullptr, lr, momentum);
  } else {
    const bool vec = aligned16(p, g, vel);
    if (nesterov) sgd_kernel<true, true><<<update_grid(n, vec), 256, 0, s>>>(n, vec, p, g, vel, lr, momentum);
    else sgd_kernel<true, false><<<update_grid(n, vec), 256, 0, s>>>(n, vec, p, g, vel, lr, momentum);
  }
  KILNET_CHECK_LAUNCH("sgd_kernel");
}

void adam_update(index_t n, float* p, const float* g, float* m, float* v, float lr, float b1, float b2,
                 float eps, index_t step, void* stream) {
  if (n <= 0) return;
  const bool vec = aligned16(p, g, m, v);
  adam_kernel<false><<<update_grid(n, vec), 256, 0, as_stream(stream)>>>(
      n, vec, p, g, m, v, adam_alpha(lr, b1, b2, step), 1.f - b1, 1.f - b2, eps, 0.f);
  KILNET_CHECK_LAUNCH("adam_kernel");
}

void adamw_update(index_t n, float* p, const float* g, float* m, float* v, float lr, float b1, float b2,
                  float eps, float weight_decay, index_t step, void* stream) {
  if (n <= 0) return;
  const bool vec = aligned16(p, g, m, v);
  adam_kernel<true><<<update_grid(n, vec), 256, 0, as_stream(stream)>>>(
      n, vec, p, g, m, v, adam_alpha(lr, b1, b2, step), 1.f - b1, 1.f - b2, eps, weight_decay * lr);
  KILNET_CHECK_LAUNCH("adam_kernel(adamw)");
}

void rmsprop_update(index_t n, float* p, const float* g, float* v, float* avg, float* mom, float lr, float rho,
                    float momentum, float eps, float weight_decay, void* stream) {
  if (n <= 0) return;
  cudaStream_t s = as_stream(stream);
  const float wdl = weight_decay * lr;
  const bool vec = aligned16(p, g, v, avg, mom);   // null pointers count as aligned
  const unsigned grid = update_grid(n, vec);
  if (avg && mom) rmsprop_kernel<true, true><<<grid, 256, 0, s>>>(n, vec, p, g, v, avg, mom, lr, rho, momentum, eps, wdl);
  else if (avg) rmsprop_kernel<true, false><<<grid, 256, 0, s>>>(n, vec, p, g, v, avg, mom, lr, rho, momentum, eps, wdl);
  else if (mom) rmsprop_kernel<false, true><<<grid, 256, 0, s>>>(n, vec, p, g, v, avg, mom, lr, rho, momentum, eps, wdl);
  else rmsprop_kernel<false, false><<<grid, 256, 0, s>>>(n, vec, p, g, v, avg, mom, lr, rho, momentum, eps, wdl);
  KILNET_CHECK_LAUNCH("rmsprop_kernel");
}

void adagrad_update(index_t n, float* p, const float* g, float* acc, float lr, float eps, float weight_decay,
                    void* stream) {
  if (n <= 0) return;
  const bool vec = aligned16(p, g, acc);
  adagrad_kernel<<<update_grid(n, vec), 256, 0, as_stream(stream)>>>(n, vec, p, g, acc, lr, eps, weight_decay * lr);
  KILNET_CHECK_LAUNCH("adagrad_kernel");
}

void clip_by_value(index_t n, float* g, float clipvalue, void* stream) {
  if (n <= 0) return;
  const bool vec = aligned16(g);
  clip_value_kernel<<<update_grid(n, vec), 256, 0, as_stream(stream)>>>(n, vec, g, clipvalue);
  KILNET_CHECK_LAUNCH("clip_value_kernel");
}

void clip_by_norm(index_t nseg, const index_t* offsets, float* g, float clipnorm, void* stream) {
  if (nseg <= 0) return;
  cudaStream_t s = as_stream(stream);
  // offsets is host memory (small metadata): parts per segment from the longest segment.
  index_t longest = 0;
  for (index_t k = 0; k < nseg; ++k) longest = std::max(longest, offsets[k + 1] - offsets[k]);
  if (longest == 0) return;
  // Parts per segment: ~16 elements per thread on the longest one, and a few thousand blocks
  // in all (one huge segment, global_clipnorm, gets up to 8192 blocks).
  const index_t parts = std::max<index_t>(
      1, std::min<index_t>(ceil_div(longest, 256 * 16), std::max<index_t>(16, 8192 / nseg)));
  const size_t off_bytes = size_t(nseg + 1) * sizeof(index_t);
  const size_t part_at = (off_bytes + 255) / 256 * 256;
  const size_t scale_at = part_at + (size_t(nseg * parts) * sizeof(double) + 255) / 256 * 256;
  elem::Scratch sc(scale_at + size_t(nseg) * sizeof(double), s);
  index_t* doff = sc.as<index_t>();
  double* partial = sc.as<double>(part_at);
  double* scale = sc.as<double>(scale_at);
  // Pageable source: the runtime stages it before returning, so the host array may go away.
  check(cudaMemcpyAsync(doff, offsets, off_bytes, cudaMemcpyHostToDevice, s), "cudaMemcpyAsync (clip offsets)");
  const dim3 grid{unsigned(nseg), unsigned(parts), 1u};   // x: segment, y: part (<= 8192)
  seg_sumsq_kernel<<<grid, 256, 0, s>>>(doff, g, partial);
  KILNET_CHECK_LAUNCH("seg_sumsq_kernel");
  seg_norm_kernel<<<unsigned(nseg), 256, 0, s>>>(int(parts), partial, clipnorm, scale);
  KILNET_CHECK_LAUNCH("seg_norm_kernel");
  seg_scale_kernel<<<grid, 256, 0, s>>>(doff, g, scale);
  KILNET_CHECK_LAUNCH("seg_scale_kernel");
}

double l1l2_penalty(index_t n, const float* w, float l1, float l2, float* dw, float* out, void* stream) {
  cudaStream_t s = as_stream(stream);
  const int G = int(std::max<index_t>(1, std::min<index_t>(ceil_div(n, 256), elem::kReduceBlocks)));
  elem::Scratch sc(size_t(2 * G + 1) * sizeof(double), s);
  double* p1 = sc.as<double>();
  double* p2 = p1 + G;
  double* res = p2 + G;
  l1l2_kernel<<<G, 256, 0, s>>>(n, w, l1, l2, dw, p1, p2);
  KILNET_CHECK_LAUNCH("l1l2_kernel");
  elem::launch_finish(G, p1, p2, double(l1), double(l2), 1.0, res, out, s);
  if (out) return 0.0;
  return elem::read_back(res, s);
}

}  // namespace kilnet::cuda
