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

// Makes the next queued region with rows current; false if none is left.
inline bool prefetch_next_region(Prefetch& pf) {
  while (pf.next < 3) {
    const PrefetchRegion& q = pf.queued[pf.next++];
    if (q.rows > 0 && q.bytes > 0) {
      pf.cur = q;
      pf.rows_left = q.rows - 1;
      prefetch_row(pf, q.start);
      return true;
    }
  }
  pf.p = nullptr;
  return false;
}

// Starts walking regions r0, r1, r2 in turn (any may have no rows).
inline void prefetch_start(Prefetch& pf, const PrefetchRegion& r0, const PrefetchRegion& r1 = {},
                           const PrefetchRegion& r2 = {}) {
  pf.queued[0] = r0;
  pf.queued[1] = r1;
  pf.queued[2] = r2;
  pf.next = 0;
  prefetch_next_region(pf);
}

// The step past the end of a row: the next row, the next queued region, or nothing left.
inline void prefetch_next_row(Prefetch& pf) {
  if (pf.rows_left > 0) {
    --pf.rows_left;
    prefetch_row(pf, pf.row + pf.cur.stride);
  } else {
    prefetch_next_region(pf);
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

// A micro-kernel's k loop over kc steps: STEP (a statement doing one k) four at a time with one
// line of the prefetch stream pf ahead of each four, unrolled by 4 without a stream.
#define KILNET_GEMM_K_LOOP(kc, pf, STEP)                 \
  {                                                      \
    index_t k_ = 0;                                      \
    if ((pf) && (pf)->p)                                 \
      for (; k_ + 4 <= (kc); k_ += 4) {                  \
        prefetch_one(pf);                                \
        STEP STEP STEP STEP                              \
      }                                                  \
    _Pragma("GCC unroll 4") for (; k_ < (kc); ++k_) STEP \
  }
