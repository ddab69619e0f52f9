// peak.cpp — the FMA peak probe (kilnet/peak.h): one thread per OpenMP thread runs independent
// multiply-add chains for about `seconds`; the result is the sum of the threads' GFLOP/s.
// The AVX2/FMA chains live in peak_avx2.cpp, the AVX-512 ones in peak_avx512.cpp; this file holds the portable chains and dispatch.
#include "peak_internal.h"
#include "kilnet/gemm_bf16.h"
#include <omp.h>
#include <cstddef>
#include <vector>

namespace kilnet::cpu {
namespace peak_detail {

double fma_chains_portable(double seconds, double* elapsed) {
  // 12 scalar chains acc = acc * a + b (the compiler may put several in one SSE register: fine,
  // this is what the portable kernels get too). a and b are volatile reads so they stay unknown.
  volatile float av = 0.999999f, bv = 1e-6f;
  const float a = av, b = bv;
  float c[12];
  for (int j = 0; j < 12; ++j) c[j] = 0.1f * float(j);
  const long inner = 1L << 15;
  double flops = 0.0;
  const double t0 = omp_get_wtime();
  double t = t0;
  do {
    for (long i = 0; i < inner; ++i)
      for (int j = 0; j < 12; ++j) c[j] = c[j] * a + b;
    flops += double(inner) * 12.0 * 2.0;
    t = omp_get_wtime();
  } while (t - t0 < seconds);
  *elapsed = t - t0;
  float s = 0.0f;
  for (int j = 0; j < 12; ++j) s += c[j];
  volatile float sink = s;   // the chains' result is observed: they cannot be optimized away
  (void)sink;
  return flops;
}

}  // namespace peak_detail

double fma_peak_gflops(int threads, double seconds) { return fma_peak_gflops(threads, seconds, simd()); }

namespace {
// The sum over `threads` OpenMP threads of chains(seconds)'s rate, in GFLOP/s.
template <class Chains>
double summed_rate(int threads, Chains&& chains) {
  std::vector<double> rate(std::size_t(threads), 0.0);
#pragma omp parallel num_threads(threads)
  {
    const int id = omp_get_thread_num();
    double elapsed = 0.0;
    const double flops = chains(&elapsed);
    if (id < threads && elapsed > 0.0) rate[std::size_t(id)] = flops / elapsed;
  }
  double total = 0.0;
  for (double r : rate) total += r;
  return total * 1e-9;
}
}  // namespace

double bf16_dot_peak_gflops(int threads, double seconds) {
#if defined(KILNET_HAVE_AVX512BF16_BUILD)
  if (!cpu_has_avx512bf16()) return 0.0;
  return summed_rate(threads < 1 ? 1 : threads,
                     [&](double* elapsed) { return peak_detail::dot_chains_avx512bf16(seconds, elapsed); });
#else
  (void)threads;
  (void)seconds;
  return 0.0;
#endif
}

double fma_peak_gflops(int threads, double seconds, Simd level) {
  if (threads < 1) threads = 1;
  if (static_cast<int>(level) > static_cast<int>(simd())) level = simd();   // never above what runs
  return summed_rate(threads, [&](double* elapsed) {
#if defined(KILNET_HAVE_AVX512_BUILD)
    if (level == Simd::Avx512) return peak_detail::fma_chains_avx512(seconds, elapsed);
#endif
#if defined(KILNET_HAVE_AVX2_BUILD)
    if (level != Simd::Scalar) return peak_detail::fma_chains_avx2(seconds, elapsed);
#endif
    return peak_detail::fma_chains_portable(seconds, elapsed);
  });
}

}  // namespace kilnet::cpu
