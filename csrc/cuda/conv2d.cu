// conv2d.cu — 2-D convolution on the GPU as implicit GEMM: the im2col matrix is never written
// out; each block gathers its tile of it from x (or dy) straight into shared memory.
//   forward   y  [NPQ x K]   = im2col(x) [NPQ x RSC] . w [RSC x K]          (+ b, act on store)
//   data grad dx [NHW x C]   = gather(dz) [NHW x RSK] . wT [RSK x C]        (overwritten)
//   weight    dw [RSC x K]  += im2col(x)^T [RSC x NPQ] . dz [NPQ x K]       (split over NPQ)
// with dz = act'(y) * dy formed as dy is read. Shapes (kilnet/conv2d.h): x NHWC, w RSCK,
// y/dy NPQK. One templated kernel (igemm_kernel) runs all three: a loader class per operand
// knows how to gather its tile, an epilogue knows where the results go. The host functions pick
// the block tile from the GEMM's column count (128x128, 128x64, 128x32; 64x32 and 16x32 for small
// weight gradients); reductions of 32 or fewer (the 28x28x1 first layer) use a direct forward
// kernel instead. With tf32() on, igemm_tc_kernel does the same on TF32 WMMA tensor cores.
// The weight gradient is split over pixels into cudaMallocAsync partials that one kernel adds in
// a fixed order, so every result is deterministic (no atomics).
// Tensors are limited to 2^31 - 1 elements each so that all index arithmetic is 32-bit.
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <mma.h>
#include "launch.cuh"
#include "kilnet/conv2d.h"
#include "kilnet/device.h"
#include "kilnet/detail/elementwise.h"

namespace kilnet::cuda {
namespace {

using detail::act_backward;
using detail::act_forward;

// Everything a kernel needs, by value (kernel parameter space).
struct ConvArgs {
  const float* x;    // N x H x W x C
  const float* w;    // R x S x C x K
  const float* b;    // K or nullptr (forward)
  const float* dy;   // N x P x Q x K (backward)
  const float* y;    // N x P x Q x K forward output, nullptr for linear (backward)
  float* out;        // y (forward), dx (data grad) or the split partials (weight grad)
  float* dbpart;     // weight grad: splits x K partial column sums of dz, or nullptr
  Act act;
  int N, H, W, C, K, R, S, P, Q;
  int sh, sw, ph, pw, dh, dw;
  int PQ, HW;
  int M, Ncols, KR;  // the GEMM: M x Ncols, reduction KR
  int klen;          // reduction length of one split (multiple of BK)
  // float4 allowed (the channel count of that operand % 4 == 0 and its pointers aligned) for the
  // A gather, the B gather, and the output stores.
  bool vec_a, vec_b, vec_c;
};

// Block tile BM x BN, BK deep, each of the NT threads owning a TM x TN register tile.
template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct Cfg {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int TX = BN / TN, TY = BM / TM, NT = TX * TY;
  static constexpr int PAD = 4;   // keeps rows 16-byte aligned and spreads the transposed stores
  static_assert(BM % TM == 0 && BN % TN == 0 && BK % 4 == 0 && BM % 4 == 0 && BN % 4 == 0, "tile");
  // Column (within the tile) of a thread's register column j. With TN % 4 == 0 a thread owns
  // groups of 4 columns spaced 4*TX apart, so the 8 threads of a quarter warp read 128
  // contiguous bytes of Bs (no bank conflicts); otherwise TN adjacent columns.
  static __device__ __forceinline__ int col(int tx, int j) {
    if constexpr (TN % 4 == 0) return (j / 4) * (4 * TX) + tx * 4 + (j % 4);
    else return tx * TN + j;
  }
};
using CfgL = Cfg<128, 128, 8, 8, 8>;   // 256 threads, large K
using CfgM = Cfg<128, 64, 8, 8, 4>;    // 256 threads
using CfgN = Cfg<128, 32, 8, 4, 4>;    // 256 threads, 32 or fewer columns
using CfgS = Cfg<64, 32, 16, 4, 2>;    // 256 threads, small GEMMs
using CfgW = Cfg<16, 32, 32, 1, 2>;    // 256 threads, weight gradients of 16 or fewer rows (RSC)

// TF32 tensor-core tiles (when tf32() is on): the same block tiles and loaders, 16 deep, the
// block's 8 warps in a WM x WN grid, each warp owning (BM/WM) x (BN/WN) in 16x16 WMMA fragments.
template <class G, int WM_, int WN_>
struct TcCfg : G {
  static constexpr int WM = WM_, WN = WN_;
  static_assert(WM * WN * 32 == G::NT && (G::BM / WM) % 16 == 0 && (G::BN / WN) % 16 == 0 &&
                G::BK % 8 == 0, "tensor-core tile");
};
using TcM = TcCfg<Cfg<128, 64, 16, 8, 4>, 4, 2>;
using TcN = TcCfg<Cfg<128, 32, 16, 4, 4>, 4, 2>;
using TcS = TcCfg<Cfg<64, 32, 16, 4, 2>, 4, 2>;

__device__ __forceinline__ float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ void zero4(float (&v)[4]) { v[0] = v[1] = v[2] = v[3] = 0.f; }
__device__ __forceinline__ void set4(float (&v)[4], float4 t) { v[0] = t.x; v[1] = t.y; v[2] = t.z; v[3] = t.w; }

// ---- forward loaders -------------------------------------------------------------------------
// A[m][kk] = x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, c], m = (n, p, q), kk = (r, s, c).
// Each chunk is 4 consecutive kk of one row m: with C % 4 == 0 they are 4 consecutive channels
// of one pixel (one float4).
template <class G>
struct FwdA {
  static constexpr int KC = G::BK / 4, CH = G::BM * KC, PS = (CH + G::NT - 1) / G::NT;
  int row[PS], kq[PS], img[PS], ih0[PS], iw0[PS];   // img < 0: chunk unused or row >= M
  int c_[PS], s_[PS], r_[PS];   // (r, s, c) of the next tile's kk (float4 path): no divisions per tile
  float v[PS][4];
  __device__ void start(const ConvArgs& a, int k0) {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      const int kk = k0 + kq[ps], rs = kk / a.C;
      c_[ps] = kk - rs * a.C; s_[ps] = rs % a.S; r_[ps] = rs / a.S;
    }
  }
  __device__ FwdA(const ConvArgs& a, int m0, int tid) {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      const int j = tid + ps * G::NT;
      row[ps] = j / KC; kq[ps] = (j % KC) * 4;
      const int m = m0 + row[ps];
      img[ps] = -1; ih0[ps] = iw0[ps] = 0;
      if (j < CH && m < a.M) {
        img[ps] = m / a.PQ;
        const int pq = m - img[ps] * a.PQ, p = pq / a.Q, q = pq - p * a.Q;
        ih0[ps] = p * a.sh - a.ph; iw0[ps] = q * a.sw - a.pw;
      }
    }
  }
  __device__ void load(const ConvArgs& a, int k0, int kend) {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      zero4(v[ps]);
      if (img[ps] < 0) continue;
      const int kk0 = k0 + kq[ps];
      if (a.vec_a) {   // kk0 % 4 == 0 and C % 4 == 0 (so KR % 4 == 0): all four or none
        if (kk0 < kend) {
          const int ih = ih0[ps] + r_[ps] * a.dh, iw = iw0[ps] + s_[ps] * a.dw;
          if (ih >= 0 && ih < a.H && iw >= 0 && iw < a.W)
            set4(v[ps], ld4(a.x + ((img[ps] * a.H + ih) * a.W + iw) * a.C + c_[ps]));
        }
        c_[ps] += G::BK;   // the next call loads kk0 + BK
        while (c_[ps] >= a.C) { c_[ps] -= a.C; if (++s_[ps] == a.S) { s_[ps] = 0; ++r_[ps]; } }
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int kk = kk0 + e;
          if (kk >= kend) break;
          const int c = kk % a.C, rs = kk / a.C, s = rs % a.S, r = rs / a.S;
          const int ih = ih0[ps] + r * a.dh, iw = iw0[ps] + s * a.dw;
          if (ih >= 0 && ih < a.H && iw >= 0 && iw < a.W)
            v[ps][e] = a.x[((img[ps] * a.H + ih) * a.W + iw) * a.C + c];
        }
      }
    }
  }
  __device__ void store(float (*As)[G::BM + G::PAD], int tid) const {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      if (tid + ps * G::NT >= CH) continue;
#pragma unroll
      for (int e = 0; e < 4; ++e) As[kq[ps] + e][row[ps]] = v[ps][e];
    }
  }
};

