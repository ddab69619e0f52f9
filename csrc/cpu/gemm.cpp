// gemm.cpp — row-major SGEMM: the dispatch, the reference, and the bias gradient.
#include <algorithm>
#include <cstdlib>
#include <new>
#include "kilnet/gemm.h"
#include "gemm_internal.h"
#include "parallel.h"

namespace kilnet::cpu {

static inline float at(const float* X, index_t ld, bool trans, index_t i, index_t j) {
  return trans ? X[j * ld + i] : X[i * ld + j];
}

void gemm_ref(bool ta, bool tb, index_t M, index_t N, index_t K, float alpha, const float* A,
              index_t lda, const float* B, index_t ldb, float beta, float* C, index_t ldc,
              const float* bias) {
  for (index_t i = 0; i < M; ++i)
    for (index_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (index_t k = 0; k < K; ++k) acc += double(at(A, lda, ta, i, k)) * at(B, ldb, tb, k, j);
      double c = alpha * acc + (bias ? bias[j] : 0.f);
      if (beta != 0.f) c += double(beta) * C[i * ldc + j];
      C[i * ldc + j] = float(c);
    }
}

// ---------------------------------------------------------------------------------------------
// Fast SGEMM, BLIS style (see BLIS "Anatomy of high-performance GEMM" and salykova/matmul.c):
//
//   for jc in N step NC        B panel   KC x NC  packed, lives in L3
//     for pc in K step KC
//       pack op(B)[pc:+KC, jc:+NC]  into NR-column slivers
//       for ic in M step MC    A block   MC x KC  packed, lives in L2
//         pack op(A)[ic:+MC, pc:+KC] into MR-row slivers
//         for jr in NC step NR B sliver  KC x NR  stays in L1 while...
//           for ir in MC step MR  ...the micro-kernel sweeps the A slivers over it
//             C[ic+ir:+MR, jc+jr:+NR] = alpha * Ap·Bp + beta * C (+ bias)   (micro-kernel)
//
// Packing makes every operand layout (transposed or not) look the same to the micro-kernel, and
// zero-pads the last sliver so the micro-kernel always does full MR x NR work; it writes only
// the valid m x n corner. beta and bias apply on the first K block only; later K blocks
// accumulate onto C with beta = 1.
// Threads: C is cut into a grid of rectangles on MR/NR sliver boundaries, one per thread, and
// each thread runs the loops above on its own rectangle with its own packing buffers. No
// barriers, no shared buffers; skinny shapes are cut along their long side. Every element is
// computed by the same sequence of operations whatever the thread count.
// ---------------------------------------------------------------------------------------------
namespace {

using namespace gemm_detail;

// Cache blocking for Zen 3/4 (32 KB L1d, 512 KB-1 MB L2 per core, large shared L3), sensible on
// any recent x86: KC x NR of B = 16 KB + MR x KC of A = 6 KB stay in L1; MC x KC of A = 144 KB
// sits in half of a 512 KB L2; KC x NC of B = 4 MB per thread in L3.
constexpr index_t MC = 144;    // multiple of MR
constexpr index_t KC = 256;
constexpr index_t NC = 4096;   // multiple of NR
// Below this many flops per thread, waking a second thread costs more than it saves.
constexpr index_t kMinFlopsPerThread = index_t(1) << 18;

struct Problem {
  bool ta, tb;
  index_t M, N, K;
  float alpha, beta;
  const float *A, *B;
  index_t lda, ldb;
  float* C;
  index_t ldc;
  const float* bias;
};

inline index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }

// Packing buffer, 64-byte aligned (the micro-kernel uses aligned loads on packed B). One per
// thread (thread_local), grown on demand and freed when the thread exits.
struct AlignedBuf {
  float* p = nullptr;
  size_t n = 0;
  ~AlignedBuf() { std::free(p); }
  float* get(size_t want) {
    if (want > n) {
      std::free(p);
      p = static_cast<float*>(std::aligned_alloc(64, (want * sizeof(float) + 63) / 64 * 64));
      n = p ? want : 0;
    }
    return p;
  }
};

// op(A)[i0:i0+mc, k0:k0+kc] -> MR-row slivers: sliver s holds, for each k, the MR values
// op(A)[i0+s*MR+r, k0+k] (r = 0..MR-1), zero past row mc.
void pack_a(const Problem& p, index_t i0, index_t mc, index_t k0, index_t kc, float* dst) {
  for (index_t s = 0; s < mc; s += MR, dst += MR * kc) {
    const int m = int(std::min<index_t>(MR, mc - s));
    const index_t i = i0 + s;
    if (p.ta) {   // A stored K x M: the MR values for one k are contiguous
      for (index_t k = 0; k < kc; ++k) {
        const float* src = p.A + (k0 + k) * p.lda + i;
        for (int r = 0; r < MR; ++r) dst[k * MR + r] = r < m ? src[r] : 0.f;
      }
    } else {      // A stored M x K: interleave MR row streams
      const float* row[MR];
      for (int r = 0; r < MR; ++r) row[r] = p.A + (i + std::min(r, m - 1)) * p.lda + k0;
      for (index_t k = 0; k < kc; ++k)
        for (int r = 0; r < MR; ++r) dst[k * MR + r] = r < m ? row[r][k] : 0.f;
    }
  }
}

// op(B)[k0:k0+kc, j0:j0+nc] -> NR-column slivers: sliver s holds, for each k, the NR values
// op(B)[k0+k, j0+s*NR+c] (c = 0..NR-1), zero past column nc.
void pack_b(const Problem& p, index_t k0, index_t kc, index_t j0, index_t nc, float* dst) {
  for (index_t s = 0; s < nc; s += NR, dst += NR * kc) {
    const int n = int(std::min<index_t>(NR, nc - s));
    const index_t j = j0 + s;
    if (p.tb) {   // B stored N x K: read each column of op(B) along k, scatter into the sliver
      for (int c = 0; c < NR; ++c) {
        const float* src = p.B + (j + std::min(c, n - 1)) * p.ldb + k0;
        for (index_t k = 0; k < kc; ++k) dst[k * NR + c] = c < n ? src[k] : 0.f;
      }
    } else {      // B stored K x N: NR contiguous values per k
      for (index_t k = 0; k < kc; ++k) {
        const float* src = p.B + (k0 + k) * p.ldb + j;
        for (int c = 0; c < NR; ++c) dst[k * NR + c] = c < n ? src[c] : 0.f;
      }
    }
  }
}

// Portable micro-kernel (no AVX2): same packed layout, computed as two 6x8 halves so the
// accumulators fit in the 16 SSE registers of baseline x86-64 once the compiler vectorizes the
// inner j loop. Correct on any CPU; about a quarter of the AVX2 kernel's speed.
void ukernel_generic(index_t kc, const float* a, const float* b, float* c, index_t ldc, int m,
                     int n, const Epilogue& ep) {
  constexpr int H = 8;
  float tile[MR][NR];
  for (int h = 0; h < NR; h += H) {
    float acc[MR][H] = {};
    for (index_t k = 0; k < kc; ++k) {
      const float* ak = a + k * MR;
      const float* bk = b + k * NR + h;
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < H; ++j) acc[i][j] += ak[i] * bk[j];
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < H; ++j) tile[i][h + j] = acc[i][j];
  }
  for (int i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    for (int j = 0; j < n; ++j) {
      float v = ep.alpha * tile[i][j];
      if (ep.beta != 0.f) v += ep.beta * ci[j];
      if (ep.bias) v += ep.bias[j];
      ci[j] = v;
    }
  }
}

