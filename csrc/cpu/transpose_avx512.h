// transpose_avx512.h — the 16 x 16 transpose of 32-bit values held in 16 zmm registers. In an
// anonymous namespace, included only by files built with the AVX-512 flags (the bfloat16 GEMM's
// packers, the fused Conv2D -> Dense pixel path).
#pragma once
#include <immintrin.h>

// GCC 12's intrinsic headers pass _mm512_undefined_epi32() as the unused merge source of the
// shuffles: -W(maybe-)uninitialized reports it at every use (a false alarm).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kilnet::cpu {
namespace {

// r[j] (16 dwords each) := column j of the 16x16 dword matrix r: in-lane 4x4 transposes, then
// the 128-bit lanes of each group of four rows transposed across the four vectors (64 shuffles).
inline void transpose16x16_epi32(__m512i r[16]) {
  __m512i s[16];
  for (int g = 0; g < 4; ++g) {
    const __m512i a = _mm512_unpacklo_epi32(r[4 * g], r[4 * g + 1]), b = _mm512_unpackhi_epi32(r[4 * g], r[4 * g + 1]);
    const __m512i c = _mm512_unpacklo_epi32(r[4 * g + 2], r[4 * g + 3]), d = _mm512_unpackhi_epi32(r[4 * g + 2], r[4 * g + 3]);
    s[4 * g + 0] = _mm512_unpacklo_epi64(a, c);   // lane L: rows 4g..4g+3 of column 4L
    s[4 * g + 1] = _mm512_unpackhi_epi64(a, c);   // column 4L+1
    s[4 * g + 2] = _mm512_unpacklo_epi64(b, d);
    s[4 * g + 3] = _mm512_unpackhi_epi64(b, d);
  }
  for (int q = 0; q < 4; ++q) {
    const __m512i x0 = _mm512_shuffle_i32x4(s[q], s[4 + q], 0x44), x1 = _mm512_shuffle_i32x4(s[q], s[4 + q], 0xEE);
    const __m512i x2 = _mm512_shuffle_i32x4(s[8 + q], s[12 + q], 0x44), x3 = _mm512_shuffle_i32x4(s[8 + q], s[12 + q], 0xEE);
    r[q] = _mm512_shuffle_i32x4(x0, x2, 0x88);        // column q (lane 0 of each group)
    r[4 + q] = _mm512_shuffle_i32x4(x0, x2, 0xDD);    // column 4 + q
    r[8 + q] = _mm512_shuffle_i32x4(x1, x3, 0x88);
    r[12 + q] = _mm512_shuffle_i32x4(x1, x3, 0xDD);
  }
}

// The same for floats (the bits move alike; the casts cost nothing).
inline void transpose16x16_ps(__m512 r[16]) {
  __m512i t[16];
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) t[i] = _mm512_castps_si512(r[i]);
  transpose16x16_epi32(t);
#pragma GCC unroll 16
  for (int i = 0; i < 16; ++i) r[i] = _mm512_castsi512_ps(t[i]);
}

}  // namespace
}  // namespace kilnet::cpu

#pragma GCC diagnostic pop
