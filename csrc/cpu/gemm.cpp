// gemm.cpp — row-major SGEMM: the dispatch, the reference, and the bias gradient.
#include <algorithm>
#include <vector>
#include <cstdlib>
#include <cstring>
#if defined(__unix__)
#include <unistd.h>   // sysconf: the L2 size
#endif

#include <new>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include "kilnet/gemm.h"
#include "gemm_internal.h"
#include "gemm_prefetch.h"
#include "parallel.h"

namespace kilnet::cpu {

#if defined(KILNET_HAVE_AVX512_BUILD)
namespace avx512 {   // gemm_narrow_avx512.cpp
void gemm_narrow(bool ta, index_t i0, index_t i1, index_t N, index_t K, const float* A, index_t lda, const float* B,
                 index_t ldb, float* C, index_t ldc, bool accumulate);
}  // namespace avx512
#endif

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
// (With a thin K the whole B panel fits in L2 and the last two loops swap; see gemm_rect.)
// The innermost loop is inside the micro-kernel: one call runs a whole column of tiles (one B
// sliver under every A sliver) or, in the swapped order, a whole row (one A sliver over every
// B sliver), so its setup is paid once per run, which matters when K is 9 or 10. A transposed
// B is packed through 8x8 AVX2 transposes (pack_bt_16_avx2).
// Packing makes every operand layout (transposed or not) look the same to the micro-kernel, and
// zero-pads the last sliver so the micro-kernel always does full MR x NR work; it writes only
// the valid m x n corner. When the B panel is narrow (N <= 128, as in Dense layers) each A sliver
// is used by few micro-kernel calls, so the micro-kernel reads op(A) in place instead (BLIS
// "sup" style): it takes A through a row and a column stride. beta and bias apply on the first
// K block only; later K blocks accumulate onto C with beta = 1.
// Memory: the micro-kernel prefetches, one line every 4 k steps, what the next block will read
// (gemm_prefetch.h); in the BLIS order the first A block packs each B sliver just before its
// sweep (from lines prefetched during the previous sweep) rather than the panel in one pass.
// Threads: C is cut into a grid of rectangles on MR/NR sliver boundaries, one per thread, and
// each thread runs the loops above on its own rectangle with its own packing buffers. No
// barriers, no shared buffers; skinny shapes are cut along their long side, except a tiny C with
// a long K (gemm_split_k), whose K is cut into fixed chunks. Every element is computed by the
// same sequence of operations whatever the thread count.
// ---------------------------------------------------------------------------------------------
namespace {

using namespace gemm_detail;

// Cache blocking for Zen 3/4 (32 KB L1d, 512 KB-1 MB L2 per core, large shared L3), sensible on
// any recent x86: the KC x NR sliver of B (24 KB) and MR x KC of A (9 KB) about fill L1;
// MC x KC of A = 216 KB stays in L2 (under half of a 512 KB one); KC x NC of B = 6 MB per
// thread in L3. Measured on Zen 4, MC 96..240 x KC 256..512 are within 3% of each other;
// KC = 384 was ahead by 1-2% on every shape tried (fewer passes over C).
constexpr index_t MC = 144;    // multiple of MR
constexpr index_t KC = 384;
constexpr index_t NC = 4096;   // multiple of NR
// Pack A only when more than 8 slivers of B reuse each A sliver; below that the copy costs more
// than reading op(A) in place (measured: 196x64x288 runs 20% faster unpacked, 1024x128x1024 3%).
constexpr index_t kPackAMinSlivers = 8;
// A packed B panel of at most this many floats (256 KB) stays in L2 (see gemm_rect); the
// AVX-512 spec sizes its own from the machine's L2.
constexpr index_t kSmallPanel = 64 * 1024;
// Below this many flops per thread, waking a second thread costs more than it saves.
constexpr index_t kMinFlopsPerThread = index_t(1) << 17;

struct Problem {
  bool ta, tb;
  index_t M, N, K;
  float alpha, beta;
  const float *A, *B;
  index_t lda, ldb;
  float* C;
  index_t ldc;
  const float* bias;
  const KernelSpec* ks;   // the micro-kernel, its blocking and packers
  float* colsum;          // += op(B)'s column sums from the packing (B not transposed), or null
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
  const int mr = p.ks->mr;
  for (index_t s = 0; s < mc; s += mr, dst += mr * kc) {
    const index_t i = i0 + s;
    // op(A)(i+r, k0+k) = A[(i+r)*lda + k0+k], or A[(k0+k)*lda + i+r] when transposed.
    const index_t rs = p.ta ? 1 : p.lda, cs = p.ta ? p.lda : 1;
    const float* src = p.A + i * rs + k0 * cs;
    if (p.ks->pack_a) {
      p.ks->pack_a(src, rs, cs, int(std::min<index_t>(mr, mc - s)), kc, dst);
      continue;
    }
    if (mr != MR || mc - s < MR) {   // partial sliver (or another block): zero-pad the missing rows
      const int m = int(std::min<index_t>(mr, mc - s));
      std::fill(dst, dst + mr * kc, 0.f);
      for (int r = 0; r < m; ++r)
        for (index_t k = 0; k < kc; ++k) dst[k * mr + r] = src[r * rs + k * cs];
    } else if (p.ta) {   // the MR values of one k are contiguous: short copies
      for (index_t k = 0; k < kc; ++k)
        for (int r = 0; r < MR; ++r) dst[k * MR + r] = src[k * cs + r];
    } else {             // MR row streams, interleaved: a transpose
      index_t k = 0;
#if defined(__SSE2__)
      static_assert(MR == 6, "the SSE path below packs 6 rows");
      for (; k + 4 <= kc; k += 4) {   // 6 rows x 4 k per step: one 4x4 transpose + 2 pairs
        __m128 r0 = _mm_loadu_ps(src + 0 * rs + k), r1 = _mm_loadu_ps(src + 1 * rs + k);
        __m128 r2 = _mm_loadu_ps(src + 2 * rs + k), r3 = _mm_loadu_ps(src + 3 * rs + k);
        const __m128 r4 = _mm_loadu_ps(src + 4 * rs + k), r5 = _mm_loadu_ps(src + 5 * rs + k);
        _MM_TRANSPOSE4_PS(r0, r1, r2, r3);   // r_q = rows 0..3 at k+q
        const __m128 lo = _mm_unpacklo_ps(r4, r5), hi = _mm_unpackhi_ps(r4, r5);
        float* d = dst + k * MR;
        _mm_storeu_ps(d + 0, r0);  _mm_storel_pi(reinterpret_cast<__m64*>(d + 4), lo);
        _mm_storeu_ps(d + 6, r1);  _mm_storeh_pi(reinterpret_cast<__m64*>(d + 10), lo);
        _mm_storeu_ps(d + 12, r2); _mm_storel_pi(reinterpret_cast<__m64*>(d + 16), hi);
        _mm_storeu_ps(d + 18, r3); _mm_storeh_pi(reinterpret_cast<__m64*>(d + 22), hi);
      }
#endif
      for (; k < kc; ++k)
        for (int r = 0; r < MR; ++r) dst[k * MR + r] = src[r * rs + k];
    }
  }
}

// colsum[0:n] += the sums over k of a packed sliver's columns (kc rows of NRV values, just
// written: in L1), in k order.
template <int NRV>
void sum_sliver(const float* src, index_t kc, int n, float* colsum) {
  float acc[NRV] = {};
  for (index_t k = 0; k < kc; ++k)
    for (int c = 0; c < NRV; ++c) acc[c] += src[k * NRV + c];
  for (int c = 0; c < n; ++c) colsum[c] += acc[c];
}

// op(B)[k0:k0+kc, j0:j0+nc] -> NR-column slivers: sliver s holds, for each k, the NR values
// op(B)[k0+k, j0+s*NR+c] (c = 0..NR-1), zero past column nc. With `sum`, p.colsum[j0:j0+nc]
// += the block's column sums.
void pack_b_slivers(const Problem& p, index_t k0, index_t kc, index_t j0, index_t nc, float* dst);
void pack_b(const Problem& p, index_t k0, index_t kc, index_t j0, index_t nc, float* dst, bool sum) {
  pack_b_slivers(p, k0, kc, j0, nc, dst);
  if (!sum) return;
  const int nr = p.ks->nr;
  for (index_t s = 0; s < nc; s += nr, dst += nr * kc) {
    const int n = int(std::min<index_t>(nr, nc - s));
    float* cs = p.colsum + j0 + s;
    if (nr == 16) sum_sliver<16>(dst, kc, n, cs);
    else if (nr == 32) sum_sliver<32>(dst, kc, n, cs);
    else
      for (int c = 0; c < n; ++c) {
        float acc = 0.f;
        for (index_t k = 0; k < kc; ++k) acc += dst[k * nr + c];
        cs[c] += acc;
      }
  }
}

void pack_b_slivers(const Problem& p, index_t k0, index_t kc, index_t j0, index_t nc, float* dst) {
  const int nr = p.ks->nr;
  for (index_t s = 0; s < nc; s += nr, dst += nr * kc) {
    const index_t j = j0 + s;
    // op(B)(k0+k, j+c) = B[(k0+k)*ldb + j+c], or B[(j+c)*ldb + k0+k] when transposed.
    const index_t rs = p.tb ? 1 : p.ldb, cs = p.tb ? p.ldb : 1;
    const float* src = p.B + k0 * rs + j * cs;
    const int n = int(std::min<index_t>(nr, nc - s));
    if (p.ks->pack_b) {
      p.ks->pack_b(src, rs, cs, n, kc, dst);
      continue;
    }
    if (nr != NR) {   // another block width, no packer of its own: plain loops
      std::fill(dst, dst + nr * kc, 0.f);
      for (index_t k = 0; k < kc; ++k)
        for (int c = 0; c < n; ++c) dst[k * nr + c] = src[k * rs + c * cs];
      continue;
    }
    if (n < NR) std::fill(dst, dst + NR * kc, 0.f);   // last, partial sliver: zero-pad
    if (p.tb && n == NR && p.ks->pack_bt) {
      p.ks->pack_bt(src, cs, kc, dst);
    } else if (p.tb) {   // a transpose: columns of op(B) are contiguous along k
      index_t k = 0;
#if defined(__SSE2__)
      if (n == NR)   // 4x4 blocks through SSE registers (baseline on x86-64)
        for (; k + 4 <= kc; k += 4)
          for (int c = 0; c < NR; c += 4) {
            __m128 r0 = _mm_loadu_ps(src + (c + 0) * cs + k), r1 = _mm_loadu_ps(src + (c + 1) * cs + k);
            __m128 r2 = _mm_loadu_ps(src + (c + 2) * cs + k), r3 = _mm_loadu_ps(src + (c + 3) * cs + k);
            _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
            _mm_store_ps(dst + (k + 0) * NR + c, r0);
            _mm_store_ps(dst + (k + 1) * NR + c, r1);
            _mm_store_ps(dst + (k + 2) * NR + c, r2);
            _mm_store_ps(dst + (k + 3) * NR + c, r3);
          }
#endif
      for (int c = 0; c < n; ++c)
        for (index_t kk = k; kk < kc; ++kk) dst[kk * NR + c] = src[c * cs + kk];
    } else if (n == NR) {   // NR contiguous values per k
      for (index_t k = 0; k < kc; ++k)
        for (int c = 0; c < NR; ++c) dst[k * NR + c] = src[k * rs + c];
    } else {
      for (index_t k = 0; k < kc; ++k)
        for (int c = 0; c < n; ++c) dst[k * NR + c] = src[k * rs + c];
    }
  }
}

// Portable micro-kernel (no AVX2): same packed layout, computed as two 6x8 halves so the 12
// accumulator vectors of 4 floats fit the 16 SSE registers of baseline x86-64. GCC/Clang vector
// types (not intrinsics) keep it portable to any target; elsewhere it is plain scalar code.
#if defined(__GNUC__)
typedef float v4 __attribute__((vector_size(16)));
#endif

void tile_generic(index_t kc, const float* a, index_t rs_a, index_t cs_a, const float* b,
                  float* c, index_t ldc, int m, int n, const Epilogue& ep) {
  index_t o[MR];   // row offsets into A; rows past m repeat row m-1 (never out of bounds)
  for (int r = 0; r < MR; ++r) o[r] = (r < m ? r : m - 1) * rs_a;
  alignas(16) float tile[MR][NR];
  for (int h = 0; h < NR; h += 8) {
#if defined(__GNUC__)
    v4 acc[MR][2] = {};
    for (index_t k = 0; k < kc; ++k) {
      v4 b0, b1;
      __builtin_memcpy(&b0, b + k * NR + h, sizeof b0);
      __builtin_memcpy(&b1, b + k * NR + h + 4, sizeof b1);
      const float* ak = a + k * cs_a;
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        acc[i][0] += ak[o[i]] * b0;
        acc[i][1] += ak[o[i]] * b1;
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < 8; ++j) tile[i][h + j] = acc[i][j / 4][j % 4];
#else
    float acc[MR][8] = {};
    for (index_t k = 0; k < kc; ++k)
      for (int i = 0; i < MR; ++i)
        for (int j = 0; j < 8; ++j) acc[i][j] += a[k * cs_a + o[i]] * b[k * NR + h + j];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < 8; ++j) tile[i][h + j] = acc[i][j];
#endif
  }
  for (int i = 0; i < m; ++i) {
    float* ci = c + i * ldc;
    for (int j = 0; j < n; ++j) {
      float v = ep.alpha * tile[i][j] + (ep.bias ? ep.bias[j] : 0.f);
      if (ep.beta != 0.f) v += ep.beta * ci[j];
      ci[j] = v;
    }
  }
}

void ukernel_generic(index_t kc, const float* a, index_t rs_a, index_t cs_a, const float* b,
                     float* c, index_t ldc, int m, int n, const Epilogue& ep, const Sweep& sw) {
  for (index_t t = 0; t < sw.count; ++t) {
    const Epilogue et{ep.alpha, ep.beta, ep.bias ? ep.bias + t * sw.bias_step : nullptr};
    tile_generic(kc, a + t * sw.a_step, rs_a, cs_a, b + t * sw.b_step, c + t * sw.c_step, ldc, m,
                 n, et);
  }
}

// The bytes of op(A)[i0:i0+mc, k0:k0+kc] and op(B)[k0:k0+kc, j0:j0+nc] as rows of memory.
PrefetchRegion a_region(const Problem& p, index_t i0, index_t mc, index_t k0, index_t kc) {
  const char* base = reinterpret_cast<const char*>(p.ta ? p.A + k0 * p.lda + i0 : p.A + i0 * p.lda + k0);
  const index_t stride = p.lda * index_t(sizeof(float));
  return p.ta ? PrefetchRegion{base, mc * index_t(sizeof(float)), stride, kc}
              : PrefetchRegion{base, kc * index_t(sizeof(float)), stride, mc};
}
PrefetchRegion b_region(const Problem& p, index_t k0, index_t kc, index_t j0, index_t nc) {
  const char* base = reinterpret_cast<const char*>(p.tb ? p.B + j0 * p.ldb + k0 : p.B + k0 * p.ldb + j0);
  const index_t stride = p.ldb * index_t(sizeof(float));
  return p.tb ? PrefetchRegion{base, kc * index_t(sizeof(float)), stride, nc}
              : PrefetchRegion{base, nc * index_t(sizeof(float)), stride, kc};
}
constexpr PrefetchRegion kNoRegion{nullptr, 0, 0, 0};
// Rows [rows*i/n, rows*(i+1)/n) of r: its i-th of n slices.
PrefetchRegion slice(const PrefetchRegion& r, index_t i, index_t n) {
  const index_t a = r.rows * i / n, b = r.rows * (i + 1) / n;
  return PrefetchRegion{r.start + a * r.stride, r.bytes, r.stride, b - a};
}
// Operands of fewer floats than this are taken to be in cache: no prefetch stream.
constexpr index_t kPrefetchMinFloats = 64 * 1024;

// The BLIS loops over C[m0:m1, n0:n1] on the calling thread. False if a buffer allocation failed.
bool gemm_rect(const Problem& p, index_t m0, index_t m1, index_t n0, index_t n1) {
  const KernelSpec& ks = *p.ks;
  const MicroKernel uk = ks.uk;
  const index_t MR = ks.mr, NR = ks.nr, MC = ks.mc, KC = ks.kc, NC = ks.nc;
  // K blocks of equal size (<= KC) so that K = 400 is 200 + 200 rather than 384 + 16.
  const index_t kc_max = ceil_div(p.K, ceil_div(p.K, KC));
  const index_t mc_max = std::min(MC, ceil_div(m1 - m0, MR) * MR);
  const index_t nc_max = std::min(NC, ceil_div(n1 - n0, NR) * NR);
  thread_local AlignedBuf abuf, bbuf;
  float* Ap = abuf.get(size_t(mc_max * kc_max));
  float* Bp = bbuf.get(size_t(kc_max * nc_max));
  if (!Ap || !Bp) return false;
  // While one block's micro-kernels run they prefetch what the next block reads: the next A
  // block, or at the last one the next K block's B panel and first A block.
  Prefetch pf{};
  Prefetch* const pfp = (m1 - m0) * p.K + p.K * (n1 - n0) >= kPrefetchMinFloats ? &pf : nullptr;
  const index_t mc0 = std::min(MC, m1 - m0);   // the first (largest) A block's rows
  // The BLIS order (below) for a K block of kc and a panel of nc columns: its first A block
  // packs the B slivers one by one, each just before its sweep, from lines prefetched during
  // the sweep before; the panel is not read from memory in one pass the FMAs wait for (128 x
  // 512 x 4096 with B = dz, 8 MB: that pass was 16% of the call).
  auto lazy_b = [&](index_t kc, index_t nc) { return !(kc * nc <= ks.small_panel && nc / NR >= mc0 / MR); };

  for (index_t jc = n0; jc < n1; jc += NC) {
    const index_t nc = std::min(NC, n1 - jc);
    for (index_t pc = 0; pc < p.K; pc += kc_max) {
      const index_t kc = std::min(kc_max, p.K - pc);
      const bool first = pc == 0;   // beta and bias belong to the first K block only
      const bool sum = p.colsum && m0 == 0;   // one row of threads sums the columns
      const bool lazy = lazy_b(kc, nc);
      if (!lazy) pack_b(p, pc, kc, jc, nc, Bp, sum);
      for (index_t ic = m0; ic < m1; ic += MC) {
        const index_t mc = std::min(MC, m1 - ic);
        // What the next block reads (B panels packed lazily prefetch their own slivers).
        PrefetchRegion next_b = kNoRegion, next_a = kNoRegion, next_sliver = kNoRegion;
        if (pfp) {
          if (ic + MC < m1) {
            next_a = a_region(p, ic + MC, std::min(MC, m1 - ic - MC), pc, kc);
          } else if (pc + kc < p.K || jc + NC < n1) {
            const bool same = pc + kc < p.K;
            const index_t k0 = same ? pc + kc : 0, j0 = same ? jc : jc + NC;
            const index_t k2 = std::min(kc_max, p.K - k0), n2 = same ? nc : std::min(NC, n1 - j0);
            if (lazy_b(k2, n2)) next_sliver = b_region(p, k0, k2, j0, std::min(NR, n2));
            else next_b = b_region(p, k0, k2, j0, n2);
            next_a = a_region(p, m0, mc0, k0, k2);
          }
        }
        const bool packing = lazy && ic == m0;   // this block packs the B slivers as it goes
        if (pfp) {
          if (packing) pf.p = nullptr;   // set per sliver below
          else prefetch_start(pf, next_sliver, next_b, next_a);
        }
        // Pack A only if many B slivers reuse it; else the micro-kernel reads op(A) in place.
        const bool pack = nc > kPackAMinSlivers * NR;
        if (pack) pack_a(p, ic, mc, pc, kc, Ap);
        // Row stride of op(A) in place; the kernel's strides of the A sliver.
        const index_t rs_in = p.ta ? 1 : p.lda;
        const index_t rs = pack ? 1 : rs_in, cs = pack ? MR : (p.ta ? p.lda : 1);
        auto a_at = [&](index_t ir) {   // the A sliver of rows ic+ir..
          return pack ? Ap + ir * kc
                      : p.A + (p.ta ? pc * p.lda + ic + ir : (ic + ir) * p.lda + pc);
        };
        auto ep_at = [&](index_t jr) {   // beta and bias belong to the first K block only
          return Epilogue{p.alpha, first ? p.beta : 1.f, first && p.bias ? p.bias + jc + jr : nullptr};
        };
        float* const cb = p.C + ic * p.ldc + jc;   // this block's corner of C
        // One row of tiles: the A sliver at ir under every B sliver (full-width tiles in one
        // kernel call, then the narrow last one).
        auto row_sweep = [&](index_t ir) {
          const int m = int(std::min<index_t>(MR, mc - ir));
          const index_t full = nc / NR, tail = nc % NR;
          if (full)
            uk(kc, a_at(ir), rs, cs, Bp, cb + ir * p.ldc, p.ldc, m, NR, ep_at(0),
               Sweep{full, 0, NR * kc, NR, NR, pfp});
          if (tail)
            uk(kc, a_at(ir), rs, cs, Bp + full * NR * kc, cb + ir * p.ldc + full * NR, p.ldc, m,
               int(tail), ep_at(full * NR), Sweep{1, 0, 0, 0, 0, pfp});
        };
        // One column of tiles: the B sliver at jr under every A sliver (full-height tiles in one
        // call, then the short last one).
        auto col_sweep = [&](index_t jr) {
          const int n = int(std::min<index_t>(NR, nc - jr));
          const index_t full = mc / MR, tail = mc % MR;
          const Epilogue ep = ep_at(jr);
          if (full)
            uk(kc, a_at(0), rs, cs, Bp + jr * kc, cb + jr, p.ldc, MR, n, ep,
               Sweep{full, pack ? MR * kc : MR * rs_in, 0, MR * p.ldc, 0, pfp});
          if (tail)
            uk(kc, a_at(full * MR), rs, cs, Bp + jr * kc, cb + full * MR * p.ldc + jr, p.ldc,
               int(tail), n, ep, Sweep{1, 0, 0, 0, 0, pfp});
        };
        if (kc * nc <= ks.small_panel && nc / NR >= mc / MR) {
          // Thin K and a wide block: the whole B panel sits in L2, so sweep it under one A
          // sliver at a time; C is then written along MR rows at once instead of MC rows (fewer
          // write streams), and each kernel call runs many tiles.
          for (index_t ir = 0; ir < mc; ir += MR) row_sweep(ir);
        } else if (!packing) {   // BLIS order: the B sliver stays in L1 while the A slivers pass over it
          for (index_t jr = 0; jr < nc; jr += NR) col_sweep(jr);
        } else {
          const index_t slivers = ceil_div(nc, NR);
          for (index_t jr = 0, i = 0; jr < nc; jr += NR, ++i) {
            pack_b(p, pc, kc, jc + jr, std::min(NR, nc - jr), Bp + jr * kc, sum);
            if (pfp) {   // the next sliver's lines, then a share of the next block's
              const PrefetchRegion sl = jr + NR < nc ? b_region(p, pc, kc, jc + jr + NR, std::min(NR, nc - jr - NR))
                                                     : next_sliver;
              prefetch_start(pf, sl, slice(next_b, i, slivers), slice(next_a, i, slivers));
            }
            col_sweep(jr);
          }
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

Rect thread_rect(index_t M, index_t N, index_t MR, index_t NR, int nt, int t) {
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

// A tiny C with a long K (the Dense layer's forward: 32 x 10 from K = 21632). Cutting C between
// threads would make every thread read all of op(B), the weights: each core then holds a copy
// of lines that the optimizer, working on its own half of the parameter buffer, writes next,
// and with two threads the Adam step that follows ran 2.5x slower than alone. So K is cut
// instead, into kSplitKChunks fixed chunks (a function of K alone, never of the thread count):
// thread t computes the partial products of its chunks, which the weights' rows in its half of
// the buffer feed, and the partials are added in chunk order, so the result is the same for
// any thread count.
constexpr index_t kSplitKMaxC = 1024, kSplitKMinK = 8192, kSplitKChunks = 16;

// Products with <= 16 columns, B not transposed, alpha 1, beta 0 or 1, no bias, on AVX-512:
// gemm_narrow_avx512.cpp, with gemm_rect's K blocks (each summed from zero, then added to C), so
// the same bits as gemm_rect.
bool narrow_fits(const Problem& p) {
#if defined(KILNET_HAVE_AVX512_BUILD)
  return use_avx512() && p.N <= 16 && !p.tb && p.alpha == 1.f && (p.beta == 0.f || p.beta == 1.f) && !p.bias;
#else
  (void)p;
  return false;
#endif
}

void gemm_narrow_rows(const Problem& p, index_t i0, index_t i1) {
#if defined(KILNET_HAVE_AVX512_BUILD)
  const index_t kc_max = ceil_div(p.K, ceil_div(p.K, p.ks->kc));
  for (index_t pc = 0; pc < p.K; pc += kc_max) {
    const index_t kc = std::min(kc_max, p.K - pc);
    const float* a = p.ta ? p.A + pc * p.lda : p.A + pc;   // op(A) columns pc..
    avx512::gemm_narrow(p.ta, i0, i1, p.N, kc, a, p.lda, p.B + pc * p.ldb, p.ldb, p.C, p.ldc,
                        pc > 0 || p.beta == 1.f);
  }
#else
  (void)p, (void)i0, (void)i1;
#endif
}

void gemm_split_k(const Problem& p) {
  const index_t MN = p.M * p.N;
  // The partials (at most 16 x 1024 floats) live in a buffer the calling thread keeps, so the
  // Dense forward of every training step allocates nothing.
  thread_local std::vector<float> part;
  part.resize(size_t(kSplitKChunks * MN));
  float* const buf = part.data();   // the workers use this pointer: their own `part` is another
  bool failed = false;
  const int nt = int(std::min<index_t>(omp_get_max_threads(), kSplitKChunks));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (index_t c = 0; c < kSplitKChunks; ++c) {
    const index_t k0 = p.K * c / kSplitKChunks, k1 = p.K * (c + 1) / kSplitKChunks;
    Problem q = p;
    q.K = k1 - k0;
    q.A = p.ta ? p.A + k0 * p.lda : p.A + k0;     // op(A) columns k0..k1
    q.B = p.tb ? p.B + k0 : p.B + k0 * p.ldb;     // op(B) rows k0..k1
    q.beta = 0.f;
    q.C = buf + c * MN;
    q.ldc = p.N;
    q.bias = nullptr;
    if (narrow_fits(q)) {   // (the chunk's B, kc x N, stays in L2 for the few rows of C)
      gemm_narrow_rows(q, 0, p.M);
      continue;
    }
    if (!gemm_rect(q, 0, p.M, 0, p.N)) {
#pragma omp atomic write
      failed = true;
    }
  }
  if (failed) throw std::bad_alloc();
  for (index_t i = 0; i < p.M; ++i)
    for (index_t j = 0; j < p.N; ++j) {
      float sum = 0.f;
      for (index_t c = 0; c < kSplitKChunks; ++c) sum += buf[c * MN + i * p.N + j];
      float* cij = p.C + i * p.ldc + j;
      *cij = (p.beta != 0.f ? p.beta * *cij : 0.f) + sum + (p.bias ? p.bias[j] : 0.f);
    }
}

// The micro-kernel for this machine and shape. The AVX-512 kernel is 32 columns wide: for N <= 16
// (a Dense layer of 10 units) half its lanes would compute padding, so the 16-wide AVX2 kernel
// does those (same FMAs per useful column, a third of the B packing).
const KernelSpec kGeneric{MR, NR, MC, KC, NC, kSmallPanel, ukernel_generic, nullptr, nullptr, nullptr};
#if defined(KILNET_HAVE_AVX2_BUILD)
const KernelSpec kAvx2{MR, NR, MC, KC, NC, kSmallPanel, ukernel_6x16_avx2, pack_bt_16_avx2, nullptr,
                       nullptr};
#endif
#if defined(KILNET_HAVE_AVX512_BUILD)
// 12x32 tiles, KC = 256: the A sliver (12 KB) sits in L1 while the micro-kernel sweeps it along
// the B panel, which is sized to half the core's L2 (1 MB on Sapphire Rapids, 512 KB on
// Skylake-SP and Zen 4) so it is always read from L2: NC = L2 / 2 / (KC * 4 bytes).
// Measured on a Sapphire Rapids core (2 MB L2): this row order at NC = 1024 ran 1024^3 at 209
// GFLOP/s and 2048^3 at 204, against 196 and 191 for the BLIS order (the B sliver in L1, A
// slivers streaming) with NC = 4096; MC 96..288 and KC 256..384 within 2%, KC 128 or 192 4-10%
// slower; 2 MB pages for the B panel no faster. op(A) is read in place for narrow panels as in
// the AVX2 kernel (at 256^3 in place ran as fast as packed).
KernelSpec avx512_spec() {
  constexpr index_t kc = 256;
  index_t l2 = 0;
#if defined(__unix__) && defined(_SC_LEVEL2_CACHE_SIZE)
  l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
  if (l2 < (index_t(256) << 10) || l2 > (index_t(64) << 20)) l2 = index_t(1) << 20;   // unknown: 1 MB
  const index_t nc = std::clamp<index_t>(l2 / 2 / (kc * index_t(sizeof(float))) / NR512 * NR512, 256, 4096);
  return KernelSpec{MR512, NR512, 12 * MR512, kc, nc, kc * nc, ukernel_12x32_avx512, nullptr,
                    pack_a_12_avx512, pack_b_32_avx512};
}
#endif

// On a CPU that splits 512-bit FMAs (Zen 4) the AVX2 kernel runs: same flops per cycle, and
// measured faster there (interleaved rounds, 1 thread, GFLOP/s, 12x32 AVX-512 vs 6x16 AVX2:
// 512³ 104 vs 108, 1024³ 100 vs 107, 2048³ 100 vs 108; no shape of benchmarks/bench_gemm.py
// slower by more than 3%, 2 threads alike; other AVX-512 blockings (KC 384-512, NC 2048-4096)
// closed the gap at 2048³ only).
// KILNET_GEMM=avx512 keeps the AVX-512 kernel there (the tests reach it on such a CPU this way).
bool avx512_preferred() {
  static const bool yes = use_avx512() && (!splits_512bit() || [] {
    const char* force = std::getenv("KILNET_GEMM");
    return force && std::strcmp(force, "avx512") == 0;
  }());
  return yes;
}

bool gemm_uses_avx512(index_t N) { return avx512_preferred() && N > NR; }

const KernelSpec& kernel_for(index_t N) {
#if defined(KILNET_HAVE_AVX512_BUILD)
  static const KernelSpec kAvx512 = avx512_spec();   // thread-safe static init
  if (gemm_uses_avx512(N)) return kAvx512;
#endif
#if defined(KILNET_HAVE_AVX2_BUILD)
  if (use_avx2()) return kAvx2;
#endif
  (void)N;
  return kGeneric;
}

}  // namespace

const char* gemm_kernel() {
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (gemm_uses_avx512(NR + 1)) return "avx512 12x32";
#endif
  return use_avx2() ? "avx2 6x16" : "portable";
}

// colsum[j] += sum over k of op(B)(k, j), in k order (where the packing does not give them).
void column_sums(bool tb, index_t N, index_t K, const float* B, index_t ldb, float* colsum) {
  if (tb) {
    for (index_t j = 0; j < N; ++j) {
      float acc = 0.f;
      for (index_t k = 0; k < K; ++k) acc += B[j * ldb + k];
      colsum[j] += acc;
    }
    return;
  }
  std::vector<float> acc(size_t(N), 0.f);
  for (index_t k = 0; k < K; ++k)
    for (index_t j = 0; j < N; ++j) acc[size_t(j)] += B[k * ldb + j];
  for (index_t j = 0; j < N; ++j) colsum[j] += acc[size_t(j)];
}

void gemm(bool ta, bool tb, index_t M, index_t N, index_t K, float alpha, const float* A,
          index_t lda, const float* B, index_t ldb, float beta, float* C, index_t ldc,
          const float* bias, float* colsum) {
  if (M <= 0 || N <= 0) {
    if (colsum && N > 0 && K > 0) column_sums(tb, N, K, B, ldb, colsum);
    return;
  }
  if (K <= 0) {   // no product: C = beta*C + bias (beta == 0: C not read)
    for (index_t i = 0; i < M; ++i)
      for (index_t j = 0; j < N; ++j) {
        float* c = C + i * ldc + j;
        *c = (beta != 0.f ? beta * *c : 0.f) + (bias ? bias[j] : 0.f);
      }
    return;
  }
  const KernelSpec& ks = kernel_for(N);
  Problem p{ta, tb, M, N, K, alpha, beta, A, B, lda, ldb, C, ldc, bias, &ks, nullptr};
  const index_t flops = 2 * M * N * K;
  if (M * N <= kSplitKMaxC && K >= kSplitKMinK) {
    gemm_split_k(p);
    if (colsum) column_sums(tb, N, K, B, ldb, colsum);
    return;
  }
  // A Dense weight gradient with few units (op(A) = A^T, K the batch): B (K x N) stays in L1
  // while 8 rows of C at a time pass; rows split between threads in multiples of 8.
  if (ta && K <= 256 && narrow_fits(p)) {
    if (colsum) column_sums(tb, N, K, B, ldb, colsum);
    const index_t groups = ceil_div(M, 8);
    const int nt = int(std::min<index_t>({index_t(omp_get_max_threads()),
                                          std::max<index_t>(1, flops / kMinFlopsPerThread), groups}));
#pragma omp parallel num_threads(nt)
    {
      const int t = omp_get_thread_num(), n = omp_get_num_threads();
      gemm_narrow_rows(p, std::min(M, 8 * (groups * t / n)), std::min(M, 8 * (groups * (t + 1) / n)));
    }
    return;
  }
  if (colsum && tb) column_sums(tb, N, K, B, ldb, colsum);   // a transposed B is not summed when packed
  else p.colsum = colsum;
  const index_t tiles = ceil_div(M, ks.mr) * ceil_div(N, ks.nr);
  const int nt = int(std::min<index_t>({index_t(omp_get_max_threads()),
                                        std::max<index_t>(1, flops / kMinFlopsPerThread), tiles}));
  if (nt <= 1) {
    if (!gemm_rect(p, 0, M, 0, N)) throw std::bad_alloc();
    return;
  }
  bool failed = false;
#pragma omp parallel num_threads(nt)
  {
    // The team may be smaller than asked (e.g. when called from inside a parallel region).
    const Rect r = thread_rect(M, N, ks.mr, ks.nr, omp_get_num_threads(), omp_get_thread_num());
    if (r.m0 < r.m1 && r.n0 < r.n1 && !gemm_rect(p, r.m0, r.m1, r.n0, r.n1)) {
#pragma omp atomic write
      failed = true;
    }
  }
  if (failed) throw std::bad_alloc();
}

void bias_backward(index_t M, index_t N, const float* dy, float* db) {
  // Work items: a block of rows x a strip of 64 columns, whose sums the compiler keeps in
  // registers while the block's rows pass. The row blocks are a function of M alone and their
  // partial sums are added in order, so the result has the same bits at any thread count.
  // (Summing straight into db, which may alias dy for the compiler, cost a load and a store
  // per element: 10 GB/s.)
  if (M <= 0 || N <= 0) return;
  constexpr index_t W = 64;
  const index_t strips = (N + W - 1) / W;
  const index_t blocks = std::clamp<index_t>(M / 256, 1, 16);
  const index_t rows = (M + blocks - 1) / blocks;
  std::vector<float> part(size_t(blocks) * size_t(N));
#pragma omp parallel for num_threads(threads_for(M * N)) schedule(static)
  for (index_t item = 0; item < blocks * strips; ++item) {
    const index_t b = item % blocks, j0 = (item / blocks) * W, w = std::min(W, N - j0);
    const index_t r1 = std::min(M, (b + 1) * rows);
    float acc[W] = {};
    if (w == W) {
      for (index_t i = b * rows; i < r1; ++i) {
        const float* row = dy + i * N + j0;
        for (index_t j = 0; j < W; ++j) acc[j] += row[j];
      }
    } else {
      for (index_t i = b * rows; i < r1; ++i)
        for (index_t j = 0; j < w; ++j) acc[j] += dy[i * N + j0 + j];
    }
    std::copy(acc, acc + w, part.data() + size_t(b) * size_t(N) + size_t(j0));
  }
  for (index_t b = 0; b < blocks; ++b)
    for (index_t j = 0; j < N; ++j) db[j] += part[size_t(b) * size_t(N) + size_t(j)];
}

void bias_backward_ref(index_t M, index_t N, const float* dy, float* db) {
  for (index_t j = 0; j < N; ++j) {
    double s = 0.0;
    for (index_t i = 0; i < M; ++i) s += dy[i * N + j];
    db[j] += float(s);
  }
}

}  // namespace kilnet::cpu