// B rows read along the columns: B[kk][n] = src[kk * Ncols + n] (w in the forward, dz in the
// weight gradient with dz = act'(y) * dy when grad is set). Chunks are 4 consecutive columns.
template <class G, bool Grad>
struct RowB {
  static constexpr int NC = G::BN / 4, CH = G::BK * NC, PS = (CH + G::NT - 1) / G::NT;
  int kr[PS], c4[PS], col[PS];   // c4: column within the tile, col: absolute column
  float v[PS][4];
  float colsum = 0.f;    // weight grad: this thread's column sum of dz (db), tid < BN
  __device__ RowB(const ConvArgs&, int n0, int tid) {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      const int j = tid + ps * G::NT;
      kr[ps] = j / NC; c4[ps] = (j % NC) * 4; col[ps] = n0 + c4[ps];
      if (j >= CH) kr[ps] = -1;
    }
  }
  __device__ void start(const ConvArgs&, int) {}
  __device__ void load(const ConvArgs& a, int k0, int kend) {
    const float* src = Grad ? a.dy : a.w;
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      zero4(v[ps]);
      if (kr[ps] < 0) continue;
      const int kk = k0 + kr[ps], n = col[ps];
      if (kk >= kend || n >= a.Ncols) continue;
      const int off = kk * a.Ncols + n;
      if (a.vec_b) {   // Ncols % 4 == 0 and n % 4 == 0: all four columns exist
        set4(v[ps], ld4(src + off));
        if (Grad && a.act != Act::Linear) {
          float t[4]; set4(t, ld4(a.y + off));
#pragma unroll
          for (int e = 0; e < 4; ++e) v[ps][e] = act_backward(a.act, t[e], v[ps][e]);
        }
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (n + e >= a.Ncols) break;
          float d = src[off + e];
          if (Grad && a.act != Act::Linear) d = act_backward(a.act, a.y[off + e], d);
          v[ps][e] = d;
        }
      }
    }
  }
  __device__ void store(float (*Bs)[G::BN + G::PAD], int tid) const {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      if (kr[ps] < 0) continue;
      *reinterpret_cast<float4*>(&Bs[kr[ps]][c4[ps]]) =
          make_float4(v[ps][0], v[ps][1], v[ps][2], v[ps][3]);
    }
  }
  // After a tile is in shared memory: the weight gradient's blocks of the first row of tiles sum
  // the columns of dz for db (rows past the split's end are zero in the tile).
  __device__ void tile_ready(const ConvArgs& a, const float (*Bs)[G::BN + G::PAD], int tid) {
    if (Grad && a.dbpart && blockIdx.x == 0 && tid < G::BN) {
#pragma unroll
      for (int kk = 0; kk < G::BK; ++kk) colsum += Bs[kk][tid];
    }
  }
  __device__ void finish(const ConvArgs& a, int n0, int tid) const {
    if (Grad && a.dbpart && blockIdx.x == 0 && tid < G::BN && n0 + tid < a.Ncols)
      a.dbpart[blockIdx.z * a.Ncols + n0 + tid] = colsum;
  }
};

