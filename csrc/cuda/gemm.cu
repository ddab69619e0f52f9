// gemm.cu — SGEMM and the bias gradient on the GPU (plain CUDA C++, no cuBLAS).
//
//   C[M,N] = alpha * op(A)[M,K] · op(B)[K,N] + beta * C (+ bias[N]), row-major (see gemm.h).
//
// How the big kernel (sgemm_big, for M and N >= 128) tiles the work — siboehm's "kernel 10
// (warptiling)", the CUTLASS SIMT design:
//
//   block  : 256 threads (8 warps) compute a 128 x 128 tile of C, walking K in steps of 16.
//   shared : each 128x16 slice of op(A) and 16x128 slice of op(B) is stored k-major,
//            As[k][m] and Bs[k][n] (A transposed on the way in), rows padded to 132 floats,
//            twice (double buffer): 2 x 2 x 16 x 132 x 4 B = 33 KB.
//   warps  : 2 (along M) x 4 (along N) warps, each owning a 64 x 32 warp tile.
//   threads: inside a warp tile, lanes form 8 (M) x 4 (N); each lane computes 2 x 2 sub-tiles
//            of 4 x 4 (sub-tiles 32 rows / 16 columns apart) = an 8 x 8 register tile, 64
//            accumulators. Per k, a lane reads 2 float4 of As and 2 float4 of Bs (8 + 8 values)
//            and does 64 FMAs: 4 FMAs per shared-memory float read.
//   loads  : each thread fetches 2 x 4 elements of A and of B per K step (float4 when the
//            leading dimension is a multiple of 4 and the pointer 16-byte aligned, else a
//            scalar instantiation), into registers, while the FMAs of the current K step run on
//            the other shared buffer; the registers go to shared memory after the FMAs, then
//            one __syncthreads per K step.
//   edges  : every global load is bounds-checked and zero-filled, every store is guarded, so
//            any M, N, K >= 1 works.
//
// Small problems (M or N < 128, e.g. the Dense layers of the canonical model: 32x10x5408,
// 5408x10x32, 32x5408x10) use sgemm_small: 32 x 32 tiles, 256 threads, 2 x 2 outputs per thread.
// When there are too few tiles to fill the GPU, either kernel splits K (split-K): split z
// writes its partial sums to a scratch buffer ws[z][M][N] and gemm_reduce adds the splits in
// the fixed order z = 0, 1, ... and applies alpha, beta and bias, so the result is
// deterministic (no atomics).
//
// With tf32() on (kilnet set_tf32(True), off by default) and M, N >= 128, sgemm_tf32 runs the
// same block tiling on the tensor cores (mma.sync m16n8k8 TF32, sm_80+); the inputs are rounded
// to TF32 (10-bit mantissa), so results differ from fp32 by ~1e-3 relative.
#include <cuda_runtime.h>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include "kilnet/device.h"
#include "kilnet/gemm.h"
#include "launch.cuh"

namespace kilnet::cuda {
namespace {

using i64 = long long;

// ---- the big kernel: 128x128x16 block tile, 64x32 warp tiles, 8x8 per thread ----------------
constexpr int BM = 128, BN = 128, BK = 16, NT = 256;
constexpr int WM = 64, WN = 32;        // warp tile
constexpr int WMI = 2, WNI = 2;        // sub-tiles per warp tile along M and N
constexpr int TM = 4, TN = 4;          // a thread's part of one sub-tile
constexpr int WSM = WM / WMI;          // 32: sub-tile rows
constexpr int WSN = WN / WNI;          // 16: sub-tile columns
constexpr int SLD = BM + 4;            // padded shared row (floats); a multiple of 4 for float4
static_assert(BM == BN, "the tile loader serves A and B with one shape");
static_assert((BM / WM) * (BN / WN) == NT / 32, "one warp tile per warp");
static_assert(WSM == 8 * TM && WSN == 4 * TN, "lanes form 8 x 4 inside a sub-tile");
static_assert(BM * BK == 2 * 4 * NT, "each thread loads 2 groups of 4 elements per operand");

__device__ __forceinline__ float round_tf32(float x) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  unsigned r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return __uint_as_float(r);
#else
  return x;
#endif
}

// Loads one 128 (o) x 16 (k) slice of a matrix X[o][k] into registers and stores it k-major
// into shared memory S[k][o]. X[o][k] = P[o*ld + k] when KCONTIG (k is the contiguous index),
// else P[k*ld + o]. For A, o = m (KCONTIG = !trans_a); for B, o = n (KCONTIG = trans_b).
// Each thread moves 2 groups of 4 elements that are contiguous in memory: one float4 if VEC
// and the whole group is in bounds, else scalar loads, zero outside [0,O) x [0,Kend).
template <bool KCONTIG, bool VEC, int LD = SLD>
struct TileLoader {
  float v[2][4];