// The BLIS loops over C[m0:m1, n0:n1] on the calling thread. False if a buffer allocation failed.
bool gemm_rect(const Problem& p, MicroKernel uk, index_t m0, index_t m1, index_t n0, index_t n1) {
  // K blocks of equal size (<= KC) so that K = 300 is 150 + 150 rather than 256 + 44.
  const index_t kc_max = ceil_div(p.K, ceil_div(p.K, KC));
  const index_t mc_max = std::min(MC, ceil_div(m1 - m0, MR) * MR);
  const index_t nc_max = std::min(NC, ceil_div(n1 - n0, NR) * NR);
  thread_local AlignedBuf abuf, bbuf;
  float* Ap = abuf.get(size_t(mc_max * kc_max));
  float* Bp = bbuf.get(size_t(kc_max * nc_max));
  if (!Ap || !Bp) return false;

  for (index_t jc = n0; jc < n1; jc += NC) {
    const index_t nc = std::min(NC, n1 - jc);
    for (index_t pc = 0; pc < p.K; pc += kc_max) {
      const index_t kc = std::min(kc_max, p.K - pc);
      const bool first = pc == 0;   // beta and bias belong to the first K block only
      pack_b(p, pc, kc, jc, nc, Bp);
      for (index_t ic = m0; ic < m1; ic += MC) {
        const index_t mc = std::min(MC, m1 - ic);
        pack_a(p, ic, mc, pc, kc, Ap);
        for (index_t jr = 0; jr < nc; jr += NR) {
          const Epilogue ep{p.alpha, first ? p.beta : 1.f,
                            first && p.bias ? p.bias + jc + jr : nullptr};
          const int n = int(std::min<index_t>(NR, nc - jr));
          for (index_t ir = 0; ir < mc; ir += MR)
            uk(kc, Ap + ir * kc, Bp + jr * kc, p.C + (ic + ir) * p.ldc + jc + jr, p.ldc,
               int(std::min<index_t>(MR, mc - ir)), n, ep);
        }
      }
    }
  }
  return true;
}

