// random.h — counter-based normal random numbers (Philox4x32-10 and Box-Muller).
//
// The stream: value j of normal_fill(n, key, counter, out) comes from Philox4x32-10 (Salmon et
// al., SC 2011) with the key (low and high 32 bits of `key`) and the 128-bit counter
// (counter + 16 * (j / 32) + j % 16, 0, 0) taken as (low, high, 0, 0) 32-bit words. Of its four
// output words w0..w3, the 52 bits (w0 << 20 | w1 >> 12) give u = (bits + 1/2) * 2^-52 in (0, 1)
// and w2 the angle t = 2 pi w2 / 2^32; then r = sqrt(-2 ln u) (u from all 52 bits: tails to 8.6
// sigma, and distances of u to 1 down to 2^-53 kept; the logarithm and the root in single
// precision, ~2e-7 relative), and value j is r cos t for j % 32 < 16, r sin t otherwise
// (Box-Muller). So every
// call is a pure function of (key, counter, j): the same values at any thread count, SIMD level
// and machine, and draws of one key at disjoint counters are independent.
#pragma once
#include <cstdint>

#include "kilnet/common.h"

namespace kilnet::cpu {

// out[0:n) = scale * the standard normal float32 values of the stream above (add: out[0:n) +=
// them; in float32, out + (z * scale)). Counters used: counter .. counter + 16 * ceil(n / 32) - 1.
void normal_fill(index_t n, std::uint64_t key, std::uint64_t counter, float* out, float scale = 1.0f,
                 bool add = false);

// The same stream computed value by value in double precision with the C library's log, sin and
// cos (the kernels use polynomials: agreement to ~1e-6).
void normal_fill_ref(index_t n, std::uint64_t key, std::uint64_t counter, float* out, float scale = 1.0f,
                     bool add = false);

// Philox4x32-10 of one counter (the bijection under the stream; for tests).
void philox4x32_10(const std::uint32_t ctr[4], const std::uint32_t key[2], std::uint32_t out[4]);

}  // namespace kilnet::cpu