  __device__ __forceinline__ void load(const float* __restrict__ P, i64 ld, int O, int Kend,
                                       int o0, int k0, int tid) {
#pragma unroll
    for (int g = 0; g < 2; ++g) {
      if (KCONTIG) {
        // 4 threads per row of 16 k: a warp reads 8 rows x 64 contiguous bytes.
        const int o = o0 + tid / 4 + g * 64, k = k0 + (tid % 4) * 4;
        const float* p = P + (i64)o * ld + k;
        if (VEC && o < O && k + 3 < Kend) {
          const float4 t = __ldg(reinterpret_cast<const float4*>(p));
          v[g][0] = t.x; v[g][1] = t.y; v[g][2] = t.z; v[g][3] = t.w;
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i) v[g][i] = (o < O && k + i < Kend) ? __ldg(p + i) : 0.f;
        }
      } else {
        // 32 threads per k row of 128 o: a warp reads 512 contiguous bytes.
        const int k = k0 + tid / 32 + g * 8, o = o0 + (tid % 32) * 4;
        const float* p = P + (i64)k * ld + o;
        if (VEC && k < Kend && o + 3 < O) {
          const float4 t = __ldg(reinterpret_cast<const float4*>(p));
          v[g][0] = t.x; v[g][1] = t.y; v[g][2] = t.z; v[g][3] = t.w;
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i) v[g][i] = (k < Kend && o + i < O) ? __ldg(p + i) : 0.f;
        }
      }
    }
  }

  // TF32 path: round to nearest (ties away) once here instead of at every fragment load.
  __device__ __forceinline__ void to_tf32() {
#pragma unroll
    for (int g = 0; g < 2; ++g)
#pragma unroll
      for (int i = 0; i < 4; ++i) v[g][i] = round_tf32(v[g][i]);
  }

  __device__ __forceinline__ void store(float (*S)[LD], int tid) const {
#pragma unroll
    for (int g = 0; g < 2; ++g) {
      if (KCONTIG) {
        const int r = tid / 4 + g * 64, c = (tid % 4) * 4;   // transpose on the way in
#pragma unroll
        for (int i = 0; i < 4; ++i) S[c + i][r] = v[g][i];
      } else {
        const int kr = tid / 32 + g * 8, oc = (tid % 32) * 4;
        *reinterpret_cast<float4*>(&S[kr][oc]) = make_float4(v[g][0], v[g][1], v[g][2], v[g][3]);
      }
    }
  }
};

// The epilogue of one element: ws != nullptr (split-K) stores the raw partial sum for
// gemm_reduce; otherwise alpha, beta (C not read when beta == 0) and bias.
struct Epilogue {
  float alpha, beta;
  float* __restrict__ C;
  i64 ldc;
  const float* __restrict__ bias;
  float* __restrict__ ws;   // split-K partials [splits][M][N], or nullptr
  int M, N;
  bool vec_c;               // ldc % 4 == 0 and C 16-byte aligned (and the same for ws rows)