// ---- data-gradient loaders -------------------------------------------------------------------
// A[m][kk] = dz[n, p, q, k] with m = (n, h, w), kk = (r, s, k), where h + ph - r*dh = p*sh and
// w + pw - s*dw = q*sw must hold exactly with p, q in range (else 0). Chunks: 4 consecutive k.
template <class G>
struct DgradA {
  static constexpr int KC = G::BK / 4, CH = G::BM * KC, PS = (CH + G::NT - 1) / G::NT;
  int row[PS], kq[PS], img[PS], hp[PS], wp[PS];
  int k_[PS], s_[PS], r_[PS];   // (r, s, k) of the next tile's kk (float4 path)
  float v[PS][4];
  __device__ void start(const ConvArgs& a, int k0) {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      const int kk = k0 + kq[ps], rs = kk / a.K;
      k_[ps] = kk - rs * a.K; s_[ps] = rs % a.S; r_[ps] = rs / a.S;
    }
  }
  __device__ DgradA(const ConvArgs& a, int m0, int tid) {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      const int j = tid + ps * G::NT;
      row[ps] = j / KC; kq[ps] = (j % KC) * 4;
      const int m = m0 + row[ps];
      img[ps] = -1; hp[ps] = wp[ps] = 0;
      if (j < CH && m < a.M) {
        img[ps] = m / a.HW;
        const int hw = m - img[ps] * a.HW, h = hw / a.W, w = hw - h * a.W;
        hp[ps] = h + a.ph; wp[ps] = w + a.pw;
      }
    }
  }
  // Offset of dz[n, p, q, 0] for tap (r, s) of this row, or -1 when the tap hits no output.
  __device__ int tap(const ConvArgs& a, int ps, int r, int s) const {
    const int th = hp[ps] - r * a.dh, tw = wp[ps] - s * a.dw;
    if (th < 0 || tw < 0) return -1;
    int p = th, q = tw;   // stride 1 (the common case) needs no division
    if (a.sh != 1) { p = th / a.sh; if (p * a.sh != th) return -1; }
    if (a.sw != 1) { q = tw / a.sw; if (q * a.sw != tw) return -1; }
    if (p >= a.P || q >= a.Q) return -1;
    return ((img[ps] * a.P + p) * a.Q + q) * a.K;
  }
  __device__ void load(const ConvArgs& a, int k0, int kend) {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      zero4(v[ps]);
      if (img[ps] < 0) continue;
      const int kk0 = k0 + kq[ps];
      if (a.vec_a) {   // K % 4 == 0: the four k share (r, s)
        const int k = k_[ps], s = s_[ps], r = r_[ps];
        k_[ps] += G::BK;   // the next call loads kk0 + BK
        while (k_[ps] >= a.K) { k_[ps] -= a.K; if (++s_[ps] == a.S) { s_[ps] = 0; ++r_[ps]; } }
        if (kk0 < kend) {
          const int o = tap(a, ps, r, s);
          if (o >= 0) {
            set4(v[ps], ld4(a.dy + o + k));
            if (a.act != Act::Linear) {
              float t[4]; set4(t, ld4(a.y + o + k));
#pragma unroll
              for (int e = 0; e < 4; ++e) v[ps][e] = act_backward(a.act, t[e], v[ps][e]);
            }
          }
        }
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int kk = kk0 + e;
          if (kk >= kend) break;
          const int k = kk % a.K, rs = kk / a.K, s = rs % a.S, r = rs / a.S;
          const int o = tap(a, ps, r, s);
          if (o < 0) continue;
          float d = a.dy[o + k];
          if (a.act != Act::Linear) d = act_backward(a.act, a.y[o + k], d);
          v[ps][e] = d;
        }
      }
    }
  }
  __device__ void store(float (*As)[G::BM + G::PAD], int tid) const {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      if (tid + ps * G::NT >= CH) continue;
#pragma unroll
      for (int e = 0; e < 4; ++e) As[kq[ps] + e][row[ps]] = v[ps][e];
    }
  }
};

// B[kk][c] = w[r, s, c, k] with kk = (r, s, k): contiguous along kk, so chunks are 4
// consecutive kk of one column c, stored transposed.
template <class G>
struct DgradB {
  static constexpr int KC = G::BK / 4, CH = G::BN * KC, PS = (CH + G::NT - 1) / G::NT;
  int colr[PS], kq[PS], c[PS];   // colr: column within the tile, c: absolute (-1 unused)
  int k_[PS], rs_[PS];           // (r*S + s, k) of the next tile's kk (float4 path)
  float v[PS][4];
  __device__ void start(const ConvArgs& a, int k0) {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      const int kk = k0 + kq[ps];
      rs_[ps] = kk / a.K; k_[ps] = kk - rs_[ps] * a.K;
    }
  }
  __device__ DgradB(const ConvArgs& a, int n0, int tid) {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      const int j = tid + ps * G::NT;
      colr[ps] = j / KC; kq[ps] = (j % KC) * 4;
      c[ps] = (j < CH && n0 + colr[ps] < a.Ncols) ? n0 + colr[ps] : -1;
    }
  }
  __device__ void load(const ConvArgs& a, int k0, int kend) {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      zero4(v[ps]);
      if (c[ps] < 0) continue;
      const int kk0 = k0 + kq[ps];
      if (a.vec_b) {   // K % 4 == 0
        if (kk0 < kend) set4(v[ps], ld4(a.w + (rs_[ps] * a.C + c[ps]) * a.K + k_[ps]));
        k_[ps] += G::BK;   // the next call loads kk0 + BK
        while (k_[ps] >= a.K) { k_[ps] -= a.K; ++rs_[ps]; }
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int kk = kk0 + e;
          if (kk >= kend) break;
          const int k = kk % a.K, rs = kk / a.K;
          v[ps][e] = a.w[(rs * a.C + c[ps]) * a.K + k];
        }
      }
    }
  }
  __device__ void store(float (*Bs)[G::BN + G::PAD], int tid) const {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      if (tid + ps * G::NT >= CH) continue;
#pragma unroll
      for (int e = 0; e < 4; ++e) Bs[kq[ps] + e][colr[ps]] = v[ps][e];
    }
  }
  __device__ void tile_ready(const ConvArgs&, const float (*)[G::BN + G::PAD], int) {}
  __device__ void finish(const ConvArgs&, int, int) const {}
};

