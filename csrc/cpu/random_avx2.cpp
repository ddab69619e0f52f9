// random_avx2.cpp — random_kernel.h's normal stream built with the AVX2 flags (the same bits
// as every other level: see random_kernel.h).
#include <cstdint>
#pragma GCC diagnostic ignored "-Wpsabi"
#include "random_kernel.h"

namespace kilnet::cpu::random_detail {
void normal_range_avx2(std::int64_t n, std::uint64_t key, std::uint64_t counter, std::int64_t b0, std::int64_t b1,
                       float scale, bool add, float* out) {
  normal_range(n, key, counter, b0, b1, scale, add, out);
}
}  // namespace kilnet::cpu::random_detail