// Thread t's rectangle when C is cut into a tm x tn grid, tm * tn = nt, in whole slivers.
// The grid minimises the busiest thread's estimated time: its micro-tiles (MR*NR FMAs per k)
// plus the rows of A and columns of B it packs (copying one element costs about as much as 8
// FMA lanes). So a 32 x 21632 C is cut into column strips and a 21632 x 10 C into row strips.
struct Rect { index_t m0, m1, n0, n1; };

Rect thread_rect(index_t M, index_t N, int nt, int t) {
  const index_t sm = ceil_div(M, MR), sn = ceil_div(N, NR);   // slivers along each side
  int best_tm = 1;
  double best = -1;
  for (int tm = 1; tm <= nt; ++tm) {
    if (nt % tm) continue;
    const int tn = nt / tm;
    const index_t rm = ceil_div(sm, tm), rn = ceil_div(sn, tn);
    const double cost = double(rm * rn) * MR * NR + double(rm * MR + rn * NR) * 8;
    if (best < 0 || cost < best) best = cost, best_tm = tm;
  }
  const int tm = best_tm, tn = nt / tm, ti = t / tn, tj = t % tn;
  auto cut = [](index_t slivers, int parts, int i, index_t width, index_t total) {
    return std::min(total, slivers * i / parts * width);
  };
  return {cut(sm, tm, ti, MR, M), cut(sm, tm, ti + 1, MR, M),
          cut(sn, tn, tj, NR, N), cut(sn, tn, tj + 1, NR, N)};
}

}  // namespace

void gemm(bool ta, bool tb, index_t M, index_t N, index_t K, float alpha, const float* A,
          index_t lda, const float* B, index_t ldb, float beta, float* C, index_t ldc,
          const float* bias) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {   // no product: C = beta*C + bias (beta == 0: C not read)
    for (index_t i = 0; i < M; ++i)
      for (index_t j = 0; j < N; ++j) {
        float* c = C + i * ldc + j;
        *c = (beta != 0.f ? beta * *c : 0.f) + (bias ? bias[j] : 0.f);
      }
    return;
  }
  const Problem p{ta, tb, M, N, K, alpha, beta, A, B, lda, ldb, C, ldc, bias};
#if defined(KILNET_HAVE_AVX2_BUILD)
  const MicroKernel uk = use_avx2() ? ukernel_6x16_avx2 : ukernel_generic;
#else
  const MicroKernel uk = ukernel_generic;
#endif
  const index_t flops = 2 * M * N * K;
  const index_t tiles = ceil_div(M, MR) * ceil_div(N, NR);
  const int nt = int(std::min<index_t>({index_t(omp_get_max_threads()),
                                        std::max<index_t>(1, flops / kMinFlopsPerThread), tiles}));
  if (nt <= 1) {
    if (!gemm_rect(p, uk, 0, M, 0, N)) throw std::bad_alloc();
    return;
  }
  bool failed = false;
#pragma omp parallel num_threads(nt)
  {
    // The team may be smaller than asked (e.g. when called from inside a parallel region).
    const Rect r = thread_rect(M, N, omp_get_num_threads(), omp_get_thread_num());
    if (r.m0 < r.m1 && r.n0 < r.n1 && !gemm_rect(p, uk, r.m0, r.m1, r.n0, r.n1)) {
#pragma omp atomic write
      failed = true;
    }
  }
  if (failed) throw std::bad_alloc();
}

void bias_backward(index_t M, index_t N, const float* dy, float* db) {
  // Rows are summed in a fixed order so the result does not depend on the thread count.
#pragma omp parallel for num_threads(threads_for(M * N)) schedule(static)
  for (index_t j0 = 0; j0 < N; j0 += 64) {
    const index_t j1 = std::min(N, j0 + 64);
    for (index_t i = 0; i < M; ++i)
      for (index_t j = j0; j < j1; ++j) db[j] += dy[i * N + j];
  }
}

void bias_backward_ref(index_t M, index_t N, const float* dy, float* db) {
  for (index_t j = 0; j < N; ++j) {
    double s = 0.0;
    for (index_t i = 0; i < M; ++i) s += dy[i * N + j];
    db[j] += float(s);
  }
}

}  // namespace kilnet::cpu
