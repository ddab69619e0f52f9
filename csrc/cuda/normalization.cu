// normalization.cu — batch normalization over the last (channel) axis on the GPU (see
// kilnet/normalization.h for the formulas).
// Per-channel sums over the M rows, deterministic and in double (as the CPU):
//   pass 1: a (32 x 8) block owns 32 channels; its 8 thread rows walk a fixed, interleaved set
//           of the M rows (row m goes to block row m / 8 % gridDim.y) and keep double sums;
//           the block adds its 8 partials in order and writes one partial per channel;
//   pass 2: one block per channel adds the gridDim.y partials: thread t the partials t,
//           t + 256, ... in order, then a fixed shared-memory tree; thread 0 finishes the
//           channel (mean; var, invstd and the moving averages; or the gradient sums).
// The split depends only on (M, C), never on timing: the same input gives the same bits every
// run, and no atomics are involved. The float arithmetic of the elementwise passes uses
// __fmul_rn/__fadd_rn so that nvcc cannot contract it into FMAs: it rounds like the CPU code.
#include "kilnet/normalization.h"
#include "launch.cuh"
#include "stream_buffer.cuh"

namespace kilnet::cuda {

namespace {

constexpr int kTx = 32, kTy = 8;   // stats block: 32 channels x 8 row groups

// What a stats pass adds per element: K quantities of row m, channel c.
struct SumX {         // forward pass 1: x
  static constexpr int K = 1;
  const float* x;
  __device__ void add(index_t m, index_t c, index_t C, double* acc) const { acc[0] += double(x[m * C + c]); }
};
struct SumSqDev {     // forward pass 2: (x - mean)^2, mean already rounded to float (as the CPU)
  static constexpr int K = 1;
  const float* x; const float* mean;
  __device__ void add(index_t m, index_t c, index_t C, double* acc) const {
    const double d = double(x[m * C + c]) - double(mean[c]);
    acc[0] += __dmul_rn(d, d);
  }
};
struct SumBwd {       // backward: dy and dy * xhat, xhat = (x - mean)*invstd in float
  static constexpr int K = 2;
  const float* x; const float* dy; const float* mean; const float* invstd;
  __device__ void add(index_t m, index_t c, index_t C, double* acc) const {
    const float g = dy[m * C + c];
    const float xhat = __fmul_rn(__fsub_rn(x[m * C + c], mean[c]), invstd[c]);
    acc[0] += double(g);
    acc[1] += __dmul_rn(double(g), double(xhat));
  }
};

// partial[(blockIdx.y * K + k) * C + c] = block blockIdx.y's sum of quantity k over its rows.
template <class Op>
__global__ void colsum_partials_kernel(index_t M, index_t C, Op op, double* __restrict__ partial) {
  constexpr int K = Op::K;
  __shared__ double sh[K][kTy][kTx];
  const index_t c = index_t(blockIdx.x) * kTx + threadIdx.x;
  double acc[K];
  for (int k = 0; k < K; ++k) acc[k] = 0.0;
  if (c < C)
    for (index_t m = index_t(blockIdx.y) * kTy + threadIdx.y; m < M; m += index_t(gridDim.y) * kTy)
      op.add(m, c, C, acc);
  for (int k = 0; k < K; ++k) sh[k][threadIdx.y][threadIdx.x] = acc[k];
  __syncthreads();
  if (threadIdx.y == 0 && c < C)
    for (int k = 0; k < K; ++k) {
      double s = 0.0;
      for (int r = 0; r < kTy; ++r) s += sh[k][r][threadIdx.x];
      partial[(index_t(blockIdx.y) * K + k) * C + c] = s;
    }
}

constexpr int kFin = 256;   // threads of a pass-2 block

// out[k] = the sum of quantity k over the nb partials of channel c, in a fixed order; every
// thread of the block gets it. All threads of the block must call it (barriers inside).
template <int K>
__device__ void channel_totals(const double* __restrict__ partial, int nb, index_t C, index_t c,
                               double (&out)[K]) {
  __shared__ double sh[K][kFin];
  const int t = threadIdx.x;
  for (int k = 0; k < K; ++k) {
    double a = 0.0;
    for (int b = t; b < nb; b += kFin) a += partial[(index_t(b) * K + k) * C + c];
    sh[k][t] = a;
  }
  __syncthreads();
  for (int w = kFin / 2; w > 0; w >>= 1) {
    if (t < w)
      for (int k = 0; k < K; ++k) sh[k][t] += sh[k][t + w];
    __syncthreads();
  }
  for (int k = 0; k < K; ++k) out[k] = sh[k][0];
  __syncthreads();   // sh is reused by the block's next channel
}

// The pass-2 kernels loop over channels c = blockIdx.x, blockIdx.x + gridDim.x, ... (the
// whole block takes the same c, so the barriers are uniform).
__global__ void bn_mean_kernel(index_t M, index_t C, const double* __restrict__ partial, int nb,
                               float* __restrict__ mean) {
  for (index_t c = blockIdx.x; c < C; c += gridDim.x) {
    double tot[1];
    channel_totals<1>(partial, nb, C, c, tot);
    if (threadIdx.x == 0) mean[c] = float(tot[0] / double(M));
  }
}

// Training: var from the partials of (x - mean)^2, invstd, and the moving averages.
__global__ void bn_var_kernel(index_t M, index_t C, const double* __restrict__ partial, int nb,
                              const float* __restrict__ mean, float momentum, float eps,
                              float* __restrict__ moving_mean, float* __restrict__ moving_var,
                              float* __restrict__ invstd) {
  for (index_t c = blockIdx.x; c < C; c += gridDim.x) {
    double tot[1];
    channel_totals<1>(partial, nb, C, c, tot);
    if (threadIdx.x == 0) {
      const float var = float(tot[0] / double(M));
      invstd[c] = float(1.0 / sqrt(double(var) + double(eps)));
      const float keep = __fsub_rn(1.f, momentum);
      moving_mean[c] = __fadd_rn(__fmul_rn(moving_mean[c], momentum), __fmul_rn(mean[c], keep));
      moving_var[c] = __fadd_rn(__fmul_rn(moving_var[c], momentum), __fmul_rn(var, keep));
    }
  }
}

// Inference: the moving statistics are the statistics.
__global__ void bn_inference_stats_kernel(index_t C, const float* __restrict__ moving_mean,
                                          const float* __restrict__ moving_var, float eps,
                                          float* __restrict__ mean, float* __restrict__ invstd) {
  for (index_t c = index_t(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += index_t(gridDim.x) * blockDim.x) {
    mean[c] = moving_mean[c];
    invstd[c] = float(1.0 / sqrt(double(moving_var[c]) + double(eps)));
  }
}

// y = (x - mean) * (gamma * invstd) + beta, rounded as the CPU does. Idx: int when M*C fits
// (64-bit division by C is several times slower).
template <class Idx>
__global__ void bn_apply_kernel(Idx n, Idx C, const float* __restrict__ x,
                                const float* __restrict__ gamma, const float* __restrict__ beta,
                                const float* __restrict__ mean, const float* __restrict__ invstd,
                                float* __restrict__ y) {
  for (Idx i = Idx(blockIdx.x) * Idx(blockDim.x) + Idx(threadIdx.x); i < n; i += Idx(gridDim.x) * Idx(blockDim.x)) {
    const Idx c = i % C;
    const float sc = gamma ? __fmul_rn(gamma[c], invstd[c]) : invstd[c];
    const float sh = beta ? beta[c] : 0.f;
    y[i] = __fadd_rn(__fmul_rn(__fsub_rn(x[i], mean[c]), sc), sh);
  }
}

// Backward: the two column sums into sums[0:C] (dy) and sums[C:2C] (dy*xhat), and the
// parameter gradients accumulated.
__global__ void bn_bwd_sums_kernel(index_t C, const double* __restrict__ partial, int nb,
                                   double* __restrict__ sums, float* __restrict__ dgamma,
                                   float* __restrict__ dbeta) {
  for (index_t c = blockIdx.x; c < C; c += gridDim.x) {
    double tot[2];
    channel_totals<2>(partial, nb, C, c, tot);
    if (threadIdx.x == 0) {
      sums[c] = tot[0];
      sums[C + c] = tot[1];
      if (dbeta) dbeta[c] = __fadd_rn(dbeta[c], float(tot[0]));
      if (dgamma) dgamma[c] = __fadd_rn(dgamma[c], float(tot[1]));
    }
  }
}

// dx = k*(dy - a - xhat*b): k = gamma*invstd; a, b the row means of dy and dy*xhat (sums
// nullptr: the statistics were constants, a = b = 0).
template <class Idx>
__global__ void bn_dx_kernel(Idx n, Idx C, index_t M, const float* __restrict__ x,
                             const float* __restrict__ dy, const float* __restrict__ gamma,
                             const float* __restrict__ mean, const float* __restrict__ invstd,
                             const double* __restrict__ sums, float* __restrict__ dx) {
  for (Idx i = Idx(blockIdx.x) * Idx(blockDim.x) + Idx(threadIdx.x); i < n; i += Idx(gridDim.x) * Idx(blockDim.x)) {
    const Idx c = i % C;
    const float k = gamma ? __fmul_rn(gamma[c], invstd[c]) : invstd[c];
    const float a = sums ? float(sums[c] / double(M)) : 0.f;
    const float b = sums ? float(sums[C + c] / double(M)) : 0.f;
    const float xb = __fmul_rn(__fmul_rn(__fsub_rn(x[i], mean[c]), invstd[c]), b);
    dx[i] = __fmul_rn(k, __fsub_rn(__fsub_rn(dy[i], a), xb));
  }
}

// 32-bit element indices when M*C (plus a grid stride) stays below 2^31.
bool small_index(index_t M, index_t C) { return M * C < (index_t(1) << 30); }

// The stats grid: ceil(C/32) x nb blocks, nb chosen from (M, C) only (determinism), about 2048
// blocks in all and at least ~16 rows per thread row so the partials stay few.
dim3 stats_grid(index_t M, index_t C, int* nb) {
  const index_t gx = ceil_div(C, kTx);
  index_t gy = std::min<index_t>(ceil_div(M, index_t(kTy) * 16), std::max<index_t>(1, 2048 / gx));
  gy = std::max<index_t>(1, std::min<index_t>(gy, 65535));
  *nb = int(gy);
  return dim3(unsigned(gx), unsigned(gy));
}

template <class Op>
void launch_partials(index_t M, index_t C, const Op& op, double* partial, dim3 grid, cudaStream_t st) {
  colsum_partials_kernel<Op><<<grid, dim3(kTx, kTy), 0, st>>>(M, C, op, partial);
  KILNET_CHECK_LAUNCH("colsum_partials_kernel");
}

constexpr int kBlock = 256;

unsigned fin_grid(index_t C) { return unsigned(std::min<index_t>(C, 65535)); }

}  // namespace

void batchnorm_forward(index_t M, index_t C, const float* x, const float* gamma, const float* beta,
                       float* moving_mean, float* moving_var, float momentum, float eps,
                       bool training, float* mean, float* invstd, float* y, void* stream) {
  if (M <= 0 || C <= 0) return;
  const cudaStream_t st = as_stream(stream);
  if (training) {
    int nb = 0;
    const dim3 grid = stats_grid(M, C, &nb);
    StreamBuffer<double> buf(size_t(nb) * size_t(C), st, "cudaMallocAsync (batchnorm partial sums)");
    double* partial = buf.get();
    launch_partials(M, C, SumX{x}, partial, grid, st);
    bn_mean_kernel<<<fin_grid(C), kFin, 0, st>>>(M, C, partial, nb, mean);
    KILNET_CHECK_LAUNCH("bn_mean_kernel");
    launch_partials(M, C, SumSqDev{x, mean}, partial, grid, st);
    bn_var_kernel<<<fin_grid(C), kFin, 0, st>>>(M, C, partial, nb, mean, momentum, eps,
                                                         moving_mean, moving_var, invstd);
    KILNET_CHECK_LAUNCH("bn_var_kernel");
  } else {
    bn_inference_stats_kernel<<<grid_for(C, kBlock), kBlock, 0, st>>>(C, moving_mean, moving_var, eps, mean, invstd);
    KILNET_CHECK_LAUNCH("bn_inference_stats_kernel");
  }
  if (small_index(M, C))
    bn_apply_kernel<int><<<grid_for(M * C, kBlock), kBlock, 0, st>>>(int(M * C), int(C), x, gamma, beta, mean, invstd, y);
  else
    bn_apply_kernel<index_t><<<grid_for(M * C, kBlock), kBlock, 0, st>>>(M * C, C, x, gamma, beta, mean, invstd, y);
  KILNET_CHECK_LAUNCH("bn_apply_kernel");
}

void batchnorm_backward(index_t M, index_t C, const float* x, const float* dy, const float* gamma,
                        const float* mean, const float* invstd, bool batch_stats, float* dx,
                        float* dgamma, float* dbeta, void* stream) {
  if (M <= 0 || C <= 0) return;
  const cudaStream_t st = as_stream(stream);
  const bool need_sums = dgamma || dbeta || (dx && batch_stats);
  int nb = 0;
  const dim3 grid = stats_grid(M, C, &nb);
  // [partials (nb*2*C) | sums (2*C)]
  StreamBuffer<double> scratch(need_sums ? (size_t(nb) + 1) * 2 * size_t(C) : 0, st,
                               "cudaMallocAsync (batchnorm backward sums)");
  double* buf = scratch.get();
  double* sums = nullptr;
  if (need_sums) {
    sums = buf + size_t(nb) * 2 * size_t(C);
    launch_partials(M, C, SumBwd{x, dy, mean, invstd}, buf, grid, st);
    bn_bwd_sums_kernel<<<fin_grid(C), kFin, 0, st>>>(C, buf, nb, sums, dgamma, dbeta);
    KILNET_CHECK_LAUNCH("bn_bwd_sums_kernel");
  }
  if (dx) {
    const double* s_used = batch_stats ? sums : nullptr;
    if (small_index(M, C))
      bn_dx_kernel<int><<<grid_for(M * C, kBlock), kBlock, 0, st>>>(int(M * C), int(C), M, x, dy, gamma, mean,
                                                                    invstd, s_used, dx);
    else
      bn_dx_kernel<index_t><<<grid_for(M * C, kBlock), kBlock, 0, st>>>(M * C, C, M, x, dy, gamma, mean, invstd,
                                                                        s_used, dx);
    KILNET_CHECK_LAUNCH("bn_dx_kernel");
  }
}

}  // namespace kilnet::cuda