// ---- weight-gradient loader for A -------------------------------------------------------------
// A[m][kk] = x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, c] with m = (r, s, c), kk = (n, p, q):
// contiguous along m (channels), so chunks are 4 consecutive m of one pixel kk.
template <class G>
struct WgradA {
  static constexpr int MC = G::BM / 4, CH = G::BK * MC, PS = (CH + G::NT - 1) / G::NT;
  int kr[PS], row4[PS];
  int roff[PS][4], soff[PS][4], cc[PS][4];   // per m: r*dh - ph, s*dw - pw, c (-1: m >= M)
  int n_[PS], p_[PS], q_[PS];                 // the pixel (n, p, q) of the next tile's kk
  float v[PS][4];
  __device__ void start(const ConvArgs& a, int k0) {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      const int pix = k0 + max(kr[ps], 0);
      n_[ps] = pix / a.PQ;
      const int pq = pix - n_[ps] * a.PQ;
      p_[ps] = pq / a.Q; q_[ps] = pq - p_[ps] * a.Q;
    }
  }
  __device__ WgradA(const ConvArgs& a, int m0, int tid) {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      const int j = tid + ps * G::NT;
      kr[ps] = j < CH ? j / MC : -1; row4[ps] = (j % MC) * 4;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int m = m0 + row4[ps] + e;
        cc[ps][e] = -1; roff[ps][e] = soff[ps][e] = 0;
        if (m < a.M) {
          const int c = m % a.C, rs = m / a.C, s = rs % a.S, r = rs / a.S;
          cc[ps][e] = c; roff[ps][e] = r * a.dh - a.ph; soff[ps][e] = s * a.dw - a.pw;
        }
      }
    }
  }
  __device__ void load(const ConvArgs& a, int k0, int kend) {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      zero4(v[ps]);
      if (kr[ps] < 0) continue;
      const int pix = k0 + kr[ps];
      const int n = n_[ps], h0 = p_[ps] * a.sh, w0 = q_[ps] * a.sw;
      q_[ps] += G::BK;   // the next call loads pix + BK
      while (q_[ps] >= a.Q) { q_[ps] -= a.Q; if (++p_[ps] == a.P) { p_[ps] = 0; ++n_[ps]; } }
      if (pix >= kend || cc[ps][0] < 0) continue;   // m >= M for the first implies for all four
      if (a.vec_a) {   // C % 4 == 0: the four m are channels c..c+3 of one tap
        const int ih = h0 + roff[ps][0], iw = w0 + soff[ps][0];
        if (ih >= 0 && ih < a.H && iw >= 0 && iw < a.W)
          set4(v[ps], ld4(a.x + ((n * a.H + ih) * a.W + iw) * a.C + cc[ps][0]));
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (cc[ps][e] < 0) break;
          const int ih = h0 + roff[ps][e], iw = w0 + soff[ps][e];
          if (ih >= 0 && ih < a.H && iw >= 0 && iw < a.W)
            v[ps][e] = a.x[((n * a.H + ih) * a.W + iw) * a.C + cc[ps][e]];
        }
      }
    }
  }
  __device__ void store(float (*As)[G::BM + G::PAD], int) const {
#pragma unroll
    for (int ps = 0; ps < PS; ++ps) {
      if (kr[ps] < 0) continue;
      *reinterpret_cast<float4*>(&As[kr[ps]][row4[ps]]) =
          make_float4(v[ps][0], v[ps][1], v[ps][2], v[ps][3]);
    }
  }
};

// ---- epilogues --------------------------------------------------------------------------------
// Forward: y = act(acc + b). Data grad: dx = acc. Weight grad: this split's partial = acc.
enum class Epi { Forward, Store, Partial };

template <class G, Epi E>
__device__ void epilogue(const ConvArgs& a, int m0, int n0, const float (&acc)[G::TM][G::TN]) {
  const int ty = threadIdx.x / G::TX, tx = threadIdx.x % G::TX;
  float* out = a.out;
  if (E == Epi::Partial) out += std::size_t(blockIdx.z) * std::size_t(a.M) * std::size_t(a.Ncols);
  int nc[G::TN];   // absolute column of register column j
#pragma unroll
  for (int j = 0; j < G::TN; ++j) nc[j] = n0 + G::col(tx, j);
  float bias[G::TN];
#pragma unroll
  for (int j = 0; j < G::TN; ++j)
    bias[j] = (E == Epi::Forward && a.b && nc[j] < a.Ncols) ? a.b[nc[j]] : 0.f;
#pragma unroll
  for (int i = 0; i < G::TM; ++i) {
    const int m = m0 + ty * G::TM + i;
    if (m >= a.M) break;
    float* o = out + std::size_t(m) * std::size_t(a.Ncols);
    float t[G::TN];
#pragma unroll
    for (int j = 0; j < G::TN; ++j) {
      t[j] = acc[i][j] + bias[j];
      if (E == Epi::Forward) t[j] = act_forward(a.act, t[j]);
    }
    // a.vec_c promises Ncols % 4 == 0 and an aligned output, so a group of 4 is all in or out.
    bool done = false;
    if constexpr (G::TN % 4 == 0) {
      if (a.vec_c) {
#pragma unroll
        for (int j = 0; j < G::TN; j += 4)
          if (nc[j] < a.Ncols)   // nc[j..j+3] are consecutive
            *reinterpret_cast<float4*>(o + nc[j]) = make_float4(t[j], t[j + 1], t[j + 2], t[j + 3]);
        done = true;
      }
    }
    if (!done) {
#pragma unroll
      for (int j = 0; j < G::TN; ++j)
        if (nc[j] < a.Ncols) o[nc[j]] = t[j];
    }
  }
}

