// attention.cu — fused scaled-dot-product attention on the GPU (see kilnet/attention.h for the
// semantics; the same as the CPU kernels). FlashAttention-style: key/value (or query/dout)
// tiles are staged in shared memory, each thread owns one query row (forward, dq) or one key row
// (dk, dv) and keeps its running max, sum and accumulators in registers, so the Tq x Tk scores
// are never stored and no atomics are used (results do not depend on timing).
//   forward:  block = 64 query rows of one (batch, head); online softmax over key tiles.
//   backward: D = rowsum(dout * out); u = sum of dout over rows with no allowed key / Tk (those
//             rows' dv share); dk, dv: block = 64 key rows of one (batch, key head), looping
//             over the query heads of its group and the query tiles; dq: block = 64 query rows,
//             looping over key tiles. Probabilities are recomputed from the saved lse.
// Head dims up to 256 (registers sized by a template bucket: 32, 64, 128, 256).
#include <cuda_runtime.h>
#include <cmath>
#include <stdexcept>
#include <string>
#include "kilnet/attention.h"
#include "launch.cuh"
#include "stream_buffer.cuh"

namespace kilnet::cuda {
namespace {

constexpr int ROWS = 64;   // threads per block: one query (or key) row each

__host__ __device__ inline int tile_for(index_t H) { return H <= 64 ? 64 : (H <= 128 ? 32 : 16); }

// bias(b, n, i, j) + whether the pair is allowed (mask and causality)
__device__ inline bool pair(const AttnShape& s, const AttnMask& m, index_t b, index_t n, index_t i, index_t j,
                            float& bias) {
  if (s.causal && j > i) return false;
  if (m.mask && !m.mask[b * m.mask_stride[0] + n * m.mask_stride[1] + i * m.mask_stride[2] + j * m.mask_stride[3]])
    return false;
  bias = m.bias ? m.bias[b * m.bias_stride[0] + n * m.bias_stride[1] + i * m.bias_stride[2] + j * m.bias_stride[3]]
                : 0.f;
  return true;
}

// Stage rows [r0, r0 + nr) of a (T, heads, H) slice (row stride ld) into smem as nr x H.
__device__ inline void stage(const float* src, index_t ld, index_t r0, int nr, index_t H, float mul, float* dst) {
  for (index_t e = threadIdx.x; e < index_t(nr) * H; e += blockDim.x) {
    const index_t r = e / H, h = e % H;
    dst[e] = src[(r0 + r) * ld + h] * mul;
  }
}

template <int HM>
__global__ void fwd_kernel(AttnShape s, AttnMask m, const float* __restrict__ q, const float* __restrict__ k,
                           const float* __restrict__ v, float* __restrict__ out, float* __restrict__ lse) {
  extern __shared__ float sm[];
  const index_t H = s.H, G = s.N / s.Nk, b = blockIdx.z, n = blockIdx.y;
  const index_t i = index_t(blockIdx.x) * ROWS + threadIdx.x, ldq = s.N * H, ldk = s.Nk * H;
  const int bk = tile_for(H);
  float* Ks = sm;
  float* Vs = sm + bk * H;
  const float* kb = k + (b * s.Tk * s.Nk + n / G) * H;
  const float* vb = v + (b * s.Tk * s.Nk + n / G) * H;
  const bool active = i < s.Tq;
  const float* qrow = q + (b * s.Tq * s.N + n) * H + (active ? i : 0) * ldq;
  float qr[HM], o[HM];
#pragma unroll
  for (int h = 0; h < HM; ++h) { qr[h] = (active && h < H) ? qrow[h] * s.scale : 0.f; o[h] = 0.f; }
  float mx = -INFINITY, l = 0.f;
  const index_t last = min(s.Tq, index_t(blockIdx.x) * ROWS + ROWS) - 1;
  const index_t kend = s.causal ? min(s.Tk, last + 1) : s.Tk;
  for (index_t j0 = 0; j0 < kend; j0 += bk) {
    const int nk = int(min(index_t(bk), kend - j0));
    __syncthreads();
    stage(kb, ldk, j0, nk, H, 1.f, Ks);
    stage(vb, ldk, j0, nk, H, 1.f, Vs);
    __syncthreads();
    if (!active) continue;
    for (int r = 0; r < nk; ++r) {
      float bias;
      if (!pair(s, m, b, n, i, j0 + r, bias)) continue;
      float sc = 0.f;
#pragma unroll
      for (int h = 0; h < HM; ++h) if (h < H) sc += qr[h] * Ks[r * H + h];
      sc += bias;
      if (sc == -INFINITY) continue;
      if (sc > mx) {   // the running max moves: rescale what was summed so far
        const float c = expf(mx - sc);
        l *= c;
#pragma unroll
        for (int h = 0; h < HM; ++h) o[h] *= c;
        mx = sc;
      }
      const float p = expf(sc - mx);
      l += p;
#pragma unroll
      for (int h = 0; h < HM; ++h) if (h < H) o[h] += p * Vs[r * H + h];
    }
  }
  if (!active) return;
  float* orow = out + (b * s.Tq * s.N + n) * H + i * ldq;
  if (l > 0.f) {
    const float inv = 1.f / l;
#pragma unroll
    for (int h = 0; h < HM; ++h) if (h < H) orow[h] = o[h] * inv;
    lse[(b * s.N + n) * s.Tq + i] = mx + logf(l);
  } else {   // no allowed key: the mean of v over all keys (Keras)
    for (index_t h = 0; h < H; ++h) {
      double acc = 0.0;
      for (index_t j = 0; j < s.Tk; ++j) acc += vb[j * ldk + h];
      orow[h] = float(acc / double(s.Tk));
    }
    lse[(b * s.N + n) * s.Tq + i] = INFINITY;
  }
}

// D[b, n, i] = sum_h dout * out
__global__ void rowdot_kernel(AttnShape s, const float* __restrict__ out, const float* __restrict__ dout,
                              float* __restrict__ D) {
  const index_t rows = s.B * s.N * s.Tq;
  for (index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x; t < rows; t += index_t(gridDim.x) * blockDim.x) {
    const index_t b = t / (s.N * s.Tq), n = (t / s.Tq) % s.N, i = t % s.Tq;
    const index_t off = ((b * s.Tq + i) * s.N + n) * s.H;
    float d = 0.f;
    for (index_t h = 0; h < s.H; ++h) d += dout[off + h] * out[off + h];
    D[t] = d;
  }
}

// u[b, kh, h] = sum over the group's rows with lse = +inf of dout / Tk (their dv share)
__global__ void uniform_kernel(AttnShape s, const float* __restrict__ lse, const float* __restrict__ dout,
                               float* __restrict__ u) {
  const index_t b = blockIdx.y, kh = blockIdx.x, G = s.N / s.Nk;
  for (index_t h = threadIdx.x; h < s.H; h += blockDim.x) {
    double acc = 0.0;
    for (index_t n = kh * G; n < (kh + 1) * G; ++n)
      for (index_t i = 0; i < s.Tq; ++i)
        if (isinf(lse[(b * s.N + n) * s.Tq + i]))
          acc += dout[((b * s.Tq + i) * s.N + n) * s.H + h];
    u[(b * s.Nk + kh) * s.H + h] = float(acc / double(s.Tk));
  }
}

template <int HM>
__global__ void dkdv_kernel(AttnShape s, AttnMask m, const float* __restrict__ q, const float* __restrict__ k,
                            const float* __restrict__ v, const float* __restrict__ lse,
                            const float* __restrict__ D, const float* __restrict__ u,
                            const float* __restrict__ dout, float* __restrict__ dk, float* __restrict__ dv) {
  extern __shared__ float sm[];
  const index_t H = s.H, G = s.N / s.Nk, b = blockIdx.z, kh = blockIdx.y;
  const index_t j = index_t(blockIdx.x) * ROWS + threadIdx.x, ldq = s.N * H, ldk = s.Nk * H;
  const int bq = tile_for(H);
  float* Qs = sm;
  float* Os = sm + bq * H;
  float* Ls = Os + bq * H;
  float* Ds = Ls + bq;
  const bool active = j < s.Tk;
  const index_t koff = (b * s.Tk * s.Nk + kh) * H + (active ? j : 0) * ldk;
  float kr[HM], vr[HM], gk[HM], gv[HM];
#pragma unroll
  for (int h = 0; h < HM; ++h) {
    kr[h] = (active && h < H) ? k[koff + h] : 0.f;
    vr[h] = (active && h < H) ? v[koff + h] : 0.f;
    gk[h] = gv[h] = 0.f;
  }
  // under causality queries before the block's first key see none of its keys
  const index_t i_begin = s.causal ? index_t(blockIdx.x) * ROWS : 0;
  for (index_t n = kh * G; n < (kh + 1) * G; ++n) {
    const float* qb = q + (b * s.Tq * s.N + n) * H;
    const float* gb = dout + (b * s.Tq * s.N + n) * H;
    for (index_t i0 = i_begin; i0 < s.Tq; i0 += bq) {
      const int nq = int(min(index_t(bq), s.Tq - i0));
      __syncthreads();
      stage(qb, ldq, i0, nq, H, s.scale, Qs);
      stage(gb, ldq, i0, nq, H, 1.f, Os);
      for (int r = threadIdx.x; r < nq; r += blockDim.x) {
        Ls[r] = lse[(b * s.N + n) * s.Tq + i0 + r];
        Ds[r] = D[(b * s.N + n) * s.Tq + i0 + r];
      }
      __syncthreads();
      if (!active) continue;
      for (int r = 0; r < nq; ++r) {
        float bias;
        if (isinf(Ls[r]) || !pair(s, m, b, n, i0 + r, j, bias)) continue;
        float sc = 0.f, dp = 0.f;
#pragma unroll
        for (int h = 0; h < HM; ++h)
          if (h < H) { sc += Qs[r * H + h] * kr[h]; dp += Os[r * H + h] * vr[h]; }
        const float p = expf(sc + bias - Ls[r]);
        const float ds = p * (dp - Ds[r]);
#pragma unroll
        for (int h = 0; h < HM; ++h)
          if (h < H) { gv[h] += p * Os[r * H + h]; gk[h] += ds * Qs[r * H + h]; }   // Qs holds q*scale
      }
    }
  }
  if (!active) return;
  const float* ub = u + (b * s.Nk + kh) * H;
#pragma unroll
  for (int h = 0; h < HM; ++h)
    if (h < H) { dk[koff + h] = gk[h]; dv[koff + h] = gv[h] + ub[h]; }
}

template <int HM>
__global__ void dq_kernel(AttnShape s, AttnMask m, const float* __restrict__ q, const float* __restrict__ k,
                          const float* __restrict__ v, const float* __restrict__ lse, const float* __restrict__ D,
                          const float* __restrict__ dout, float* __restrict__ dq) {
  extern __shared__ float sm[];
  const index_t H = s.H, G = s.N / s.Nk, b = blockIdx.z, n = blockIdx.y;
  const index_t i = index_t(blockIdx.x) * ROWS + threadIdx.x, ldq = s.N * H, ldk = s.Nk * H;
  const int bk = tile_for(H);
  float* Ks = sm;
  float* Vs = sm + bk * H;
  const float* kb = k + (b * s.Tk * s.Nk + n / G) * H;
  const float* vb = v + (b * s.Tk * s.Nk + n / G) * H;
  const bool active = i < s.Tq;
  const index_t qoff = (b * s.Tq * s.N + n) * H + (active ? i : 0) * ldq;
  const float L = active ? lse[(b * s.N + n) * s.Tq + i] : INFINITY;
  const float Di = active ? D[(b * s.N + n) * s.Tq + i] : 0.f;
  float qr[HM], gr[HM], acc[HM];
#pragma unroll
  for (int h = 0; h < HM; ++h) {
    qr[h] = (active && h < H) ? q[qoff + h] * s.scale : 0.f;
    gr[h] = (active && h < H) ? dout[qoff + h] : 0.f;
    acc[h] = 0.f;
  }
  const index_t last = min(s.Tq, index_t(blockIdx.x) * ROWS + ROWS) - 1;
  const index_t kend = s.causal ? min(s.Tk, last + 1) : s.Tk;
  for (index_t j0 = 0; j0 < kend; j0 += bk) {
    const int nk = int(min(index_t(bk), kend - j0));
    __syncthreads();
    stage(kb, ldk, j0, nk, H, 1.f, Ks);
    stage(vb, ldk, j0, nk, H, 1.f, Vs);
    __syncthreads();
    if (!active || isinf(L)) continue;
    for (int r = 0; r < nk; ++r) {
      float bias;
      if (!pair(s, m, b, n, i, j0 + r, bias)) continue;
      float sc = 0.f, dp = 0.f;
#pragma unroll
      for (int h = 0; h < HM; ++h)
        if (h < H) { sc += qr[h] * Ks[r * H + h]; dp += gr[h] * Vs[r * H + h]; }
      const float ds = expf(sc + bias - L) * (dp - Di);
#pragma unroll
      for (int h = 0; h < HM; ++h) if (h < H) acc[h] += ds * Ks[r * H + h];
    }
  }
  if (!active) return;
#pragma unroll
  for (int h = 0; h < HM; ++h) if (h < H) dq[qoff + h] = acc[h] * s.scale;
}

template <template <int> class Launch, class... Args>
void by_head_dim(index_t H, Args&&... args) {
  if (H <= 32) Launch<32>::run(args...);
  else if (H <= 64) Launch<64>::run(args...);
  else if (H <= 128) Launch<128>::run(args...);
  else if (H <= 256) Launch<256>::run(args...);
  else throw std::invalid_argument("kilnet CUDA attention: head dim must be <= 256, got " + std::to_string(H));
}

template <int HM>
struct Fwd {
  static void run(const AttnShape& s, const AttnMask& m, const float* q, const float* k, const float* v, float* out,
                  float* lse, cudaStream_t st) {
    const dim3 grid(unsigned(ceil_div(s.Tq, ROWS)), unsigned(s.N), unsigned(s.B));
    const size_t smem = size_t(2 * tile_for(s.H) * s.H) * sizeof(float);
    fwd_kernel<HM><<<grid, ROWS, smem, st>>>(s, m, q, k, v, out, lse);
    KILNET_CHECK_LAUNCH("attention forward");
  }
};

template <int HM>
struct Bwd {
  static void run(const AttnShape& s, const AttnMask& m, const float* q, const float* k, const float* v,
                  const float* lse, const float* D, const float* u, const float* dout, float* dq, float* dk,
                  float* dv, cudaStream_t st) {
    const int t = tile_for(s.H);
    const dim3 gk(unsigned(ceil_div(s.Tk, ROWS)), unsigned(s.Nk), unsigned(s.B));
    dkdv_kernel<HM><<<gk, ROWS, size_t(2 * t * s.H + 2 * t) * sizeof(float), st>>>(s, m, q, k, v, lse, D, u, dout,
                                                                                  dk, dv);
    KILNET_CHECK_LAUNCH("attention backward (dk, dv)");
    const dim3 gq(unsigned(ceil_div(s.Tq, ROWS)), unsigned(s.N), unsigned(s.B));
    dq_kernel<HM><<<gq, ROWS, size_t(2 * t * s.H) * sizeof(float), st>>>(s, m, q, k, v, lse, D, dout, dq);
    KILNET_CHECK_LAUNCH("attention backward (dq)");
  }
};

}  // namespace

void attention_forward(const AttnShape& s, const float* q, const float* k, const float* v, const AttnMask& m,
                       float* out, float* lse, void* stream) {
  if (s.B * s.N * s.Tq == 0) return;
  by_head_dim<Fwd>(s.H, s, m, q, k, v, out, lse, as_stream(stream));
}

void attention_backward(const AttnShape& s, const float* q, const float* k, const float* v, const AttnMask& m,
                        const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv,
                        void* stream) {
  if (s.B * s.N * s.Tq == 0) return;
  const cudaStream_t st = as_stream(stream);
  StreamBuffer<float> D(size_t(s.B * s.N * s.Tq), st, "cudaMallocAsync (attention row dots)");
  StreamBuffer<float> u(size_t(s.B * s.Nk * s.H), st, "cudaMallocAsync (attention masked-row share)");
  rowdot_kernel<<<grid_for(s.B * s.N * s.Tq), 256, 0, st>>>(s, out, dout, D.get());
  KILNET_CHECK_LAUNCH("attention backward (row dots)");
  uniform_kernel<<<dim3(unsigned(s.Nk), unsigned(s.B)), 128, 0, st>>>(s, lse, dout, u.get());
  KILNET_CHECK_LAUNCH("attention backward (masked rows)");
  by_head_dim<Bwd>(s.H, s, m, q, k, v, lse, D.get(), u.get(), dout, dq, dk, dv, st);
}

}  // namespace kilnet::cuda