  // Four consecutive columns n..n+3 of row m (m < M checked by the caller).
  __device__ __forceinline__ void store4(int m, int n, const float* acc, int split) const {
    if (ws) {
      float* row = ws + (i64)split * M * N + (i64)m * N;
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (n + j < N) row[n + j] = acc[j];
      return;
    }
    float* row = C + (i64)m * ldc;
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = alpha * acc[j];
    if (vec_c && n + 3 < N) {
      if (beta != 0.f) {
        const float4 c = *reinterpret_cast<const float4*>(row + n);
        v[0] += beta * c.x; v[1] += beta * c.y; v[2] += beta * c.z; v[3] += beta * c.w;
      }
      if (bias) {
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] += bias[n + j];
      }
      *reinterpret_cast<float4*>(row + n) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        if (n + j >= N) break;
        float x = v[j];
        if (beta != 0.f) x += beta * row[n + j];
        if (bias) x += bias[n + j];
        row[n + j] = x;
      }
    }
  }

  __device__ __forceinline__ void store1(int m, int n, float acc, int split) const {
    if (ws) {
      ws[(i64)split * M * N + (i64)m * N + n] = acc;
      return;
    }
    float* p = C + (i64)m * ldc + n;
    float x = alpha * acc;
    if (beta != 0.f) x += beta * *p;
    if (bias) x += bias[n];
    *p = x;
  }
};

// Grid: x = tile index (tiles_n tiles per row of tiles), y = K split; split z covers
// k in [z*kchunk, min(K, (z+1)*kchunk)), kchunk a multiple of BK.
template <bool TA, bool TB, bool VEC>
__global__ void __launch_bounds__(NT, VEC ? 2 : 1) sgemm_big(int M, int N, int K, int kchunk, int tiles_n,
                                                const float* __restrict__ A, i64 lda,
                                                const float* __restrict__ B, i64 ldb,
                                                Epilogue ep) {
  __shared__ __align__(16) float As[2][BK][SLD];
  __shared__ __align__(16) float Bs[2][BK][SLD];
  const int tid = threadIdx.x;
  const int m0 = int(blockIdx.x / tiles_n) * BM, n0 = int(blockIdx.x % tiles_n) * BN;
  const int kbeg = int(blockIdx.y) * kchunk, kend = min(K, kbeg + kchunk);
  const int warp = tid / 32, lane = tid % 32;
  const int wr = warp / (BN / WN), wc = warp % (BN / WN);   // warp tile row (0..1), col (0..3)
  const int tr = lane / (WSN / TN), tc = lane % (WSN / TN); // lane row (0..7), col (0..3)

  TileLoader<!TA, VEC> la;   // op(A)[m][k]
  TileLoader<TB, VEC> lb;    // op(B)[k][n] seen as X[n][k]
  float acc[WMI * TM][WNI * TN];
#pragma unroll
  for (int i = 0; i < WMI * TM; ++i)
#pragma unroll
    for (int j = 0; j < WNI * TN; ++j) acc[i][j] = 0.f;

  const int ktiles = (kend - kbeg + BK - 1) / BK;   // >= 1: the host never makes an empty split
  la.load(A, lda, M, kend, m0, kbeg, tid);
  lb.load(B, ldb, N, kend, n0, kbeg, tid);
  la.store(As[0], tid);
  lb.store(Bs[0], tid);
  __syncthreads();

  for (int kt = 0; kt < ktiles; ++kt) {
    const int cur = kt & 1;
    const bool more = kt + 1 < ktiles;
    if (more) {   // next slice: global -> registers, in flight during the FMAs below
      la.load(A, lda, M, kend, m0, kbeg + (kt + 1) * BK, tid);
      lb.load(B, ldb, N, kend, n0, kbeg + (kt + 1) * BK, tid);
    }
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      float ra[WMI * TM], rb[WNI * TN];
#pragma unroll
      for (int i = 0; i < WMI; ++i) {
        const float4 t = *reinterpret_cast<const float4*>(&As[cur][k][wr * WM + i * WSM + tr * TM]);
        ra[i * TM + 0] = t.x; ra[i * TM + 1] = t.y; ra[i * TM + 2] = t.z; ra[i * TM + 3] = t.w;
      }
#pragma unroll
      for (int j = 0; j < WNI; ++j) {
        const float4 t = *reinterpret_cast<const float4*>(&Bs[cur][k][wc * WN + j * WSN + tc * TN]);
        rb[j * TN + 0] = t.x; rb[j * TN + 1] = t.y; rb[j * TN + 2] = t.z; rb[j * TN + 3] = t.w;
      }
#pragma unroll
      for (int i = 0; i < WMI * TM; ++i)
#pragma unroll
        for (int j = 0; j < WNI * TN; ++j) acc[i][j] = fmaf(ra[i], rb[j], acc[i][j]);
    }
    if (more) {   // the other buffer was last read in iteration kt-1, before its barrier
      la.store(As[cur ^ 1], tid);
      lb.store(Bs[cur ^ 1], tid);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < WMI; ++i)
#pragma unroll
    for (int ii = 0; ii < TM; ++ii) {
      const int m = m0 + wr * WM + i * WSM + tr * TM + ii;
      if (m >= M) continue;
#pragma unroll
      for (int j = 0; j < WNI; ++j) {
        const int n = n0 + wc * WN + j * WSN + tc * TN;
        if (n < N) ep.store4(m, n, &acc[i * TM + ii][j * TN], int(blockIdx.y));
      }
    }
}

