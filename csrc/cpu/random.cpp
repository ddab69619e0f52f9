// random.cpp — the normal stream of random.h: the kernel of random_kernel.h at the SIMD level
// that runs (the same bits at every level), and a plain reference.
#include "kilnet/random.h"

#include <cmath>

#include "parallel.h"
#pragma GCC diagnostic ignored "-Wpsabi"   // 64-byte vectors by value in inline helpers (no ABI edge)
#include "random_kernel.h"

namespace kilnet::cpu {
namespace random_detail {
void normal_range_avx2(std::int64_t n, std::uint64_t key, std::uint64_t counter, std::int64_t b0, std::int64_t b1,
                       float scale, bool add, float* out);   // random_avx2.cpp
void normal_range_avx512(std::int64_t n, std::uint64_t key, std::uint64_t counter, std::int64_t b0,
                         std::int64_t b1, float scale, bool add, float* out);   // random_avx512.cpp
}  // namespace random_detail

void philox4x32_10(const std::uint32_t ctr[4], const std::uint32_t key[2], std::uint32_t out[4]) {
  using random_detail::kM0, random_detail::kM1, random_detail::kW0, random_detail::kW1;
  std::uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3], k0 = key[0], k1 = key[1];
  for (int r = 0; r < 10; ++r) {
    if (r) k0 += kW0, k1 += kW1;
    const std::uint64_t p0 = std::uint64_t(kM0) * c0, p1 = std::uint64_t(kM1) * c2;
    const std::uint32_t n0 = std::uint32_t(p1 >> 32) ^ c1 ^ k0, n2 = std::uint32_t(p0 >> 32) ^ c3 ^ k1;
    c0 = n0;
    c1 = std::uint32_t(p1);
    c2 = n2;
    c3 = std::uint32_t(p0);
  }
  out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

void normal_fill(index_t n, std::uint64_t key, std::uint64_t counter, float* out, float scale, bool add) {
  if (n <= 0) return;
  const index_t blocks = (n + 31) / 32;
  // ~2 ns a value on one core: below ~64k values one thread
#pragma omp parallel num_threads(threads_for(n, index_t(1) << 16))
  {
    const int t = omp_get_thread_num(), nt = omp_get_num_threads();
    const index_t b0 = blocks * t / nt, b1 = blocks * (t + 1) / nt;
#if defined(KILNET_HAVE_AVX512_BUILD)
    if (use_avx512()) {
      random_detail::normal_range_avx512(n, key, counter, b0, b1, scale, add, out);
    } else
#endif
#if defined(KILNET_HAVE_AVX2_BUILD)
    if (use_avx2()) {
      random_detail::normal_range_avx2(n, key, counter, b0, b1, scale, add, out);
    } else
#endif
    {
      random_detail::normal_range(n, key, counter, b0, b1, scale, add, out);
    }
  }
}

void normal_fill_ref(index_t n, std::uint64_t key, std::uint64_t counter, float* out, float scale, bool add) {
  const std::uint32_t k[2] = {std::uint32_t(key), std::uint32_t(key >> 32)};
  for (index_t j = 0; j < n; ++j) {
    const std::uint64_t c = counter + 16 * std::uint64_t(j / 32) + std::uint64_t(j % 16);
    const std::uint32_t ctr[4] = {std::uint32_t(c), std::uint32_t(c >> 32), 0, 0};
    std::uint32_t w[4];
    philox4x32_10(ctr, k, w);
    const std::uint64_t bits = (std::uint64_t(w[0]) << 20) | (w[1] >> 12);
    const double u = (double(bits) + 0.5) * 0x1p-52;
    const double r = std::sqrt(-2.0 * std::log(u));
    const double t = 6.283185307179586476925 * (double(w[2]) * 0x1p-32);
    const float z = float(j % 32 < 16 ? r * std::cos(t) : r * std::sin(t)) * scale;
    out[j] = add ? out[j] + z : z;
  }
}

}  // namespace kilnet::cpu
