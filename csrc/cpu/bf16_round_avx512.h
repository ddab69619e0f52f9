// bf16_round_avx512.h — float32 -> bfloat16 rounding of 16 lanes in integers (nearest even on
// the dropped 16 bits, a NaN kept quiet): the scalar to_bf16's bits. Not VCVTNEPS2BF16, which
// flushes denormal inputs to zero. Include only from files built with the AVX-512 flags.
#pragma once
#include <immintrin.h>

namespace kilnet::cpu::bf16_detail {

inline __m256i round_to_bf16(__m512 f) {
  const __m512i u = _mm512_castps_si512(f);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  r = _mm512_mask_or_epi32(r, nan, u, _mm512_set1_epi32(0x400000));   // quiet bit; payload kept
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16));
}

}  // namespace kilnet::cpu::bf16_detail