// ---- the implicit GEMM kernel -------------------------------------------------------------------
// Grid: x over M tiles, y over Ncols tiles, z over reduction splits. Shared memory holds two
// stages of the A tile (stored k-major, As[kk][m]) and the B tile (Bs[kk][n]); the next stage is
// fetched into registers while the current one is multiplied.
template <class G, class LA, class LB, Epi E>
__global__ void __launch_bounds__(G::NT, 2) igemm_kernel(const ConvArgs a) {
  __shared__ __align__(16) float As[2][G::BK][G::BM + G::PAD];
  __shared__ __align__(16) float Bs[2][G::BK][G::BN + G::PAD];
  const int tid = threadIdx.x;
  const int ty = tid / G::TX, tx = tid % G::TX;
  const int m0 = blockIdx.x * G::BM, n0 = blockIdx.y * G::BN;
  const int kbeg = blockIdx.z * a.klen;
  const int kend = min(a.KR, kbeg + a.klen);
  LA la(a, m0, tid);
  LB lb(a, n0, tid);
  float acc[G::TM][G::TN];
#pragma unroll
  for (int i = 0; i < G::TM; ++i)
#pragma unroll
    for (int j = 0; j < G::TN; ++j) acc[i][j] = 0.f;

  if (kbeg < kend) {
    // Loads must then come in order kbeg, kbeg + BK, ...: the loaders step their indices.
    la.start(a, kbeg); lb.start(a, kbeg);
    la.load(a, kbeg, kend); lb.load(a, kbeg, kend);
    la.store(As[0], tid); lb.store(Bs[0], tid);
    __syncthreads();
    int buf = 0;
    for (int k0 = kbeg; k0 < kend; k0 += G::BK) {
      const bool more = k0 + G::BK < kend;
      if (more) { la.load(a, k0 + G::BK, kend); lb.load(a, k0 + G::BK, kend); }
      lb.tile_ready(a, Bs[buf], tid);
#pragma unroll
      for (int kk = 0; kk < G::BK; ++kk) {
        float ra[G::TM], rb[G::TN];
        if constexpr (G::TM % 4 == 0) {
#pragma unroll
          for (int i = 0; i < G::TM; i += 4) {
            const float4 t = *reinterpret_cast<const float4*>(&As[buf][kk][ty * G::TM + i]);
            ra[i] = t.x; ra[i + 1] = t.y; ra[i + 2] = t.z; ra[i + 3] = t.w;
          }
        } else {
#pragma unroll
          for (int i = 0; i < G::TM; ++i) ra[i] = As[buf][kk][ty * G::TM + i];
        }
        if constexpr (G::TN % 4 == 0) {
#pragma unroll
          for (int j = 0; j < G::TN; j += 4) {
            const float4 t = *reinterpret_cast<const float4*>(&Bs[buf][kk][G::col(tx, j)]);
            rb[j] = t.x; rb[j + 1] = t.y; rb[j + 2] = t.z; rb[j + 3] = t.w;
          }
        } else {
#pragma unroll
          for (int j = 0; j < G::TN; ++j) rb[j] = Bs[buf][kk][G::col(tx, j)];
        }
#pragma unroll
        for (int i = 0; i < G::TM; ++i)
#pragma unroll
          for (int j = 0; j < G::TN; ++j) acc[i][j] = fmaf(ra[i], rb[j], acc[i][j]);
      }
      // The other stage was last read before the previous barrier, so it can be overwritten.
      if (more) { la.store(As[buf ^ 1], tid); lb.store(Bs[buf ^ 1], tid); }
      __syncthreads();
      buf ^= 1;
    }
  }
  lb.finish(a, n0, tid);
  epilogue<G, E>(a, m0, n0, acc);
}


// ---- the same GEMM on TF32 tensor cores (WMMA m16n16k8), only when tf32() is on ----------------
// Shared memory tiles as above: As[kk][m] is A in column-major order, Bs[kk][n] is B in row-major
// order, both with a leading dimension that is a multiple of 4 floats and every fragment pointer
// 32-byte aligned (kk is a multiple of 8, fragment offsets multiples of 16). Each warp stages its
// 16x16 accumulators through its own shared scratch for the element-wise epilogue.
template <Epi E>
__device__ __forceinline__ void store_elem(const ConvArgs& a, float* out, int m, int n, float v) {
  if (E == Epi::Forward) v = act_forward(a.act, v + (a.b ? a.b[n] : 0.f));
  out[std::size_t(m) * std::size_t(a.Ncols) + n] = v;
}

