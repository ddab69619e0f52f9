// gemm_bf16.cpp — bfloat16 GEMM (kilnet/gemm_bf16.h): AMX and AVX512-BF16 detection, the
// blocking and threading around the block kernels (gemm_bf16_amx.cpp's tiles,
// gemm_bf16_avx512bf16.cpp's VDPBF16PS and packers), the float32 fallback and the reference.
#include "kilnet/gemm_bf16.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>
#include <omp.h>

#include "gemm_bf16_internal.h"
#include "kilnet/gemm.h"

#if defined(__linux__) && (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#define KILNET_AMX_PROBE 1
#endif

namespace kilnet::cpu {

namespace {

using namespace bf16_detail;

// Round to nearest even on the 16 dropped bits; a NaN keeps a quiet-NaN pattern (rounding could
// carry its payload into the exponent and make it inf).
inline std::uint16_t to_bf16(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return std::uint16_t(u >> 16);
}

inline float from_bf16(std::uint16_t h) {
  const std::uint32_t u = std::uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Element (i, j) of op(X) as bfloat16 bits (i < rows of op(X), j < its columns).
inline std::uint16_t elem(const Bf16Matrix& X, bool trans, index_t i, index_t j) {
  const index_t off = trans ? j * X.ld + i : i * X.ld + j;
  return X.bf16 ? static_cast<const std::uint16_t*>(X.data)[off]
                : to_bf16(static_cast<const float*>(X.data)[off]);
}

bool detect_amx() {
#if defined(KILNET_AMX_PROBE) && defined(KILNET_HAVE_AMX_BUILD)
  if (simd() != Simd::Avx512) return false;   // KILNET_SIMD=avx2|scalar turns AMX off too
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  const bool amx_bf16 = d & (1u << 22), amx_tile = d & (1u << 24);
  if (!amx_bf16 || !amx_tile) return false;
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  if ((lo & (3u << 17)) != (3u << 17)) return false;   // XTILECFG + XTILEDATA enabled by the OS
  // Linux (5.16+) hands the 8 KB tile state to a process only on request.
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
  return false;
#endif
}

// AVX512-BF16 (VDPBF16PS, VCVTNE2PS2BF16): CPUID.(7,1):EAX bit 5, on top of the AVX-512 the
// runtime has checked (zmm state enabled in XCR0 included).
bool detect_avx512bf16() {
#if defined(KILNET_AMX_PROBE) && defined(KILNET_HAVE_AVX512BF16_BUILD)
  if (simd() != Simd::Avx512) return false;
  unsigned a, b, c, d;
  if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  return a & (1u << 5);
#else
  return false;
#endif
}

enum class Level { Fp32, Dp, Amx };

// KILNET_BF16=avx512bf16|fp32 lowers the level (as KILNET_SIMD does the SIMD one, never
// raising it): the tests run the VDPBF16PS kernel on a machine with AMX this way. Other values
// are ignored here and warned about by the Python package.
Level detect_level() {
  const Level best = detect_amx() ? Level::Amx : detect_avx512bf16() ? Level::Dp : Level::Fp32;
  const char* force = std::getenv("KILNET_BF16");
  Level want = best;
  if (force && std::strcmp(force, "fp32") == 0) want = Level::Fp32;
  else if (force && std::strcmp(force, "avx512bf16") == 0) want = Level::Dp;
  return static_cast<int>(want) < static_cast<int>(best) ? want : best;
}

Level level() {
  static const Level lv = detect_level();
  return lv;
}

bool use_tiles() { return level() != Level::Fp32; }

// Packing buffers, per thread, grown on demand (64-byte aligned: tile loads like it).
struct Buf16 {
  std::uint16_t* p = nullptr;
  size_t n = 0;
  ~Buf16() { std::free(p); }
  std::uint16_t* get(size_t want) {
    if (want > n) {
      std::free(p);
      p = static_cast<std::uint16_t*>(std::aligned_alloc(64, (want * 2 + 63) / 64 * 64));
      n = p ? want : 0;
    }
    return p;
  }
};

// Cache blocks: a B panel of kKC x kNC bfloat16 (1 MB) stays in L2 (its tiles streamed past L1,
// see amx_block_32x32) and an A block of 32 rows (32 KB) in L1 while the B blocks pass under it;
// A is packed again for each panel, N / kNC times in all. C is read and written K / kKC times:
// at AMX speed that traffic counts (2048³: a 16 MB C eight times with KC 256), so KC is as long
// as the A block allows in L1. (KC 512 vs 256, interleaved runs on a Xeon with AMX: 1024³
// 1.1-1.2x, 2048³ 1.15-1.2x. NC 1024 vs 512, once B streamed past L1, 1 thread: 1024³ 1.1-1.2x,
// 2048³ 1.15-1.2x, half the A packing; NC 2048 (a 2 MB panel, all of L2) 0.6x at 2048³. MC 64 vs
// 128: the same within noise, 1.1x at 2048³ with a bfloat16 C.)
constexpr index_t kKC = 512;    // multiple of kStep
constexpr index_t kNC = 1024;   // multiple of kBlock
constexpr index_t kMC = 64;     // multiple of kBlock
// VDPBF16PS runs at a fifth of AMX's rate, so L1 residency counts less than C's passes: KC 1024
// (whole K at 1024³) vs 512, interleaved runs on a Zen 4, 1 thread: 2048³ 188-197 -> 202-206
// GFLOP/s, 1024³ 195-208 -> 206-212; KC 128/256 lost 10-15%; NC 256/512 no better than 1024.
constexpr index_t kKCDp = 1024;

struct Problem {
  bool ta, tb;
  index_t M, N, K;
  float alpha, beta;
  Bf16Matrix A, B;
  float* C;
  index_t ldc;
  const float* bias;
  std::uint16_t* C16 = nullptr;   // set: a bfloat16 C (alpha 1, beta 0), C unused
  float* colsum = nullptr;        // set (B not transposed): += op(B)'s column sums, from the packing
};

// A bfloat16 C is rounded once from the whole float32 sum: its blocks run over all of K in one
// pass (no partial sums in C), with the B panel narrowed to keep it near kKC x kNC. Beyond this
// K, the float32 product goes through a scratch C and is converted.
constexpr index_t kMaxK16 = 2048;

#if defined(KILNET_HAVE_AVX512BF16_BUILD)
// The blocked loops over C[m0:m1, n0:n1] on this thread, around the block kernel of the level
// (AMX tiles or VDPBF16PS). A full 32x32 block whose epilogue is
// only "+ bias" or "+ C" (alpha == 1, beta in {0, 1}: every call a layer makes) goes straight
// between C and the tiles; other blocks go through a 32x32 buffer and a scalar epilogue.
bool tile_rect(const Problem& p, index_t m0, index_t m1, index_t n0, index_t n1) {
  const index_t Kp = (p.K + kStep - 1) / kStep * kStep;
  const bool out16 = p.C16 != nullptr;
  const index_t kc_max = out16 ? Kp : std::min(level() == Level::Amx ? kKC : kKCDp, Kp);
  // (A bfloat16 C narrows AMX's B panel to about kKC x kNC; VDPBF16PS keeps the whole kNC:
  // interleaved runs on a Zen 4, 1 thread, bfloat16 C, GFLOP/s: 1024³ 194-197 -> 205,
  // 2048³ 187-189 -> 209-210.)
  const index_t nc_max = out16 && level() == Level::Amx
                             ? std::clamp<index_t>(kKC * kNC / Kp / kBlock * kBlock, kBlock, kNC) : kNC;
  thread_local Buf16 abuf, bbuf;
  std::uint16_t* Ap = abuf.get(size_t(kMC * kc_max));
  std::uint16_t* Bp = bbuf.get(size_t(nc_max * kc_max));
  if (!Ap || !Bp) return false;
  alignas(64) float ct[kBlock * kBlock];
  const bool plain = p.alpha == 1.f && (p.beta == 0.f || p.beta == 1.f);
#if defined(KILNET_HAVE_AMX_BUILD)
  const bool amx = level() == Level::Amx;
  const auto block = amx ? amx_block_32x32 : dp_block_32x32;
  if (amx) amx_begin();
#else
  const auto block = dp_block_32x32;
#endif
  for (index_t jc = n0; jc < n1; jc += nc_max) {
    const index_t nc = std::min(nc_max, n1 - jc);
    for (index_t pc = 0; pc < Kp; pc += kc_max) {
      const index_t kc = std::min(kc_max, Kp - pc);
      const bool first = pc == 0;
      for (index_t jb = 0; jb < nc; jb += kBlock) {
        // column sums by the thread whose rows start at 0 (with row strips every thread packs
        // all of B); added in k-block order, so the same at any thread count
        const bool sum = p.colsum && m0 == 0;
        alignas(64) float sums[kBlock];
        const index_t cols = std::min<index_t>(kBlock, nc - jb);
        pack_b(p.B.data, p.B.bf16, p.tb, p.B.ld, jc + jb, cols, p.K, pc, kc, Bp + (jb / kBlock) * kc * kBlock,
                   sum ? sums : nullptr);
        if (sum)
          for (index_t c = 0; c < cols; ++c) p.colsum[jc + jb + c] += sums[c];
      }
      for (index_t ic = m0; ic < m1; ic += kMC) {
        const index_t mc = std::min(kMC, m1 - ic);
        for (index_t ib = 0; ib < mc; ib += kBlock)
          pack_a(p.A.data, p.A.bf16, p.ta, p.A.ld, ic + ib, std::min<index_t>(kBlock, mc - ib),
                       p.K, pc, kc, Ap + (ib / kBlock) * kc * kBlock);
        for (index_t ib = 0; ib < mc; ib += kBlock) {
          const index_t rows = std::min<index_t>(kBlock, mc - ib);
          // A packed even when it is bfloat16 already: tile rows 2-4 KB apart (A read in place)
          // fall into few cache sets, and ran slower than packing from 1024 columns on.
          const BlockA a{Ap + (ib / kBlock) * kc * kBlock, 64, 512, kStepValues};
          for (index_t jb = 0; jb < nc; jb += kBlock) {
            const index_t cols = std::min<index_t>(kBlock, nc - jb);
            const std::uint16_t* b = Bp + (jb / kBlock) * kc * kBlock;
            if (out16) {   // whole K in this pass: the bias as the accumulators' start when it fits
              // (as the float32 C path does, so both sum in one order: the same bits once rounded)
              const bool full = rows == kBlock && cols == kBlock && p.bias;
              block(a, b, kc / kStep, ct, kBlock, full ? BlockInit::Bias : BlockInit::Zero,
                              full ? p.bias + jc + jb : nullptr);
              store_bf16(ct, rows, cols, p.bias && !full ? p.bias + jc + jb : nullptr,
                             p.C16 + (ic + ib) * p.ldc + jc + jb, p.ldc);
              continue;
            }
            float* cb = p.C + (ic + ib) * p.ldc + jc + jb;
            if (plain && rows == kBlock && cols == kBlock) {
              const BlockInit init = !first || p.beta == 1.f ? BlockInit::LoadC
                                   : p.bias ? BlockInit::Bias : BlockInit::Zero;
              // (beta == 1 with a bias on the first block: C is loaded, the bias added below.)
              block(a, b, kc / kStep, cb, p.ldc, init, p.bias ? p.bias + jc + jb : nullptr);
              if (first && p.beta == 1.f && p.bias)
                for (index_t r = 0; r < kBlock; ++r)
                  for (index_t c = 0; c < kBlock; ++c) cb[r * p.ldc + c] += p.bias[jc + jb + c];
              continue;
            }
            block(a, b, kc / kStep, ct, kBlock, BlockInit::Zero, nullptr);
            for (index_t r = 0; r < rows; ++r) {   // the valid corner: alpha, beta, bias
              float* crow = cb + r * p.ldc;
              const float* trow = ct + r * kBlock;
              const float* brow = first && p.bias ? p.bias + jc + jb : nullptr;
              for (index_t c = 0; c < cols; ++c) {
                float v = p.alpha * trow[c];
                if (brow) v += brow[c];
                if (!first) v += crow[c];
                else if (p.beta != 0.f) v += p.beta * crow[c];
                crow[c] = v;
              }
            }
          }
        }
      }
    }
  }
#if defined(KILNET_HAVE_AMX_BUILD)
  if (amx) amx_end();
#endif
  return true;
}
#endif

// Without AMX: the operands rounded to bfloat16 and widened back to float32, then the float32
// GEMM. The products are the same exact values; only the summation order differs.
void gemm_fp32_path(const Problem& p) {
  const index_t ar = p.ta ? p.K : p.M, ac = p.ta ? p.M : p.K;   // A as stored
  const index_t br = p.tb ? p.N : p.K, bc = p.tb ? p.K : p.N;
  std::vector<float> a(size_t(ar * ac)), b(size_t(br * bc));
  for (index_t i = 0; i < ar; ++i)
    for (index_t j = 0; j < ac; ++j) a[size_t(i * ac + j)] = from_bf16(elem(p.A, false, i, j));
  for (index_t i = 0; i < br; ++i)
    for (index_t j = 0; j < bc; ++j) b[size_t(i * bc + j)] = from_bf16(elem(p.B, false, i, j));
  gemm(p.ta, p.tb, p.M, p.N, p.K, p.alpha, a.data(), ac, b.data(), bc, p.beta, p.C, p.ldc, p.bias);
}

#if defined(KILNET_HAVE_AVX512BF16_BUILD)
// Threads: C cut into column strips (or row strips when it is tall), on 32 boundaries.
void run_tiles(const Problem& p) {
  const index_t M = p.M, N = p.N, K = p.K;
  const index_t flops = 2 * M * N * K;
  const bool by_cols = N >= M;
  const index_t blocks = ((by_cols ? N : M) + kBlock - 1) / kBlock;
  const int nt = int(std::max<index_t>(1, std::min<index_t>({index_t(omp_get_max_threads()), blocks,
                                                              flops / (index_t(1) << 22) + 1})));
  bool failed = false;
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num(), n = omp_get_num_threads();
    const index_t b0 = blocks * t / n * kBlock, b1 = std::min((by_cols ? N : M), blocks * (t + 1) / n * kBlock);
    bool ok = true;
    if (b0 < b1) ok = by_cols ? tile_rect(p, 0, M, b0, b1) : tile_rect(p, b0, b1, 0, N);
    if (!ok) {
#pragma omp atomic write
      failed = true;
    }
  }
  if (failed) throw std::bad_alloc();
}
#endif

}  // namespace

bool cpu_has_avx512bf16() {
  static const bool yes = detect_avx512bf16();
  return yes;
}

const char* bf16_level() {
  switch (level()) {
    case Level::Amx: return "amx";
    case Level::Dp: return "avx512bf16";
    default: return "fp32";
  }
}

namespace {
// [i0, i1) of n split in 64-value pieces over the threads (one thread below 256K values).
template <class F>
void split_convert(index_t n, F&& f) {
  const int nt = n > (1 << 18) ? omp_get_max_threads() : 1;
  if (nt == 1) return f(index_t(0), n);
#pragma omp parallel num_threads(nt)
  {
    const index_t pieces = (n + 63) / 64, t = omp_get_thread_num(), m = omp_get_num_threads();
    const index_t i0 = std::min(n, pieces * t / m * 64), i1 = std::min(n, pieces * (t + 1) / m * 64);
    if (i0 < i1) f(i0, i1);
  }
}
}  // namespace

void float_to_bf16(index_t n, const float* x, std::uint16_t* y) {
  split_convert(n, [&](index_t i0, index_t i1) {
#if defined(KILNET_HAVE_AVX512_BUILD)
    if (simd() == Simd::Avx512) return to_bf16_avx512(i1 - i0, x + i0, y + i0);
#endif
    for (index_t i = i0; i < i1; ++i) y[i] = to_bf16(x[i]);
  });
}

void bf16_to_float(index_t n, const std::uint16_t* x, float* y) {
  split_convert(n, [&](index_t i0, index_t i1) {
#if defined(KILNET_HAVE_AVX512_BUILD)
    if (simd() == Simd::Avx512) return from_bf16_avx512(i1 - i0, x + i0, y + i0);
#endif
    for (index_t i = i0; i < i1; ++i) y[i] = from_bf16(x[i]);
  });
}

void add_bf16(index_t n, const std::uint16_t* a, const std::uint16_t* b, std::uint16_t* y) {
  split_convert(n, [&](index_t i0, index_t i1) {
#if defined(KILNET_HAVE_AVX512_BUILD)
    if (simd() == Simd::Avx512) return add_bf16_avx512(i1 - i0, a + i0, b + i0, y + i0);
#endif
    for (index_t i = i0; i < i1; ++i) y[i] = to_bf16(from_bf16(a[i]) + from_bf16(b[i]));
  });
}

namespace {
// colsum[j] += sum over k of op(B)(k, j), in k order (where the packing cannot give them).
void column_sums(bool tb, index_t N, index_t K, Bf16Matrix B, float* colsum) {
  for (index_t k = 0; k < K; ++k)
    for (index_t j = 0; j < N; ++j) {
      const index_t off = tb ? j * B.ld + k : k * B.ld + j;
      colsum[j] += B.bf16 ? from_bf16(static_cast<const std::uint16_t*>(B.data)[off])
                          : static_cast<const float*>(B.data)[off];
    }
}
}  // namespace

void gemm_bf16(bool ta, bool tb, index_t M, index_t N, index_t K, float alpha, Bf16Matrix A,
               Bf16Matrix B, float beta, float* C, index_t ldc, const float* bias, float* colsum) {
  if (N <= 0) return;
  Problem p{ta, tb, M, N, K, alpha, beta, A, B, C, ldc, bias};
  const bool fused = colsum && !tb && M > 0 && K > 0 && use_tiles();
  if (colsum && !fused) column_sums(tb, N, K, B, colsum);
  if (M <= 0) return;
  if (K <= 0 || !use_tiles()) {   // (K == 0: the float32 GEMM's C = beta*C + bias)
    gemm_fp32_path(p);
    return;
  }
  if (fused) p.colsum = colsum;
#if defined(KILNET_HAVE_AVX512BF16_BUILD)
  run_tiles(p);
#endif
}


void gemm_bf16_out(bool ta, bool tb, index_t M, index_t N, index_t K, Bf16Matrix A, Bf16Matrix B,
                   std::uint16_t* C, index_t ldc, const float* bias) {
  if (M <= 0 || N <= 0) return;
  const index_t Kp = (K + kStep - 1) / kStep * kStep;
  if (K <= 0 || !use_tiles() || Kp > kMaxK16) {   // float32 C, then rounded row by row
    std::vector<float> c(size_t(M * N));
    gemm_bf16(ta, tb, M, N, K, 1.f, A, B, 0.f, c.data(), N, bias);
    for (index_t i = 0; i < M; ++i) float_to_bf16(N, c.data() + i * N, C + i * ldc);
    return;
  }
#if defined(KILNET_HAVE_AVX512BF16_BUILD)
  Problem p{ta, tb, M, N, K, 1.f, 0.f, A, B, nullptr, ldc, bias};
  p.C16 = C;
  run_tiles(p);
#endif
}

void gemm_bf16_ref(bool ta, bool tb, index_t M, index_t N, index_t K, float alpha, Bf16Matrix A,
                   Bf16Matrix B, float beta, float* C, index_t ldc, const float* bias) {
  for (index_t i = 0; i < M; ++i)
    for (index_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (index_t k = 0; k < K; ++k)
        acc += double(from_bf16(elem(A, ta, i, k))) * double(from_bf16(elem(B, tb, k, j)));
      double v = double(alpha) * acc + (bias ? bias[j] : 0.f);
      if (beta != 0.f) v += double(beta) * C[i * ldc + j];
      C[i * ldc + j] = float(v);
    }
}

}  // namespace kilnet::cpu
