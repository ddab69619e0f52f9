// bf16_convert_avx512.cpp — float32 <-> bfloat16 conversions and the bfloat16 add on 16 lanes
// (gemm_bf16.cpp calls them when simd() is Avx512), with the scalar loops' bits (bf16_round_avx512.h).
#include "gemm_bf16_internal.h"

#if defined(KILNET_HAVE_AVX512_BUILD) && defined(__AVX512F__)
#include "bf16_round_avx512.h"

namespace kilnet::cpu::bf16_detail {

void to_bf16_avx512(index_t n, const float* x, std::uint16_t* y) {
  index_t i = 0;
  for (; i + 16 <= n; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i),
                        round_to_bf16(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1u);
    _mm256_mask_storeu_epi16(y + i, m, round_to_bf16(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

void from_bf16_avx512(index_t n, const std::uint16_t* x, float* y) {
  index_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i)));
    _mm512_storeu_si512(y + i, _mm512_slli_epi32(w, 16));
  }
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1u);
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, x + i));
    _mm512_mask_storeu_ps(y + i, m, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
  }
}

namespace {
inline __m512 widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
}  // namespace

void add_bf16_avx512(index_t n, const std::uint16_t* a, const std::uint16_t* b, std::uint16_t* y) {
  index_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 s = _mm512_add_ps(widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i))),
                                   widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i))));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + i), round_to_bf16(s));
  }
  if (i < n) {
    const __mmask16 m = __mmask16((1u << (n - i)) - 1u);
    const __m512 s = _mm512_add_ps(widen(_mm256_maskz_loadu_epi16(m, a + i)), widen(_mm256_maskz_loadu_epi16(m, b + i)));
    _mm256_mask_storeu_epi16(y + i, m, round_to_bf16(s));
  }
}

}  // namespace kilnet::cpu::bf16_detail
#endif
