// gemm_internal.h — private to gemm.cpp (driver, packing, portable kernel), gemm_avx2.cpp
// (the AVX2/FMA micro-kernel) and gemm_avx512.cpp (the AVX-512 one and its packers). Declarations and constants only: an inline function defined here
// would be compiled once with and once without -mavx2, and the linker may keep either copy,
// which would put AVX2 instructions on the portable path.
#pragma once
#include "kilnet/common.h"

namespace kilnet::cpu::gemm_detail {

// Register block of the AVX2 and portable kernels: a 6x16 tile of C lives in 12 ymm accumulators
// (6 rows x 2 vectors of 8), plus 2 registers for a row of B and 1 for a broadcast element of A:
// 15 of the 16 ymm registers.
constexpr int MR = 6;
constexpr int NR = 16;
// Register block of the AVX-512 kernel: 12x32, 24 zmm accumulators (12 rows x 2 vectors of 16),
// 2 for a row of B and 1 for a broadcast element of A. (14x32 would fill all 32 registers but
// GCC then spills an accumulator inside the k loop.)
constexpr int MR512 = 12;
constexpr int NR512 = 32;

// What the micro-kernel does when it writes its tile:  C = alpha*acc + beta*C + bias.
// beta == 0 means C is not read (it may hold NaN). bias points at the tile's first column, or
// is null; the driver passes it only for the first K block so it is added exactly once.
struct Epilogue {
  float alpha;
  float beta;
  const float* bias;
};

// A micro-kernel call computes a run of sw.count tiles along one row or one column of tiles:
// tile t reads a + t*a_step and b + t*b_step, and writes c + t*c_step with bias + t*bias_step
// (when bias is not null); all with the same m x n. Paying the setup once per run rather than
// once per tile matters when K is small (a 6x16 tile with K = 9 is only 54 cycles of FMAs).
struct Prefetch;
struct Sweep {
  index_t count, a_step, b_step, c_step, bias_step;
  Prefetch* pf;   // lines to prefetch while the FMAs run (gemm_prefetch.h), or null
};

// The memory the driver reads next (the next block's A, the next K block's B panel), up to two
// rectangles of rows, prefetched one line per few k steps by the micro-kernel. Operands that
// come from DRAM (a layer's activations, written long before the backward reads them) otherwise
// stall the packing and the first sweep over each block: 77-89 GFLOP/s against 100-110 warm on
// the char Transformer's shapes (Zen 4). gemm_prefetch.h walks it; gemm.cpp fills it.
struct PrefetchRegion {
  const char* start;   // first byte of the first row
  index_t bytes;       // bytes per row
  index_t stride;      // bytes from one row to the next
  index_t rows;
};
struct Prefetch {
  const char* p;       // the next line to prefetch (64-byte aligned); null: nothing left
  const char* end;     // end of the current row
  const char* row;     // start of the current row
  index_t rows_left;   // rows after the current one
  PrefetchRegion cur;
  PrefetchRegion queued[3];   // walked in order (rows == 0: none)
  int next;                   // the queued region after cur
};

// Micro-kernel contract (both implementations), for each tile of the sweep:
//   a: MR rows of op(A), element (r, k) at a[r*rs_a + k*cs_a], r < m. A packed sliver has
//      rs_a = 1, cs_a = MR; op(A) read in place has (lda, 1), or (1, lda) when transposed.
//      Rows r >= m are never read (they alias row m-1, their results are dropped).
//   b: packed B sliver, kc x NR (NR values per k, 32-byte aligned, columns past n are zero)
//   c: the tile's top-left element in row-major C with row stride ldc; only the m x n corner
//      (m <= MR, n <= NR) is read or written. kc may be 0 (then the tile is just the epilogue).
using MicroKernel = void (*)(index_t kc, const float* a, index_t rs_a, index_t cs_a,
                             const float* b, float* c, index_t ldc, int m, int n,
                             const Epilogue& ep, const Sweep& sw);

// Packs one full NR-column sliver of a transposed B: column c of op(B) is src + c*cs, contiguous
// along k; dst gets kc rows of NR values (the layout of pack_b in gemm.cpp). Null: no such
// routine (the portable path), pack_b's own loops do it.
using PackBT = void (*)(const float* src, index_t cs, index_t kc, float* dst);

// Packs one sliver of op(A) or op(B) whole: element (i, k) of op(A) (or (k, j) of op(B)) is at
// src + i*rs + k*cs; `w` <= the sliver width rows (columns) are valid, the rest are zero-filled.
// dst gets kc groups of `width` values. Null: the driver's portable loops do it.
using PackSliver = void (*)(const float* src, index_t rs, index_t cs, int w, index_t kc, float* dst);

// Everything the driver needs to know about one micro-kernel: its register block, its cache
// blocking and its packers.
struct KernelSpec {
  int mr, nr;                // register block; packed slivers are mr rows / nr columns wide
  index_t mc, kc, nc;        // cache blocks (mc a multiple of mr, nc of nr)
  index_t small_panel;       // a B panel of at most this many floats is swept row by row (L2)
  MicroKernel uk;
  PackBT pack_bt;            // full transposed B sliver (nr == 16 only), or null
  PackSliver pack_a;         // or null
  PackSliver pack_b;         // or null
};

#if defined(KILNET_HAVE_AVX2_BUILD)
void pack_bt_16_avx2(const float* src, index_t cs, index_t kc, float* dst);
void ukernel_6x16_avx2(index_t kc, const float* a, index_t rs_a, index_t cs_a, const float* b,
                       float* c, index_t ldc, int m, int n, const Epilogue& ep, const Sweep& sw);
#endif
#if defined(KILNET_HAVE_AVX512_BUILD)
void ukernel_12x32_avx512(index_t kc, const float* a, index_t rs_a, index_t cs_a, const float* b,
                          float* c, index_t ldc, int m, int n, const Epilogue& ep, const Sweep& sw);
void pack_a_12_avx512(const float* src, index_t rs, index_t cs, int w, index_t kc, float* dst);
void pack_b_32_avx512(const float* src, index_t rs, index_t cs, int w, index_t kc, float* dst);
#endif

}  // namespace kilnet::cpu::gemm_detail