// ---- the TF32 tensor-core kernel (only with tf32() on, on sm_80+) ----------------------------
// The same 128x128x16 block tile, loads, double buffer and 64x32 warp tiles as sgemm_big; each
// warp tile is 4 (M) x 4 (N) mma.sync.m16n8k8 tiles, 2 k8 steps per K step, 4 x 4 x 4 = 64
// accumulators per thread. Shared rows are padded to 136 floats so that the fragment reads
// (8 groups x 4 k rows) hit 32 different banks.
constexpr int SLD_TC = BM + 8;

__device__ __forceinline__ void mma_tf32(float (&d)[4], const unsigned (&a)[4], const unsigned (&b)[2]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

template <bool TA, bool TB, bool VEC>
__global__ void __launch_bounds__(NT) sgemm_tf32(int M, int N, int K, int kchunk, int tiles_n,
                                                 const float* __restrict__ A, i64 lda,
                                                 const float* __restrict__ B, i64 ldb,
                                                 Epilogue ep) {
  __shared__ __align__(16) float As[2][BK][SLD_TC];
  __shared__ __align__(16) float Bs[2][BK][SLD_TC];
  const int tid = threadIdx.x;
  const int m0 = int(blockIdx.x / tiles_n) * BM, n0 = int(blockIdx.x % tiles_n) * BN;
  const int kbeg = int(blockIdx.y) * kchunk, kend = min(K, kbeg + kchunk);
  const int warp = tid / 32, lane = tid % 32;
  const int wr = warp / (BN / WN), wc = warp % (BN / WN);
  const int g = lane / 4, t = lane % 4;   // mma fragment coordinates: group, thread in group

  TileLoader<!TA, VEC, SLD_TC> la;
  TileLoader<TB, VEC, SLD_TC> lb;
  float acc[4][4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.f;

  const int ktiles = (kend - kbeg + BK - 1) / BK;
  la.load(A, lda, M, kend, m0, kbeg, tid);
  lb.load(B, ldb, N, kend, n0, kbeg, tid);
  la.to_tf32(); lb.to_tf32();
  la.store(As[0], tid);
  lb.store(Bs[0], tid);
  __syncthreads();

  for (int kt = 0; kt < ktiles; ++kt) {
    const int cur = kt & 1;
    const bool more = kt + 1 < ktiles;
    if (more) {
      la.load(A, lda, M, kend, m0, kbeg + (kt + 1) * BK, tid);
      lb.load(B, ldb, N, kend, n0, kbeg + (kt + 1) * BK, tid);
    }
#pragma unroll
    for (int kb = 0; kb < BK; kb += 8) {
      // A fragment (16 x 8, row-major): a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4)
      // in (row m, column k); B fragment (8 x 8, column-major): b0 (k=t, n=g), b1 (k=t+4, n=g).
      unsigned af[4][4], bf[4][2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int mb = wr * WM + i * 16 + g;
        af[i][0] = __float_as_uint(As[cur][kb + t][mb]);
        af[i][1] = __float_as_uint(As[cur][kb + t][mb + 8]);
        af[i][2] = __float_as_uint(As[cur][kb + t + 4][mb]);
        af[i][3] = __float_as_uint(As[cur][kb + t + 4][mb + 8]);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int nb = wc * WN + j * 8 + g;
        bf[j][0] = __float_as_uint(Bs[cur][kb + t][nb]);
        bf[j][1] = __float_as_uint(Bs[cur][kb + t + 4][nb]);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) mma_tf32(acc[i][j], af[i], bf[j]);
    }
    if (more) {
      la.to_tf32(); lb.to_tf32();
      la.store(As[cur ^ 1], tid);
      lb.store(Bs[cur ^ 1], tid);
    }
    __syncthreads();
  }

  // D fragment (16 x 8): d0, d1 at (g, 2t), (g, 2t+1); d2, d3 at (g+8, 2t), (g+8, 2t+1).
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int m = m0 + wr * WM + i * 16 + g + (r >= 2 ? 8 : 0);
        const int n = n0 + wc * WN + j * 8 + 2 * t + (r & 1);
        if (m < M && n < N) ep.store1(m, n, acc[i][j][r], int(blockIdx.y));
      }
}

// ---- the small kernel: 32x32x32 tiles, 256 threads, 2x2 outputs per thread --------------------
constexpr int SB = 32, SNT = 256;

template <bool TA, bool TB>
__global__ void __launch_bounds__(SNT) sgemm_small(int M, int N, int K, int kchunk, int tiles_n,
                                                   const float* __restrict__ A, i64 lda,
                                                   const float* __restrict__ B, i64 ldb,
                                                   Epilogue ep) {
  __shared__ float As[SB][SB + 1];   // As[k][m]; +1: the transposing stores hit 32 banks
  __shared__ float Bs[SB][SB + 1];   // Bs[k][n]
  const int tid = threadIdx.x;
  const int m0 = int(blockIdx.x / tiles_n) * SB, n0 = int(blockIdx.x % tiles_n) * SB;
  const int kbeg = int(blockIdx.y) * kchunk, kend = min(K, kbeg + kchunk);
  const int tx = tid % 16, ty = tid / 16;   // outputs (ty + 16i, tx + 16j), i, j in {0, 1}
  float acc[2][2] = {{0.f, 0.f}, {0.f, 0.f}};

  for (int k0 = kbeg; k0 < kend; k0 += SB) {
    // Consecutive threads read consecutive addresses: along k when that is contiguous.
#pragma unroll
    for (int e = tid; e < SB * SB; e += SNT) {
      {
        const int o = TA ? e % SB : e / SB, k = TA ? e / SB : e % SB;
        const int gm = m0 + o, gk = k0 + k;
        As[k][o] = (gm < M && gk < kend) ? __ldg(TA ? A + (i64)gk * lda + gm : A + (i64)gm * lda + gk) : 0.f;
      }
      {
        const int o = TB ? e / SB : e % SB, k = TB ? e % SB : e / SB;
        const int gn = n0 + o, gk = k0 + k;
        Bs[k][o] = (gn < N && gk < kend) ? __ldg(TB ? B + (i64)gn * ldb + gk : B + (i64)gk * ldb + gn) : 0.f;
      }
    }
    __syncthreads();
#pragma unroll 8
    for (int k = 0; k < SB; ++k) {
      const float a0 = As[k][ty], a1 = As[k][ty + 16];
      const float b0 = Bs[k][tx], b1 = Bs[k][tx + 16];
      acc[0][0] = fmaf(a0, b0, acc[0][0]);
      acc[0][1] = fmaf(a0, b1, acc[0][1]);
      acc[1][0] = fmaf(a1, b0, acc[1][0]);
      acc[1][1] = fmaf(a1, b1, acc[1][1]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
      if (m < M && n < N) ep.store1(m, n, acc[i][j], int(blockIdx.y));
    }
}

// ---- split-K reduction: C = alpha * sum_z ws[z] + beta * C + bias, z in fixed order ---------
__global__ void gemm_reduce(int M, int N, int splits, const float* __restrict__ ws, float alpha,
                            float beta, float* __restrict__ C, i64 ldc,
                            const float* __restrict__ bias) {
  const i64 MN = (i64)M * N;
  for (i64 idx = blockIdx.x * (i64)blockDim.x + threadIdx.x; idx < MN;
       idx += (i64)gridDim.x * blockDim.x) {
    const int m = int(idx / N), n = int(idx % N);
    float s = 0.f;
    for (int z = 0; z < splits; ++z) s += ws[z * MN + idx];
    float* p = C + (i64)m * ldc + n;
    float x = alpha * s;
    if (beta != 0.f) x += beta * *p;
    if (bias) x += bias[n];
    *p = x;
  }
}

// ---- the host side ---------------------------------------------------------------------------
int sm_count() {
  int dev = 0, n = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  return n > 0 ? n : 1;
}

int cc_major() {
  int dev = 0, v = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&v, cudaDevAttrComputeCapabilityMajor, dev), "cudaDeviceGetAttribute");
  return v;
}

bool aligned16(const void* p) { return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

// K splits for `tiles` output tiles: enough blocks to give every SM `want` of them, but each
// split at least `min_k` deep; kchunk is a multiple of `gran`. Returns {splits, kchunk}.
struct Split { int splits, kchunk; };
Split choose_split(i64 tiles, int K, int want_blocks, int min_k, int gran) {
  int splits = 1;
  if (tiles < want_blocks) {
    const i64 by_blocks = (want_blocks + tiles - 1) / tiles;
    const i64 by_depth = std::max<i64>(1, K / min_k);
    splits = int(std::max<i64>(1, std::min<i64>({by_blocks, by_depth, 256})));
  }
  int kchunk = int(ceil_div(ceil_div(K, splits), gran) * gran);
  splits = int(ceil_div(K, kchunk));   // no empty split
  return {splits, kchunk};
}

template <bool TA, bool TB>
void launch_big(bool tc, bool vec, dim3 grid, cudaStream_t st, int M, int N, int K, int kchunk,
                int tiles_n, const float* A, i64 lda, const float* B, i64 ldb, const Epilogue& ep) {
  if (tc) {
    if (vec)
      sgemm_tf32<TA, TB, true><<<grid, NT, 0, st>>>(M, N, K, kchunk, tiles_n, A, lda, B, ldb, ep);
    else
      sgemm_tf32<TA, TB, false><<<grid, NT, 0, st>>>(M, N, K, kchunk, tiles_n, A, lda, B, ldb, ep);
    KILNET_CHECK_LAUNCH("sgemm_tf32");
    return;
  }
  if (vec)
    sgemm_big<TA, TB, true><<<grid, NT, 0, st>>>(M, N, K, kchunk, tiles_n, A, lda, B, ldb, ep);
  else
    sgemm_big<TA, TB, false><<<grid, NT, 0, st>>>(M, N, K, kchunk, tiles_n, A, lda, B, ldb, ep);
  KILNET_CHECK_LAUNCH("sgemm_big");
}

template <bool TA, bool TB>
void launch_small(dim3 grid, cudaStream_t st, int M, int N, int K, int kchunk, int tiles_n,
                  const float* A, i64 lda, const float* B, i64 ldb, const Epilogue& ep) {
  sgemm_small<TA, TB><<<grid, SNT, 0, st>>>(M, N, K, kchunk, tiles_n, A, lda, B, ldb, ep);
  KILNET_CHECK_LAUNCH("sgemm_small");
}

}  // namespace

void gemm(bool trans_a, bool trans_b, index_t M, index_t N, index_t K, float alpha,
          const float* A, index_t lda, const float* B, index_t ldb, float beta,
          float* C, index_t ldc, const float* bias, void* stream) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("kilnet::cuda::gemm: negative size");
  if (M == 0 || N == 0) return;
  if (M > INT_MAX || N > INT_MAX || K > INT_MAX)
    throw std::invalid_argument("kilnet::cuda::gemm: M, N and K must each be below 2^31");
  cudaStream_t st = as_stream(stream);
  const int m = int(M), n = int(N), k = int(K);

  if (k == 0) {   // op(A)·op(B) is zero: C = beta * C + bias
    gemm_reduce<<<grid_for(M * N), 256, 0, st>>>(m, n, 0, nullptr, alpha, beta, C, ldc, bias);
    KILNET_CHECK_LAUNCH("gemm_reduce");
    return;
  }

  const int sms = sm_count();
  const bool big = M >= BM && N >= BN;
  i64 tiles_m, tiles_n;
  Split sp;
  if (big) {
    tiles_m = ceil_div(M, BM); tiles_n = ceil_div(N, BN);
    sp = choose_split(tiles_m * tiles_n, k, sms, 256, BK);
  } else {
    tiles_m = ceil_div(M, SB); tiles_n = ceil_div(N, SB);
    sp = choose_split(tiles_m * tiles_n, k, 2 * sms, 128, SB);
  }
  const i64 tiles = tiles_m * tiles_n;
  if (tiles > INT_MAX) throw std::invalid_argument("kilnet::cuda::gemm: too many output tiles");

  float* ws = nullptr;
  if (sp.splits > 1)
    check(cudaMallocAsync(reinterpret_cast<void**>(&ws), size_t(sp.splits) * size_t(M) * size_t(N) * sizeof(float), st),
          "cudaMallocAsync (gemm split-K scratch)");
  Epilogue ep{alpha, beta, C, ldc, bias, ws, m, n, ldc % 4 == 0 && aligned16(C)};
  const dim3 grid{unsigned(tiles), unsigned(sp.splits)};

  try {
    if (big) {
      const bool vec = lda % 4 == 0 && ldb % 4 == 0 && aligned16(A) && aligned16(B);
      const bool tc = tf32() && cc_major() >= 8;   // mma.sync TF32 needs sm_80
      if (!trans_a && !trans_b) launch_big<false, false>(tc, vec, grid, st, m, n, k, sp.kchunk, int(tiles_n), A, lda, B, ldb, ep);
      else if (!trans_a)        launch_big<false, true >(tc, vec, grid, st, m, n, k, sp.kchunk, int(tiles_n), A, lda, B, ldb, ep);
      else if (!trans_b)        launch_big<true,  false>(tc, vec, grid, st, m, n, k, sp.kchunk, int(tiles_n), A, lda, B, ldb, ep);
      else                      launch_big<true,  true >(tc, vec, grid, st, m, n, k, sp.kchunk, int(tiles_n), A, lda, B, ldb, ep);
    } else {
      if (!trans_a && !trans_b) launch_small<false, false>(grid, st, m, n, k, sp.kchunk, int(tiles_n), A, lda, B, ldb, ep);
      else if (!trans_a)        launch_small<false, true >(grid, st, m, n, k, sp.kchunk, int(tiles_n), A, lda, B, ldb, ep);
      else if (!trans_b)        launch_small<true,  false>(grid, st, m, n, k, sp.kchunk, int(tiles_n), A, lda, B, ldb, ep);
      else                      launch_small<true,  true >(grid, st, m, n, k, sp.kchunk, int(tiles_n), A, lda, B, ldb, ep);
    }
    if (ws) {
      gemm_reduce<<<grid_for(M * N), 256, 0, st>>>(m, n, sp.splits, ws, alpha, beta, C, ldc, bias);
      KILNET_CHECK_LAUNCH("gemm_reduce");
    }
  } catch (...) {
    if (ws) cudaFreeAsync(ws, st);
    throw;
  }
  if (ws) check(cudaFreeAsync(ws, st), "cudaFreeAsync (gemm split-K scratch)");
}

