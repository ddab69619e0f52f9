// parallel.h — small OpenMP helpers shared by the CPU kernels.
#pragma once
#include <omp.h>

#include <exception>
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

// Runs body(t, n) on a team of up to nt threads (t of n), each with its OpenMP thread count set
// to 1 meanwhile, so the kernels body calls run on that thread alone with their thread_local
// scratch; nt <= 1: body(0, 1) in place. The first exception is rethrown after the region.
template <class Body>
void each_thread_alone(int nt, Body body) {
  if (nt <= 1) {
    body(0, 1);
    return;
  }
  std::exception_ptr err = nullptr;
#pragma omp parallel num_threads(nt)
  {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    try {
      body(omp_get_thread_num(), omp_get_num_threads());
    } catch (...) {
#pragma omp critical(kilnet_each_thread_alone_error)
      if (!err) err = std::current_exception();
    }
    omp_set_num_threads(saved);
  }
  if (err) std::rethrow_exception(err);
}

}  // namespace kilnet::cpu
