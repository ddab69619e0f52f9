// gemm_bf16_amx.cpp — the AMX-BF16 tile kernel of gemm_bf16 (built with -mamx-tile -mamx-bf16;
// gemm_bf16.cpp calls it only when bf16_level() is "amx"). One call computes a 32x32 block of
// C in four 16x16 float32 accumulator tiles: per k step of 32, two A tiles and two B tiles are
// loaded and multiplied four times (TDPBF16PS, 16x16x32 multiply-adds each), so every tile
// loaded is used twice.
#include "gemm_bf16_internal.h"

#if defined(KILNET_HAVE_AMX_BUILD) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <immintrin.h>
#include <cstring>

namespace kilnet::cpu::bf16_detail {

namespace {
struct alignas(64) TileConfig {
  std::uint8_t palette_id;
  std::uint8_t start_row;
  std::uint8_t reserved[14];
  std::uint16_t colsb[16];   // bytes per row of each tile
  std::uint8_t rows[16];
};
}  // namespace

namespace {

inline std::uint16_t round_bf16(float f) {   // nearest even; a NaN stays a quiet NaN
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return std::uint16_t(u >> 16);
}

// op(src)(i, j) as bfloat16 bits.
inline std::uint16_t at(const void* src, bool bf16, bool trans, index_t ld, index_t i, index_t j) {
  const index_t off = trans ? j * ld + i : i * ld + j;
  return bf16 ? static_cast<const std::uint16_t*>(src)[off]
              : round_bf16(static_cast<const float*>(src)[off]);
}

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

}  // namespace

void amx_pack_a(const void* src, bool bf16, bool trans, index_t ld, index_t i0, index_t rows,
                index_t K, index_t k0, index_t kc, std::uint16_t* dst) {
  for (index_t s = 0; s < kc; s += kStep, dst += kStepValues) {
    const index_t k = k0 + s, w = K - k;   // valid k in this step: min(32, w)
    for (int r = 0; r < kBlock; ++r) {
      std::uint16_t* row = dst + (r / 16) * 512 + (r % 16) * kStep;
      if (r >= rows || w <= 0) {
        _mm512_storeu_si512(row, _mm512_setzero_si512());
      } else if (!trans) {
        _mm512_storeu_si512(row, row32(src, bf16, (i0 + r) * ld + k, w));
      } else {
        for (int q = 0; q < kStep; ++q) row[q] = q < w ? at(src, bf16, true, ld, i0 + r, k + q) : 0;
      }
    }
  }
}

void amx_pack_b(const void* src, bool bf16, bool trans, index_t ld, index_t j0, index_t cols,
                index_t K, index_t k0, index_t kc, std::uint16_t* dst) {
  // Interleaves two 16-value rows (k even in the low half, k odd in the high half) into pairs.
  const __m512i pairs = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (index_t s = 0; s < kc; s += kStep, dst += kStepValues) {
    for (int half = 0; half < 2; ++half) {
      const index_t c0 = half * 16, w = cols - c0;   // valid columns of this tile
      std::uint16_t* tile = dst + half * 512;
      for (int p = 0; p < 16; ++p) {   // tile row p: op(B) rows k and k+1
        const index_t k = k0 + s + 2 * p;
        std::uint16_t* row = tile + p * 32;
        if (w <= 0 || k >= K) {
          _mm512_storeu_si512(row, _mm512_setzero_si512());
        } else if (!trans) {
          const __m256i r0 = row16(src, bf16, k * ld + j0 + c0, w);
          const __m256i r1 = k + 1 < K ? row16(src, bf16, (k + 1) * ld + j0 + c0, w) : _mm256_setzero_si256();
          const __m512i both = _mm512_inserti64x4(_mm512_zextsi256_si512(r0), r1, 1);
          _mm512_storeu_si512(row, _mm512_permutexvar_epi16(pairs, both));
        } else {
          for (int c = 0; c < 16; ++c) {
            const bool ok = c < w;
            row[2 * c] = ok ? at(src, bf16, true, ld, k, j0 + c0 + c) : 0;
            row[2 * c + 1] = ok && k + 1 < K ? at(src, bf16, true, ld, k + 1, j0 + c0 + c) : 0;
          }
        }
      }
    }
  }
}

void amx_begin() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {   // 0-3: C (16 x 16 float32), 4-5: A, 6-7: B (16 x 64 bytes)
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  // Inline asm with the whole struct as its operand: GCC 12 treats _tile_loadconfig's pointer
  // as not read and drops the stores above (the tiles then stay unconfigured: SIGILL).
  __asm__ volatile("ldtilecfg %0" : : "m"(cfg) : "memory");
}

void amx_end() { _tile_release(); }

void amx_block_32x32(const AmxA& a, const std::uint16_t* b, index_t steps, float* c, index_t ldc,
                     AmxInit init, const float* bias) {
  const index_t ld = ldc * index_t(sizeof(float));   // C row stride, bytes
  switch (init) {
    case AmxInit::Zero:
      _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
      break;
    case AmxInit::LoadC:   // accumulate onto C (beta == 1, or a later K block)
      _tile_loadd(0, c, ld); _tile_loadd(1, c + 16, ld);
      _tile_loadd(2, c + 16 * ldc, ld); _tile_loadd(3, c + 16 * ldc + 16, ld);
      break;
    case AmxInit::Bias:    // every row starts as the bias: a row stride of 0 repeats it
      _tile_loadd(0, bias, 0); _tile_loadd(1, bias + 16, 0);
      _tile_loadd(2, bias, 0); _tile_loadd(3, bias + 16, 0);
      break;
  }
  const std::uint16_t* a0 = a.p;
  const std::uint16_t* a1 = a.p + a.half;
  for (index_t s = 0; s < steps; ++s, a0 += a.step, a1 += a.step, b += kStepValues) {
    _tile_loadd(4, a0, a.stride);
    _tile_loadd(6, b, 64);
    _tile_loadd(5, a1, a.stride);
    _tile_loadd(7, b + 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, ld);
  _tile_stored(1, c + 16, ld);
  _tile_stored(2, c + 16 * ldc, ld);
  _tile_stored(3, c + 16 * ldc + 16, ld);
}

}  // namespace kilnet::cpu::bf16_detail
#endif
