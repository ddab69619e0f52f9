// gemm_prefetch.h — walking a Prefetch (gemm_internal.h) one cache line at a time, for the
// micro-kernels (gemm_avx2.cpp, gemm_avx512.cpp) and the driver (gemm.cpp). Everything is in an
// anonymous namespace, so each file compiles its own copy with its own flags.
#pragma once
#include <xmmintrin.h>
#include <cstdint>
#include "gemm_internal.h"

namespace kilnet::cpu::gemm_detail {
namespace {

inline const char* line_of(const char* p) {
  return reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(p) & ~std::uintptr_t(63));
}

// Makes row `row` of the current region current (rows_left rows after it).
inline void prefetch_row(Prefetch& pf, const char* row) {
  pf.row = row;
  pf.p = line_of(row);
  pf.end = row + pf.cur.bytes;
}

// Starts walking region r, then q (either may have no rows).
inline void prefetch_start(Prefetch& pf, const PrefetchRegion& r, const PrefetchRegion& q) {
  pf.cur = r;
  pf.queued = q;
  if (pf.cur.rows <= 0 || pf.cur.bytes <= 0) {
    pf.cur = q;
    pf.queued.rows = 0;
  }
  if (pf.cur.rows <= 0 || pf.cur.bytes <= 0) {
    pf.p = nullptr;
    return;
  }
  pf.rows_left = pf.cur.rows - 1;
  prefetch_row(pf, pf.cur.start);
}

// The step past the end of a row: the next row, the queued region, or nothing left.
inline void prefetch_next_row(Prefetch& pf) {
  if (pf.rows_left > 0) {
    --pf.rows_left;
    prefetch_row(pf, pf.row + pf.cur.stride);
  } else if (pf.queued.rows > 0 && pf.queued.bytes > 0) {
    pf.cur = pf.queued;
    pf.queued.rows = 0;
    pf.rows_left = pf.cur.rows - 1;
    prefetch_row(pf, pf.cur.start);
  } else {
    pf.p = nullptr;
  }
}

// One line (if any is left), into L2 and L1 (AMD fills both for every hint; Intel's T0 too).
inline void prefetch_one(Prefetch* pf) {
  if (!pf || !pf->p) return;
  _mm_prefetch(pf->p, _MM_HINT_T0);
  pf->p += 64;
  if (pf->p >= pf->end) prefetch_next_row(*pf);
}

}  // namespace
}  // namespace kilnet::cpu::gemm_detail
