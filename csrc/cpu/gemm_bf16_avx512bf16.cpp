// gemm_bf16_avx512bf16.cpp — the parts of gemm_bf16 that need AVX512-BF16 but not AMX (built
// with -mavx512bf16): the packers into the tile layouts of gemm_bf16_internal.h, the bfloat16
// store of a finished block, and the VDPBF16PS block kernel that runs where the CPU has
// AVX512-BF16 without AMX (AMD Zen 4 and later, Intel Cooper Lake). gemm_bf16.cpp calls them
// only when bf16_level() is "amx" or "avx512bf16".
#include "gemm_bf16_internal.h"

#if defined(KILNET_HAVE_AVX512BF16_BUILD) && defined(__AVX512BF16__)
#include <immintrin.h>
#include <cstring>
#include "bf16_round_avx512.h"
#include "transpose_avx512.h"

namespace kilnet::cpu::bf16_detail {

namespace {

inline __mmask32 first32(index_t w) {
  return w <= 0 ? 0u : w >= 32 ? 0xFFFFFFFFu : (__mmask32(1) << w) - 1u;
}
inline __mmask16 first16(index_t w) {
  return w <= 0 ? __mmask16(0) : w >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << w) - 1u);
}

// 32 consecutive values of a row (w of them valid) as 32 bfloat16 in a zmm.
inline __m512i row32(const void* src, bool bf16, index_t off, index_t w) {
  if (bf16) return _mm512_maskz_loadu_epi16(first32(w), static_cast<const std::uint16_t*>(src) + off);
  const float* f = static_cast<const float*>(src) + off;
  const __m512 lo = _mm512_maskz_loadu_ps(first16(w), f), hi = _mm512_maskz_loadu_ps(first16(w - 16), f + 16);
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);   // low half from lo, high half from hi
}

// 16 consecutive values of a row (w valid) as 16 bfloat16 in a ymm.
inline __m256i row16(const void* src, bool bf16, index_t off, index_t w) {
  if (bf16) return _mm256_maskz_loadu_epi16(first16(w), static_cast<const std::uint16_t*>(src) + off);
  return (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(first16(w), static_cast<const float*>(src) + off));
}

// Interleaves two 16-value rows (lo: the first row's values, hi: the second's) into 16 pairs
// (first row's value low, second's high): the "VNNI" pair layout of a B tile row.
inline __m512i pair_rows(__m256i lo, __m256i hi) {
  const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(pairs, _mm512_inserti64x4(_mm512_zextsi256_si512(lo), hi, 1));
}

}  // namespace

namespace {
// pack_a for a transposed A (stored K x M: op(A)(i, k) = src[k*ld + i]): for 16 rows i at a
// time, the pairs (k+2p, k+2p+1) of 16 i's are built as B rows are, then transposed so that
// tile row i holds its 16 pairs = 32 consecutive k.
void pack_a_trans(const void* src, bool bf16, index_t ld, index_t i0, index_t rows, index_t K,
                  index_t k0, index_t kc, std::uint16_t* dst) {
  for (index_t s = 0; s < kc; s += kStep, dst += kStepValues) {
    const index_t k = k0 + s;
    for (int half = 0; half < 2; ++half) {
      const index_t w = rows - half * 16;   // valid rows of this tile
      std::uint16_t* tile = dst + half * 512;
      if (w <= 0 || k >= K) {
        for (int r = 0; r < 16; ++r) _mm512_storeu_si512(tile + r * kStep, _mm512_setzero_si512());
        continue;
      }
      __m512i v[16];
      for (int p = 0; p < 16; ++p) {
        const index_t ka = k + 2 * p, kb = ka + 1;
        const index_t off = i0 + half * 16;
        const __m256i lo = ka < K ? row16(src, bf16, ka * ld + off, w) : _mm256_setzero_si256();
        const __m256i hi = kb < K ? row16(src, bf16, kb * ld + off, w) : _mm256_setzero_si256();
        v[p] = pair_rows(lo, hi);
      }
      transpose16x16_epi32(v);
      for (int r = 0; r < 16; ++r) _mm512_storeu_si512(tile + r * kStep, v[r]);
    }
  }
}
}  // namespace