// ---- bias_backward: db[n] += sum_m dy[m][n], deterministic -----------------------------------
namespace {

// Block: 32 columns x 8 row lanes. Row lane r sums rows r, r+8, ... of its chunk in order, then
// lane 0 adds the 8 lane sums in order. A warp reads 32 consecutive columns of one row.
__global__ void bias_partial(int M, int N, int rows_per_chunk, const float* __restrict__ dy,
                             float* __restrict__ out, bool accumulate) {
  __shared__ float sh[8][33];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int n = int(blockIdx.x) * 32 + tx;
  const int r0 = int(blockIdx.y) * rows_per_chunk, r1 = min(M, r0 + rows_per_chunk);
  float s = 0.f;
  if (n < N)
    for (int r = r0 + ty; r < r1; r += 8) s += dy[(i64)r * N + n];
  sh[ty][tx] = s;
  __syncthreads();
  if (ty == 0 && n < N) {
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) t += sh[i][tx];
    if (accumulate) out[n] += t;                      // single chunk: straight into db
    else out[(i64)blockIdx.y * N + n] = t;            // one partial row per chunk
  }
}

__global__ void bias_finish(int N, int chunks, const float* __restrict__ part, float* __restrict__ db) {
  for (int n = blockIdx.x * blockDim.x + threadIdx.x; n < N; n += gridDim.x * blockDim.x) {
    float s = 0.f;
    for (int c = 0; c < chunks; ++c) s += part[(i64)c * N + n];
    db[n] += s;
  }
}

}  // namespace

