// random_kernel.h — the normal stream of random.h, kLanes counters at a time, written once with GCC's
// generic vectors and compiled three times: random.cpp (the baseline x86-64 / any CPU),
// random_avx2.cpp and random_avx512.cpp (their flags). All three are built with
// -ffp-contract=off (CMakeLists.txt) and use only IEEE-exact operations (+ - * /, sqrt,
// conversions, bit moves) in the same order, so they give the same bits: the stream does not
// depend on the SIMD level. In an anonymous namespace; no project header with inline functions.
#pragma once
#include <cstdint>
#include <cstring>
#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace kilnet::cpu::random_detail {
namespace {

constexpr int kLanes = 16;   // one block of the stream (32 lanes measured 2x slower: spills)
typedef std::uint32_t u32xL __attribute__((vector_size(4 * kLanes)));
typedef std::int32_t i32xL __attribute__((vector_size(4 * kLanes)));
typedef std::uint64_t u64xL __attribute__((vector_size(8 * kLanes)));
typedef float f32xL __attribute__((vector_size(4 * kLanes)));
typedef double f64xL __attribute__((vector_size(8 * kLanes)));

template <class To, class From>
inline To bits_as(const From& v) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To t;
  std::memcpy(&t, &v, sizeof(To));
  return t;
}

constexpr std::uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;   // Philox4x32's multipliers
constexpr std::uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;   // and key increments (Weyl)

// (a mod 2^32) * m in every lane: the 32 x 32 -> 64-bit multiply of the ISA (the compiler's own
// lowering of a 64-bit vector multiply is vpmullq or three multiplies with shifts).
inline u64xL mul32(u64xL a, std::uint32_t m) {
#if defined(__AVX512F__)
  __m512i v[kLanes / 8];
  std::memcpy(v, &a, sizeof a);
  const __m512i mm = _mm512_set1_epi64(m);
  for (int i = 0; i < kLanes / 8; ++i) v[i] = _mm512_mul_epu32(v[i], mm);
  return bits_as<u64xL>(v);
#elif defined(__AVX2__)
  __m256i v[kLanes / 4];
  std::memcpy(v, &a, sizeof a);
  const __m256i mm = _mm256_set1_epi64x(m);
  for (int i = 0; i < kLanes / 4; ++i) v[i] = _mm256_mul_epu32(v[i], mm);
  return bits_as<u64xL>(v);
#else
  return (a & 0xffffffffull) * std::uint64_t(m);
#endif
}

// Ten Philox4x32 rounds on kLanes counters, one 32-bit word in each 64-bit lane of c0..c3 (only the
// low halves are meaningful: the multiplies read only those, and the caller takes only those).
inline void philox_rounds(u64xL& c0, u64xL& c1, u64xL& c2, u64xL& c3, std::uint32_t k0, std::uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r) k0 += kW0, k1 += kW1;
    const u64xL p0 = mul32(c0, kM0), p1 = mul32(c2, kM1);
    const u64xL n0 = (p1 >> 32) ^ c1 ^ std::uint64_t(k0), n2 = (p0 >> 32) ^ c3 ^ std::uint64_t(k1);
    c0 = n0;
    c1 = p1;
    c2 = n2;
    c3 = p0;
  }
}

// -2 ln u for u = (bits + 1/2) 2^-52, bits < 2^52 (the 52-bit uniform in double, exact), in
// single precision (relative error ~2e-7, against ~6e-8 for the float value the stream rounds to):
// ln u = e ln 2 + 2 atanh(s), with
//   u <  1/2: u = m 2^e (u rounded to float: its relative error, 2^-24, is all it loses), m in
//             (sqrt(1/2), sqrt(2)], s = (m - 1) / (m + 1), |s| < 0.172;
//   u >= 1/2: e = 0, v = 1 - u (exact in double, then rounded), s = -v / (2 - v), |s| <= 1/3
//             (the small distances to 1 kept: u rounded to float first would make every u within
//             2^-25 of 1 a radius 0);
// then the series of atanh to s^15 (within 2e-10 at |s| = 1/3). One division of 16 floats where
// the double log took two divisions of 8 doubles and twice the multiplies.
inline f32xL minus_two_log_unit(u64xL bits) {
  const f64xL ud = (bits_as<f64xL>(bits | 0x3ff0000000000000ull) - 1.0) + 0x1p-53;
  const f32xL uf = __builtin_convertvector(ud, f32xL), vf = __builtin_convertvector(1.0 - ud, f32xL);
  // the u >= 1/2 lanes: bit 51 of bits, as all-ones 32-bit masks
  const u32xL hi = __builtin_convertvector((bits >> 51) & 1u, u32xL) * 0xffffffffu;
  const u32xL b = bits_as<u32xL>(uf);
  i32xL e = (i32xL)((b >> 23) & 0xffu) - 127;
  u32xL mb = (b & 0x007fffffu) | 0x3f800000u;   // m in [1, 2)
  const u32xL gt = (0x3fb504f3u - mb) >> 31;    // 1 where m > sqrt 2: halve it, e + 1
  mb -= gt << 23;
  e += (i32xL)gt;
  const f32xL m = bits_as<f32xL>(mb);
  const u32xL na = bits_as<u32xL>(m - 1.0f), da = bits_as<u32xL>(m + 1.0f);
  const u32xL nb = bits_as<u32xL>(-vf), dbv = bits_as<u32xL>(2.0f - vf);
  const f32xL num = bits_as<f32xL>((hi & nb) | (~hi & na)), den = bits_as<f32xL>((hi & dbv) | (~hi & da));
  const f32xL ef = __builtin_convertvector(e & (i32xL)~hi, f32xL);
  const f32xL sv = num / den, z = sv * sv;
  // 1 + z/3 + ... + z^7/15 by Estrin's scheme (a dependency chain half as long as Horner's)
  const f32xL z2 = z * z, z4 = z2 * z2;
  const f32xL p01 = z * (1.0f / 3) + 1.0f, p23 = z * (1.0f / 7) + 1.0f / 5, p45 = z * (1.0f / 11) + 1.0f / 9,
              p67 = z * (1.0f / 15) + 1.0f / 13;
  const f32xL p = (z2 * p23 + p01) + z4 * (z2 * p67 + p45);
  constexpr float ln2_hi = 0.693145751953125f, ln2_lo = 1.42860682030941723212e-06f;   // hi: 16 bits
  const f32xL lnu = ef * ln2_hi + (ef * ln2_lo + 2.0f * sv * p);
  return lnu * -2.0f;
}