template <class G, class LA, class LB, Epi E>
__global__ void __launch_bounds__(G::NT, 2) igemm_tc_kernel(const ConvArgs a) {
  namespace wmma = nvcuda::wmma;
  constexpr int WTM = G::BM / G::WM, WTN = G::BN / G::WN, FM = WTM / 16, FN = WTN / 16;
  __shared__ __align__(32) float As[2][G::BK][G::BM + G::PAD];
  __shared__ __align__(32) float Bs[2][G::BK][G::BN + G::PAD];
  __shared__ __align__(32) float Cs[G::NT / 32][16 * 16];
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = warp / G::WN, wn = warp % G::WN;
  const int m0 = blockIdx.x * G::BM, n0 = blockIdx.y * G::BN;
  const int kbeg = blockIdx.z * a.klen;
  const int kend = min(a.KR, kbeg + a.klen);
  LA la(a, m0, tid);
  LB lb(a, n0, tid);
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[FM][FN];
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  if (kbeg < kend) {
    la.start(a, kbeg); lb.start(a, kbeg);
    la.load(a, kbeg, kend); lb.load(a, kbeg, kend);
    la.store(As[0], tid); lb.store(Bs[0], tid);
    __syncthreads();
    int buf = 0;
    for (int k0 = kbeg; k0 < kend; k0 += G::BK) {
      const bool more = k0 + G::BK < kend;
      if (more) { la.load(a, k0 + G::BK, kend); lb.load(a, k0 + G::BK, kend); }
      lb.tile_ready(a, Bs[buf], tid);
#pragma unroll
      for (int kk = 0; kk < G::BK; kk += 8) {
        wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fa[FM];
        wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb[FN];
#pragma unroll
        for (int i = 0; i < FM; ++i) {
          wmma::load_matrix_sync(fa[i], &As[buf][kk][wm * WTM + i * 16], G::BM + G::PAD);
#pragma unroll
          for (int t = 0; t < fa[i].num_elements; ++t) fa[i].x[t] = wmma::__float_to_tf32(fa[i].x[t]);
        }
#pragma unroll
        for (int j = 0; j < FN; ++j) {
          wmma::load_matrix_sync(fb[j], &Bs[buf][kk][wn * WTN + j * 16], G::BN + G::PAD);
#pragma unroll
          for (int t = 0; t < fb[j].num_elements; ++t) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
        }
#pragma unroll
        for (int i = 0; i < FM; ++i)
#pragma unroll
          for (int j = 0; j < FN; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
      }
      if (more) { la.store(As[buf ^ 1], tid); lb.store(Bs[buf ^ 1], tid); }
      __syncthreads();
      buf ^= 1;
    }
  }
  lb.finish(a, n0, tid);
  float* out = a.out;
  if (E == Epi::Partial) out += std::size_t(blockIdx.z) * std::size_t(a.M) * std::size_t(a.Ncols);
  float* cw = Cs[warp];
#pragma unroll
  for (int i = 0; i < FM; ++i)
#pragma unroll
    for (int j = 0; j < FN; ++j) {
      wmma::store_matrix_sync(cw, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
#pragma unroll
      for (int e = lane; e < 256; e += 32) {
        const int m = m0 + wm * WTM + i * 16 + e / 16, n = n0 + wn * WTN + j * 16 + e % 16;
        if (m < a.M && n < a.Ncols) store_elem<E>(a, out, m, n, cw[e]);
      }
      __syncwarp();
    }
}

// ---- forward for tiny reductions (R*S*C <= 32, e.g. the 28x28x1 first layer) ------------------
// A GEMM tile would be mostly padding; instead each thread computes 4 consecutive filters of one
// output pixel directly, with w (padded to K4 columns) and b in shared memory.
__global__ void conv_fwd_small_kernel(const ConvArgs a, int K4) {
  extern __shared__ __align__(16) float sm[];
  float* ws = sm;                  // KR x K4
  float* bs = sm + a.KR * K4;      // K4
  for (int i = threadIdx.x; i < a.KR * K4; i += blockDim.x) {
    const int kk = i / K4, k = i - kk * K4;
    ws[i] = k < a.K ? a.w[kk * a.K + k] : 0.f;
  }
  for (int k = threadIdx.x; k < K4; k += blockDim.x) bs[k] = (a.b && k < a.K) ? a.b[k] : 0.f;
  __syncthreads();
  const int groups = K4 / 4;
  const long long total = (long long)a.M * groups;
  for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
       t += (long long)gridDim.x * blockDim.x) {
    const int m = int(t / groups), k = int(t - (long long)m * groups) * 4;
    const int n = m / a.PQ, pq = m - n * a.PQ, p = pq / a.Q, q = pq - p * a.Q;
    const int ih0 = p * a.sh - a.ph, iw0 = q * a.sw - a.pw;
    float acc[4] = {bs[k], bs[k + 1], bs[k + 2], bs[k + 3]};
    for (int r = 0; r < a.R; ++r) {
      const int ih = ih0 + r * a.dh;
      if (ih < 0 || ih >= a.H) continue;
      for (int s = 0; s < a.S; ++s) {
        const int iw = iw0 + s * a.dw;
        if (iw < 0 || iw >= a.W) continue;
        const float* xp = a.x + ((n * a.H + ih) * a.W + iw) * a.C;
        const float* wp = ws + (r * a.S + s) * a.C * K4 + k;
        for (int c = 0; c < a.C; ++c) {
          const float xv = xp[c];
          const float4 wv = *reinterpret_cast<const float4*>(wp + c * K4);
          acc[0] = fmaf(xv, wv.x, acc[0]); acc[1] = fmaf(xv, wv.y, acc[1]);
          acc[2] = fmaf(xv, wv.z, acc[2]); acc[3] = fmaf(xv, wv.w, acc[3]);
        }
      }
    }
    float* o = a.out + (long long)m * a.K + k;
    if (a.vec_c) {   // K % 4 == 0, y aligned
      *reinterpret_cast<float4*>(o) = make_float4(act_forward(a.act, acc[0]), act_forward(a.act, acc[1]),
                                                  act_forward(a.act, acc[2]), act_forward(a.act, acc[3]));
    } else {
      for (int e = 0; e < 4; ++e)
        if (k + e < a.K) o[e] = act_forward(a.act, acc[e]);
    }
  }
}

// dw += sum of the splits' partials, db += sum of their column sums, each in split order
// (deterministic for a given shape).
__global__ void wgrad_reduce_kernel(const float* part, const float* dbpart, int splits, int n, int K,
                                    float* dw, float* db) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    float s = 0.f;
    for (int z = 0; z < splits; ++z) s += part[std::size_t(z) * std::size_t(n) + i];
    dw[i] += s;
  }
  if (db && blockIdx.x == 0) {
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      float s = 0.f;
      for (int z = 0; z < splits; ++z) s += dbpart[std::size_t(z) * K + k];
      db[k] += s;
    }
  }
}