void bias_backward(index_t M, index_t N, const float* dy, float* db, void* stream) {
  if (M < 0 || N < 0) throw std::invalid_argument("kilnet::cuda::bias_backward: negative size");
  if (M == 0 || N == 0) return;
  if (M > INT_MAX || N > INT_MAX)
    throw std::invalid_argument("kilnet::cuda::bias_backward: M and N must each be below 2^31");
  cudaStream_t st = as_stream(stream);
  const i64 col_blocks = ceil_div(N, 32);
  if (col_blocks > INT_MAX) throw std::invalid_argument("kilnet::cuda::bias_backward: N too large");
  // Enough row chunks to give every SM ~2 blocks, each chunk at least 64 rows.
  const i64 want = std::max<i64>(1, (2 * sm_count() + col_blocks - 1) / col_blocks);
  i64 chunks = std::min<i64>({want, ceil_div(M, 64), 65535});
  const int rows = int(ceil_div(M, chunks));
  chunks = ceil_div(M, rows);
  const dim3 grid{unsigned(col_blocks), unsigned(chunks)};
  if (chunks == 1) {
    bias_partial<<<grid, 256, 0, st>>>(int(M), int(N), rows, dy, db, true);
    KILNET_CHECK_LAUNCH("bias_partial");
    return;
  }
  float* part = nullptr;
  check(cudaMallocAsync(reinterpret_cast<void**>(&part), size_t(chunks) * size_t(N) * sizeof(float), st),
        "cudaMallocAsync (bias_backward scratch)");
  try {
    bias_partial<<<grid, 256, 0, st>>>(int(M), int(N), rows, dy, part, false);
    KILNET_CHECK_LAUNCH("bias_partial");
    bias_finish<<<grid_for(N), 256, 0, st>>>(int(N), int(chunks), part, db);
    KILNET_CHECK_LAUNCH("bias_finish");
  } catch (...) {
    cudaFreeAsync(part, st);
    throw;
  }
  check(cudaFreeAsync(part, st), "cudaFreeAsync (bias_backward scratch)");
}

}  // namespace kilnet::cuda