// sin and cos of 2 pi w / 2^32: the nearest quarter turn q in integers, the rest x in
// [-pi/4, pi/4) exactly to float, then Cephes' single-precision polynomials (~1e-7).
inline void sincos_turns(u32xL w, f32xL& sn, f32xL& cs) {
  const u32xL q = (w + 0x20000000u) >> 30;
  const i32xL f = (i32xL)(w - (q << 30));
  const f32xL x = __builtin_convertvector(f, f32xL) * 1.46291807926715968e-09f;   // 2 pi / 2^32
  const f32xL z = x * x;
  const f32xL sp = ((z * -1.9515295891e-4f + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * x + x;
  const f32xL cp = ((z * 2.443315711809948e-5f - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z -
                    z * 0.5f + 1.0f;
  // odd quarter turns swap sin and cos (a select by bit masks: GCC 12 branches on AVX2 for a ?:)
  const u32xL swap = (q & 1u) * 0xffffffffu;
  const u32xL sb = bits_as<u32xL>(sp), cb = bits_as<u32xL>(cp);
  const f32xL s1 = bits_as<f32xL>((swap & cb) | (~swap & sb)), c1 = bits_as<f32xL>((swap & sb) | (~swap & cb));
  // signs: sin < 0 in quarters 2, 3; cos < 0 in quarters 1, 2
  sn = bits_as<f32xL>(bits_as<u32xL>(s1) ^ ((q & 2u) << 30));
  cs = bits_as<f32xL>(bits_as<u32xL>(c1) ^ (((q + 1u) & 2u) << 30));
}

// out[0:32) = the 32 values of block b (counters counter + 16b + lane) times scale, added to
// out[0:32) when add.
inline void normal_block(std::uint64_t key, std::uint64_t counter, std::uint64_t b, float scale, bool add, float* out) {
  const u64xL lane = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  u64xL c0 = lane + (counter + 16 * b), c1 = c0 >> 32, c2 = c0 ^ c0, c3 = c2;
  philox_rounds(c0, c1, c2, c3, std::uint32_t(key), std::uint32_t(key >> 32));
  // u = (bits + 1/2) 2^-52: 1 + bits 2^-52 built from the bits, minus 1 (exact), plus 2^-53
  const u64xL bits = ((c0 & 0xffffffffull) << 20) | ((c1 & 0xffffffffull) >> 12);
  const f32xL r2 = minus_two_log_unit(bits);
  f32xL rf;
  for (int i = 0; i < kLanes; ++i) rf[i] = __builtin_sqrtf(r2[i]);
  f32xL sn, cs;
  sincos_turns(__builtin_convertvector(c2, u32xL), sn, cs);
  f32xL zc = rf * cs * scale, zs = rf * sn * scale;
  if (add) {
    f32xL oc, os;
    std::memcpy(&oc, out, sizeof oc);
    std::memcpy(&os, out + 16, sizeof os);
    zc = oc + zc;
    zs = os + zs;
  }
  std::memcpy(out, &zc, sizeof zc);
  std::memcpy(out + 16, &zs, sizeof zs);
}

// out[0:n) (+)= scale * the stream, its blocks [b0, b1) (the last one may be partial).
inline void normal_range(std::int64_t n, std::uint64_t key, std::uint64_t counter, std::int64_t b0, std::int64_t b1,
                         float scale, bool add, float* out) {
  for (std::int64_t b = b0; b < b1; ++b) {
    if (32 * b + 32 <= n) {
      normal_block(key, counter, std::uint64_t(b), scale, add, out + 32 * b);
    } else {
      float tmp[32];
      normal_block(key, counter, std::uint64_t(b), scale, false, tmp);
      for (std::int64_t j = 0; j < n - 32 * b; ++j) out[32 * b + j] = add ? out[32 * b + j] + tmp[j] : tmp[j];
    }
  }
}

}  // namespace
}  // namespace kilnet::cpu::random_detail