// ---- host helpers -----------------------------------------------------------------------------
bool aligned16(const void* p) { return p == nullptr || (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0; }

int sm_count() {
  static int cached[64] = {0};
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev >= 0 && dev < 64 && cached[dev] > 0) return cached[dev];
  int n = 0;
  check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), "cudaDeviceGetAttribute");
  if (n < 1) n = 1;
  if (dev >= 0 && dev < 64) cached[dev] = n;
  return n;
}

ConvArgs make_args(const Conv2dShape& s, Act act) {
  const index_t lim = INT_MAX;
  if (s.N * s.H * s.W * s.C > lim || s.N * s.P * s.Q * s.K > lim || s.R * s.S * s.C * s.K > lim ||
      s.N * s.P * s.Q > lim || s.R * s.S * s.K > lim)
    throw std::invalid_argument("conv2d (CUDA): tensors of more than 2^31 - 1 elements are not supported");
  if (act == Act::Softmax) throw std::invalid_argument("conv2d (CUDA): softmax is not a fused activation");
  ConvArgs a{};
  a.act = act;
  a.N = int(s.N); a.H = int(s.H); a.W = int(s.W); a.C = int(s.C); a.K = int(s.K);
  a.R = int(s.R); a.S = int(s.S); a.P = int(s.P); a.Q = int(s.Q);
  a.sh = int(s.stride_h); a.sw = int(s.stride_w); a.ph = int(s.pad_h); a.pw = int(s.pad_w);
  a.dh = int(s.dilation_h); a.dw = int(s.dilation_w);
  a.PQ = a.P * a.Q; a.HW = a.H * a.W;
  return a;
}

// Tc: the tensor-core kernel (G is then a TcCfg).
template <class G, class LA, class LB, Epi E, bool Tc>
void launch_igemm(const ConvArgs& a, int splits, cudaStream_t st, const char* name) {
  dim3 grid(unsigned(std::max<index_t>(1, ceil_div(a.M, G::BM))), unsigned(ceil_div(a.Ncols, G::BN)),
            unsigned(splits));
  if constexpr (Tc) igemm_tc_kernel<G, LA, LB, E><<<grid, G::NT, 0, st>>>(a);
  else igemm_kernel<G, LA, LB, E><<<grid, G::NT, 0, st>>>(a);
  KILNET_CHECK_LAUNCH(name);
}

template <class G, bool Tc = false>
void fwd_gemm(const ConvArgs& a, cudaStream_t st) {
  launch_igemm<G, FwdA<G>, RowB<G, false>, Epi::Forward, Tc>(a, 1, st, "conv2d_forward_igemm");
}
template <class G, bool Tc = false>
void dgrad_gemm(const ConvArgs& a, cudaStream_t st) {
  launch_igemm<G, DgradA<G>, DgradB<G>, Epi::Store, Tc>(a, 1, st, "conv2d_backward_data_igemm");
}

// Weight gradient: split the long pixel reduction so that about 4 blocks per SM run, partials
// to stream-ordered scratch, then one fixed-order reduction into dw (and db).
template <class G, bool Tc = false>
void wgrad_gemm(ConvArgs a, float* dw, float* db, cudaStream_t st) {
  const index_t tiles = std::max<index_t>(1, ceil_div(a.M, G::BM)) * ceil_div(a.Ncols, G::BN);
  const index_t steps = ceil_div(a.KR, G::BK);
  const index_t per = index_t(a.M) * a.Ncols;
  index_t splits = ceil_div(4 * index_t(sm_count()), tiles);
  splits = std::min(splits, std::max<index_t>(1, steps / 16));                 // >= 16 steps each
  splits = std::min(splits, std::max<index_t>(1, (index_t(1) << 25) / std::max<index_t>(1, per)));  // scratch <= 128 MB
  splits = std::max<index_t>(1, std::min<index_t>(splits, 65535));
  const index_t klen = ceil_div(steps, splits) * G::BK;
  splits = ceil_div(a.KR, klen);
  a.klen = int(klen);
  float* scratch = nullptr;
  const index_t nfloat = splits * per + (db ? splits * a.Ncols : 0);
  check(cudaMallocAsync(reinterpret_cast<void**>(&scratch), std::size_t(nfloat) * sizeof(float), st),
        "cudaMallocAsync (conv2d weight-gradient partials)");
  a.out = scratch;
  a.dbpart = db ? scratch + splits * per : nullptr;
  launch_igemm<G, WgradA<G>, RowB<G, true>, Epi::Partial, Tc>(a, int(splits), st, "conv2d_backward_weight_igemm");
  wgrad_reduce_kernel<<<grid_for(per, 256, 4096), 256, 0, st>>>(scratch, a.dbpart, int(splits), int(per),
                                                               a.Ncols, dw, db);
  KILNET_CHECK_LAUNCH("conv2d_backward_weight_reduce");
  check(cudaFreeAsync(scratch, st), "cudaFreeAsync (conv2d weight-gradient partials)");
}

