// layernorm.cu — layer normalization over the last axis on the GPU (see kilnet/layernorm.h).
// Forward and dx: one warp per row (8 rows per block); each lane walks the row's columns
//   lane, lane + 32, ... and the warp reduces with shuffles in a fixed order. The mean is the
//   float sum's mean corrected by the centered pass, as on the CPU.
// dgamma/dbeta: rows are cut into blocks of a size fixed by (M, C) alone; a (32 x 8) thread
//   block sums 32 columns of one row block (8 thread rows, combined in order) into a partial,
//   and one thread per column adds the partials in block order in double. No atomics: the same
//   bits every run.
#include <cmath>
#include "kilnet/layernorm.h"
#include "launch.cuh"
#include "stream_buffer.cuh"

namespace kilnet::cuda {

namespace {

constexpr int kRowsPerBlock = 8;   // warps (rows) per block of the row kernels

__device__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__global__ void ln_forward_kernel(index_t M, index_t C, const float* __restrict__ x, const float* __restrict__ gamma,
                                  const float* __restrict__ beta, float eps, bool rms, float* __restrict__ mean,
                                  float* __restrict__ invstd, float* __restrict__ y) {
  const int lane = threadIdx.x;
  for (index_t m = index_t(blockIdx.x) * kRowsPerBlock + threadIdx.y; m < M; m += index_t(gridDim.x) * kRowsPerBlock) {
    const float* xr = x + m * C;
    float s = 0.f;
    for (index_t j = lane; j < C; j += 32) s = __fadd_rn(s, xr[j]);
    const float mu0 = __fdiv_rn(warp_sum(s), float(C));
    float sd = 0.f, sq = 0.f;
    for (index_t j = lane; j < C; j += 32) {
      const float d = __fsub_rn(xr[j], mu0);
      sd = __fadd_rn(sd, d);
      sq = __fmaf_rn(d, d, sq);
    }
    const double delta = double(warp_sum(sd)) / double(C);
    const double q = double(warp_sum(sq)) / double(C) - delta * delta;
    const float is = float(1.0 / sqrt((q > 0.0 ? q : 0.0) + double(eps)));
    const float mu = float(double(mu0) + delta);
    const float c = rms ? 0.f : mu;
    for (index_t j = lane; j < C; j += 32) {
      const float k = gamma ? __fmul_rn(is, gamma[j]) : is;
      y[m * C + j] = __fmaf_rn(__fsub_rn(xr[j], c), k, (beta && !rms) ? beta[j] : 0.f);
    }
    if (lane == 0) { mean[m] = mu; invstd[m] = is; }
  }
}

__global__ void ln_dx_kernel(index_t M, index_t C, const float* __restrict__ x, const float* __restrict__ dy,
                             const float* __restrict__ gamma, const float* __restrict__ mean,
                             const float* __restrict__ invstd, bool rms, float* __restrict__ dx) {
  const int lane = threadIdx.x;
  for (index_t m = index_t(blockIdx.x) * kRowsPerBlock + threadIdx.y; m < M; m += index_t(gridDim.x) * kRowsPerBlock) {
    const float* xr = x + m * C;
    const float* dr = dy + m * C;
    const float mu = mean[m], is = invstd[m], c = rms ? 0.f : mu;
    float s1 = 0.f, s2 = 0.f;
    for (index_t j = lane; j < C; j += 32) {
      const float g = gamma ? __fmul_rn(dr[j], gamma[j]) : dr[j];
      s1 = __fadd_rn(s1, g);
      s2 = __fmaf_rn(g, __fmul_rn(__fsub_rn(xr[j], c), is), s2);
    }
    const float a = rms ? 0.f : __fdiv_rn(warp_sum(s1), float(C));
    const float b = __fdiv_rn(warp_sum(s2), float(C));
    for (index_t j = lane; j < C; j += 32) {
      const float g = gamma ? __fmul_rn(dr[j], gamma[j]) : dr[j];
      const float xhat = __fmul_rn(__fsub_rn(xr[j], mu), is);
      dx[m * C + j] = __fmul_rn(is, __fsub_rn(__fsub_rn(g, a), __fmul_rn(xhat, b)));
    }
  }
}

constexpr int kTx = 32, kTy = 8;

// partial[(b*2 + 0)*C + c] = sum over row block b of dy*z, [(b*2 + 1)*C + c] of dy.
__global__ void ln_param_partials_kernel(index_t M, index_t C, index_t R, const float* __restrict__ x,
                                         const float* __restrict__ dy, const float* __restrict__ mean,
                                         const float* __restrict__ invstd, bool rms, float* __restrict__ partial) {
  __shared__ float sh[2][kTy][kTx];
  const index_t c = index_t(blockIdx.x) * kTx + threadIdx.x;
  const index_t b = blockIdx.y;
  const index_t m1 = (b + 1) * R < M ? (b + 1) * R : M;
  float sg = 0.f, sb = 0.f;
  if (c < C)
    for (index_t m = b * R + threadIdx.y; m < m1; m += kTy) {
      const float d = dy[m * C + c];
      const float z = __fmul_rn(__fsub_rn(x[m * C + c], rms ? 0.f : mean[m]), invstd[m]);
      sg = __fmaf_rn(d, z, sg);
      sb = __fadd_rn(sb, d);
    }
  sh[0][threadIdx.y][threadIdx.x] = sg;
  sh[1][threadIdx.y][threadIdx.x] = sb;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float tg = 0.f, tb = 0.f;
    for (int r = 0; r < kTy; ++r) { tg = __fadd_rn(tg, sh[0][r][threadIdx.x]); tb = __fadd_rn(tb, sh[1][r][threadIdx.x]); }
    partial[(b * 2) * C + c] = tg;
    partial[(b * 2 + 1) * C + c] = tb;
  }
}

__global__ void ln_param_finish_kernel(index_t C, index_t NB, const float* __restrict__ partial,
                                       float* __restrict__ dgamma, float* __restrict__ dbeta) {
  for (index_t c = index_t(blockIdx.x) * blockDim.x + threadIdx.x; c < C; c += index_t(gridDim.x) * blockDim.x) {
    double g = 0.0, b = 0.0;
    for (index_t k = 0; k < NB; ++k) { g += partial[(k * 2) * C + c]; b += partial[(k * 2 + 1) * C + c]; }
    if (dgamma) dgamma[c] = __fadd_rn(dgamma[c], float(g));
    if (dbeta) dbeta[c] = __fadd_rn(dbeta[c], float(b));
  }
}

unsigned row_grid(index_t M) { return unsigned(std::max<index_t>(1, std::min<index_t>(ceil_div(M, kRowsPerBlock), 65535))); }

}  // namespace