void pack_a(const void* src, bool bf16, bool trans, index_t ld, index_t i0, index_t rows,
                index_t K, index_t k0, index_t kc, std::uint16_t* dst) {
  if (trans) return pack_a_trans(src, bf16, ld, i0, rows, K, k0, kc, dst);
  for (index_t s = 0; s < kc; s += kStep, dst += kStepValues) {
    const index_t k = k0 + s, w = K - k;   // valid k in this step: min(32, w)
    for (int r = 0; r < kBlock; ++r) {
      std::uint16_t* row = dst + (r / 16) * 512 + (r % 16) * kStep;
      if (r >= rows || w <= 0) {
        _mm512_storeu_si512(row, _mm512_setzero_si512());
      } else {
        _mm512_storeu_si512(row, row32(src, bf16, (i0 + r) * ld + k, w));
      }
    }
  }
}

namespace {
// pack_b for a transposed B (stored N x K: op(B)(k, j) = src[j*ld + k]): column j's 32
// consecutive k are one load, already as 16 pairs (k+2p, k+2p+1); transposing 16 columns' loads
// gives the 16 tile rows.
void pack_b_trans(const void* src, bool bf16, index_t ld, index_t j0, index_t cols, index_t K,
                  index_t k0, index_t kc, std::uint16_t* dst) {
  for (index_t s = 0; s < kc; s += kStep, dst += kStepValues) {
    const index_t k = k0 + s, w = K - k;   // valid k in this step: min(32, w)
    for (int half = 0; half < 2; ++half) {
      const index_t c0 = half * 16;
      std::uint16_t* tile = dst + half * 512;
      if (cols - c0 <= 0 || w <= 0) {
        for (int p = 0; p < 16; ++p) _mm512_storeu_si512(tile + p * 32, _mm512_setzero_si512());
        continue;
      }
      __m512i v[16];
      for (int c = 0; c < 16; ++c)
        v[c] = c0 + c < cols ? row32(src, bf16, (j0 + c0 + c) * ld + k, w) : _mm512_setzero_si512();
      transpose16x16_epi32(v);
      for (int p = 0; p < 16; ++p) _mm512_storeu_si512(tile + p * 32, v[p]);
    }
  }
}
}  // namespace

namespace {
// 16 consecutive values of a row (w valid) as float32: the values before rounding, or the
// bfloat16 ones widened.
inline __m512 wide16(const void* src, bool bf16, index_t off, index_t w) {
  if (!bf16) return _mm512_maskz_loadu_ps(first16(w), static_cast<const float*>(src) + off);
  const __m256i h = _mm256_maskz_loadu_epi16(first16(w), static_cast<const std::uint16_t*>(src) + off);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}
}  // namespace