// Keep freed scratch in the device's default pool instead of returning it to the driver at each
// synchronization (the pool's default release threshold is 0), once per device.
void keep_pool_memory() {
  static bool done[64] = {false};
  int dev = 0;
  check(cudaGetDevice(&dev), "cudaGetDevice");
  if (dev < 0 || dev >= 64 || done[dev]) return;
  cudaMemPool_t pool;
  if (cudaDeviceGetDefaultMemPool(&pool, dev) == cudaSuccess) {
    std::uint64_t threshold = UINT64_MAX;
    cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold);
  }
  cudaGetLastError();
  done[dev] = true;
}

}  // namespace

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    Act act, void* stream) {
  ConvArgs a = make_args(s, act);
  a.x = x; a.w = w; a.b = b; a.out = y;
  a.M = a.N * a.PQ; a.Ncols = a.K; a.KR = a.R * a.S * a.C;
  a.klen = a.KR;
  if (a.M == 0 || a.K == 0) return;
  cudaStream_t st = as_stream(stream);
  const int K4 = (a.K + 3) / 4 * 4;
  if (a.KR <= 32 && index_t(a.KR + 1) * K4 <= 8192) {
    a.vec_c = a.K % 4 == 0 && aligned16(y);
    const index_t total = index_t(a.M) * (K4 / 4);
    const std::size_t smem = std::size_t(a.KR + 1) * K4 * sizeof(float);
    conv_fwd_small_kernel<<<grid_for(total, 256, 65535), 256, smem, st>>>(a, K4);
    KILNET_CHECK_LAUNCH("conv2d_forward_small");
    return;
  }
  a.vec_a = a.C % 4 == 0 && aligned16(x);
  a.vec_b = a.K % 4 == 0 && aligned16(w);
  a.vec_c = a.K % 4 == 0 && aligned16(y);
  if (tf32()) {
    if (a.K > 32) fwd_gemm<TcM, true>(a, st);   // (a 128x128 tile spills at 2 blocks/SM)
    else fwd_gemm<TcN, true>(a, st);
  } else {
    if (a.K > 64) fwd_gemm<CfgL>(a, st);
    else if (a.K > 32) fwd_gemm<CfgM>(a, st);
    else fwd_gemm<CfgN>(a, st);
  }
}

void conv2d_backward(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                     float* dx, float* dw, float* db, Act act, const float* y, void* stream) {
  ConvArgs base = make_args(s, act);
  base.x = x; base.w = w; base.dy = dy; base.y = act == Act::Linear ? nullptr : y;
  if (act != Act::Linear && y == nullptr)
    throw std::invalid_argument("conv2d_backward (CUDA): a non-linear activation needs y");
  cudaStream_t st = as_stream(stream);
  const bool vy = aligned16(dy) && aligned16(base.y);

  if (dx && index_t(base.N) * base.HW * base.C > 0) {
    ConvArgs a = base;
    a.out = dx;
    a.M = a.N * a.HW; a.Ncols = a.C; a.KR = a.R * a.S * a.K;
    a.klen = a.KR;
    if (a.KR == 0) {
      check(cudaMemsetAsync(dx, 0, std::size_t(a.M) * a.C * sizeof(float), st), "cudaMemsetAsync (dx)");
    } else {
      a.vec_a = a.K % 4 == 0 && vy;
      a.vec_b = a.K % 4 == 0 && aligned16(w);
      a.vec_c = a.C % 4 == 0 && aligned16(dx);
      if (tf32()) {
        if (a.C > 32) dgrad_gemm<TcM, true>(a, st);
        else dgrad_gemm<TcN, true>(a, st);
      } else {
        if (a.C > 64) dgrad_gemm<CfgL>(a, st);
        else if (a.C > 32) dgrad_gemm<CfgM>(a, st);
        else dgrad_gemm<CfgN>(a, st);
      }
    }
  }

  // Weight (and bias) gradient: nothing to add when there are no output pixels or no filters.
  const index_t pixels = index_t(base.N) * base.PQ;
  if (pixels == 0 || base.K == 0) return;
  if (index_t(base.R) * base.S * base.C == 0 && !db) return;
  ConvArgs a = base;
  a.M = a.R * a.S * a.C; a.Ncols = a.K; a.KR = int(pixels);
  a.vec_a = a.C % 4 == 0 && aligned16(x);
  a.vec_b = a.K % 4 == 0 && vy;
  a.vec_c = a.K % 4 == 0;   // the partials: cudaMallocAsync memory, splits x RSC x K floats
  keep_pool_memory();
  const bool tc = tf32();
  if (a.K > 64 && a.M >= 128) tc ? wgrad_gemm<TcM, true>(a, dw, db, st) : wgrad_gemm<CfgL>(a, dw, db, st);
  else if (a.K > 32 && a.M >= 128) tc ? wgrad_gemm<TcM, true>(a, dw, db, st) : wgrad_gemm<CfgM>(a, dw, db, st);
  else if (a.M >= 128) tc ? wgrad_gemm<TcN, true>(a, dw, db, st) : wgrad_gemm<CfgN>(a, dw, db, st);
  else if (a.M > 16) tc ? wgrad_gemm<TcS, true>(a, dw, db, st) : wgrad_gemm<CfgS>(a, dw, db, st);
  else wgrad_gemm<CfgW>(a, dw, db, st);   // a handful of rows: memory-bound, fp32 either way
}

}  // namespace kilnet::cuda