void layernorm_forward(index_t M, index_t C, const float* x, const float* gamma, const float* beta,
                       float eps, bool rms, float* mean, float* invstd, float* y, void* stream) {
  if (M <= 0 || C <= 0) return;
  const cudaStream_t st = as_stream(stream);
  ln_forward_kernel<<<row_grid(M), dim3(32, kRowsPerBlock), 0, st>>>(M, C, x, gamma, beta, eps, rms, mean, invstd, y);
  KILNET_CHECK_LAUNCH("ln_forward_kernel");
}

void layernorm_backward(index_t M, index_t C, const float* x, const float* dy, const float* gamma,
                        const float* mean, const float* invstd, bool rms, float* dx, float* dgamma,
                        float* dbeta, void* stream) {
  if (M <= 0 || C <= 0) return;
  const cudaStream_t st = as_stream(stream);
  if (dx) {
    ln_dx_kernel<<<row_grid(M), dim3(32, kRowsPerBlock), 0, st>>>(M, C, x, dy, gamma, mean, invstd, rms, dx);
    KILNET_CHECK_LAUNCH("ln_dx_kernel");
  }
  if (!dgamma && !dbeta) return;
  // row blocks of R rows: about 1024 blocks over M, at least 64 rows each; (M, C) alone decide
  const index_t R = std::max<index_t>(64, ceil_div(M, 1024));
  const index_t NB = ceil_div(M, R);
  StreamBuffer<float> partial(size_t(NB) * 2 * size_t(C), st, "cudaMallocAsync (layernorm partial sums)");
  const dim3 grid(unsigned(ceil_div(C, kTx)), unsigned(NB));
  ln_param_partials_kernel<<<grid, dim3(kTx, kTy), 0, st>>>(M, C, R, x, dy, mean, invstd, rms, partial.get());
  KILNET_CHECK_LAUNCH("ln_param_partials_kernel");
  ln_param_finish_kernel<<<grid_for(C, 256), 256, 0, st>>>(C, NB, partial.get(), dgamma, dbeta);
  KILNET_CHECK_LAUNCH("ln_param_finish_kernel");
}

}  // namespace kilnet::cuda