void pack_b(const void* src, bool bf16, bool trans, index_t ld, index_t j0, index_t cols,
                index_t K, index_t k0, index_t kc, std::uint16_t* dst, float* sums) {
  if (trans) return pack_b_trans(src, bf16, ld, j0, cols, K, k0, kc, dst);
  __m512 acc[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  for (index_t s = 0; s < kc; s += kStep, dst += kStepValues) {
    for (int half = 0; half < 2; ++half) {
      const index_t c0 = half * 16, w = cols - c0;   // valid columns of this tile
      std::uint16_t* tile = dst + half * 512;
      for (int p = 0; p < 16; ++p) {   // tile row p: op(B) rows k and k+1
        const index_t k = k0 + s + 2 * p;
        std::uint16_t* row = tile + p * 32;
        if (w <= 0 || k >= K) {
          _mm512_storeu_si512(row, _mm512_setzero_si512());
        } else {
          const index_t off = k * ld + j0 + c0;
          const __m256i r0 = row16(src, bf16, off, w);
          const __m256i r1 = k + 1 < K ? row16(src, bf16, off + ld, w) : _mm256_setzero_si256();
          _mm512_storeu_si512(row, pair_rows(r0, r1));
          if (sums) {   // (the rows are in L1 now: the bias gradient of a dW product for free)
            acc[half] = _mm512_add_ps(acc[half], wide16(src, bf16, off, w));
            if (k + 1 < K) acc[half] = _mm512_add_ps(acc[half], wide16(src, bf16, off + ld, w));
          }
        }
      }
    }
  }
  if (sums) {
    _mm512_storeu_ps(sums, acc[0]);
    _mm512_storeu_ps(sums + 16, acc[1]);
  }
}

void store_bf16(const float* t, index_t rows, index_t cols, const float* bias, std::uint16_t* c,
                    index_t ldc) {
  const __mmask16 m0 = first16(cols), m1 = first16(cols - 16);
  const __m512 b0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
  const __m512 b1 = bias ? _mm512_maskz_loadu_ps(m1, bias + 16) : _mm512_setzero_ps();
  for (index_t r = 0; r < rows; ++r, t += kBlock, c += ldc) {
    __m512 v0 = _mm512_load_ps(t), v1 = _mm512_load_ps(t + 16);
    if (bias) {   // (no "+ 0" without one: -0.0 stays -0.0)
      v0 = _mm512_add_ps(v0, b0);
      v1 = _mm512_add_ps(v1, b1);
    }
    _mm256_mask_storeu_epi16(c, m0, round_to_bf16(v0));
    if (m1) _mm256_mask_storeu_epi16(c + 16, m1, round_to_bf16(v1));
  }
}

namespace {
// Rows [R0, R0+MR) x 32 columns of a block, in 2*MR zmm accumulators: per k pair, the two B
// vectors (16 columns each, VNNI pairs) are loaded once and each row's pair of A values is
// broadcast to both. a: the packed A block's first k step; c: row R0 of the block.
template <int R0, int MR>
inline void dp_rows(const std::uint16_t* a, const std::uint16_t* b, index_t steps, float* c, index_t ldc,
                    BlockInit init, const float* bias) {
  __m512 acc[MR][2];
  for (int i = 0; i < MR; ++i)
    for (int h = 0; h < 2; ++h)
      acc[i][h] = init == BlockInit::LoadC  ? _mm512_loadu_ps(c + i * ldc + 16 * h)
                  : init == BlockInit::Bias ? _mm512_loadu_ps(bias + 16 * h)
                                            : _mm512_setzero_ps();
  for (index_t s = 0; s < steps; ++s, a += kStepValues, b += kStepValues) {
#pragma GCC unroll 16
    for (int p = 0; p < 16; ++p) {
      const __m512bh b0 = (__m512bh)_mm512_load_si512(b + p * 32);
      const __m512bh b1 = (__m512bh)_mm512_load_si512(b + 512 + p * 32);
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        int pair;
        const int r = R0 + i;   // (a constant: the offsets below are displacements)
        std::memcpy(&pair, a + (r / 16) * 512 + (r % 16) * 32 + 2 * p, 4);
        const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
        acc[i][0] = _mm512_dpbf16_ps(acc[i][0], x, b0);
        acc[i][1] = _mm512_dpbf16_ps(acc[i][1], x, b1);
      }
    }
  }
  for (int i = 0; i < MR; ++i) {
    _mm512_storeu_ps(c + i * ldc, acc[i][0]);
    _mm512_storeu_ps(c + i * ldc + 16, acc[i][1]);
  }
}
}  // namespace

void dp_block_32x32(const BlockA& a, const std::uint16_t* b, index_t steps, float* c, index_t ldc,
                    BlockInit init, const float* bias) {
  // 12 + 12 + 8 rows: 24 accumulators, 2 B vectors and a broadcast fit the 32 zmm registers.
  // (vs four passes of 8 rows, interleaved runs on a Zen 4, 1 thread: 1024³ 1.03-1.05x, 256³
  // 0.99x; a prefetch of the next block's C rows made no difference.)
  dp_rows<0, 12>(a.p, b, steps, c, ldc, init, bias);
  dp_rows<12, 12>(a.p, b, steps, c + 12 * ldc, ldc, init, bias);
  dp_rows<24, 8>(a.p, b, steps, c + 24 * ldc, ldc, init, bias);
}

}  // namespace kilnet::cpu::bf16_detail
#endif
