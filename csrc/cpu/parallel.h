// parallel.h — small OpenMP helpers shared by the CPU kernels.
#pragma once
#include <omp.h>
#include "kilnet/common.h"

namespace kilnet::cpu {

// Below this many elements an elementwise loop is not worth waking the thread team for.
constexpr index_t kParallelGrain = 1 << 15;

inline int threads_for(index_t work, index_t grain = kParallelGrain) {
  if (work < grain) return 1;
  index_t t = work / grain;
  int max_t = omp_get_max_threads();
  return t < max_t ? static_cast<int>(t) : max_t;
}

}  // namespace kilnet::cpu
