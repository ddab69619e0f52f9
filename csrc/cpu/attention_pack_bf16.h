// attention_pack_bf16.h — the bfloat16 packers of the attention items with bfloat16 products:
// a float32 operand rounded (VCVTNE2PS2BF16: nearest even, denormals flushed) into the tile
// layouts that AMX (attention_amx.cpp) and VDPBF16PS (attention_avx512bf16.cpp) both read. In
// an anonymous namespace, included only by files built with -mavx512bf16, after
// attention_kern_avx512.h (lanes, transpose16).
#pragma once
#include <immintrin.h>
#include <cstdint>
#include <cstdlib>
#include "attention_internal.h"

namespace kilnet::cpu::attn_detail {
namespace {

constexpr index_t kTile = 512;   // bfloat16 values of a 16 x 32 (A) or 16 x 16-pair (B) tile

// 32 floats (x: the first 16, y: the next 16) as 32 bfloat16.
inline __m512i bf16x32(__m512 x, __m512 y) {
  return reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(y, x));
}

// A thread's packing buffer, 64-byte aligned, grown on demand (raw memory: no std::vector
// template bodies compiled with this file's ISA flags).
struct TileBuf {
  std::uint16_t* p = nullptr;
  index_t n = 0;
  ~TileBuf() { std::free(p); }
  std::uint16_t* get(index_t want) {
    if (want > n) {
      std::free(p);
      p = static_cast<std::uint16_t*>(std::aligned_alloc(64, size_t(want) * 2));   // want % 32 == 0
      n = p ? want : 0;
    }
    return p;
  }
};

// A (M x K) into tiles Ap[(ti * ks + s) * kTile]: row r of tile (ti, s) is A(16 ti + r, 32 s ..
// 32 s + 31), zeros past M and K. Rows of A contiguous (a_ks == 1) or its columns (a_rs == 1:
// 16 x 16 transposes).
void pack_a(index_t M, index_t K, const float* a, index_t a_rs, index_t a_ks, std::uint16_t* Ap) {
  const index_t mt = (M + 15) / 16, ks = (K + 31) / 32;
  if (a_ks == 1) {
    for (index_t r = 0; r < mt * 16; ++r) {
      std::uint16_t* row = Ap + (r / 16) * ks * kTile + (r % 16) * 32;
      for (index_t s = 0; s < ks; ++s, row += kTile) {
        if (r >= M) {
          _mm512_store_si512(row, _mm512_setzero_si512());
          continue;
        }
        const index_t k0 = 32 * s, w = K - k0;
        const float* src = a + r * a_rs + k0;
        const __m512 x = _mm512_maskz_loadu_ps(lanes(w < 16 ? w : 16), src);
        const __m512 y = w > 16 ? _mm512_maskz_loadu_ps(lanes(w - 16 < 16 ? w - 16 : 16), src + 16)
                                : _mm512_setzero_ps();
        _mm512_store_si512(row, bf16x32(x, y));
      }
    }
    return;
  }
  for (index_t ti = 0; ti < mt; ++ti) {
    const index_t m0 = 16 * ti;
    const __mmask16 mm = lanes(M - m0 < 16 ? M - m0 : 16);
    for (index_t s = 0; s < ks; ++s) {
      __m512 lo[16], hi[16];
      for (int kk = 0; kk < 16; ++kk) {
        const index_t k = 32 * s + kk;
        lo[kk] = k < K ? _mm512_maskz_loadu_ps(mm, a + k * a_ks + m0) : _mm512_setzero_ps();
        hi[kk] = k + 16 < K ? _mm512_maskz_loadu_ps(mm, a + (k + 16) * a_ks + m0) : _mm512_setzero_ps();
      }
      transpose16(lo);
      transpose16(hi);
      std::uint16_t* tile = Ap + (ti * ks + s) * kTile;
      for (int r = 0; r < 16; ++r) _mm512_store_si512(tile + 32 * r, bf16x32(lo[r], hi[r]));
    }
  }
}

// B (K x N, rows contiguous) into tiles Bp[(s * nt + tj) * kTile] in the pair layout: row p of
// tile (s, tj) holds, for its 16 columns c, B(32 s + 2p, c) and B(32 s + 2p + 1, c) side by side.
void pack_b(index_t K, index_t N, const float* b, index_t b_ks, std::uint16_t* Bp) {
  const index_t ks = (K + 31) / 32, nt = (N + 15) / 16;
  alignas(64) static const std::uint16_t kPairs[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                                        8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i pairs = _mm512_load_si512(kPairs);
  for (index_t s = 0; s < ks; ++s)
    for (index_t tj = 0; tj < nt; ++tj) {
      const index_t c0 = 16 * tj;
      const __mmask16 mc = lanes(N - c0 < 16 ? N - c0 : 16);
      std::uint16_t* tile = Bp + (s * nt + tj) * kTile;
      for (int p = 0; p < 16; ++p) {
        const index_t k = 32 * s + 2 * p;
        const __m512 x = k < K ? _mm512_maskz_loadu_ps(mc, b + k * b_ks + c0) : _mm512_setzero_ps();
        const __m512 y = k + 1 < K ? _mm512_maskz_loadu_ps(mc, b + (k + 1) * b_ks + c0) : _mm512_setzero_ps();
        _mm512_store_si512(tile + 32 * p, _mm512_permutexvar_epi16(pairs, bf16x32(x, y)));
      }
    }
}

// Both operands of C (M x N) (+)= A (M x K) B (K x N) packed into this thread's buffers (*Ap:
// mt * ks tiles, *Bp: ks * nt tiles). False (nothing packed) when K is 0, a buffer cannot be
// had, or A is neither row- nor column-contiguous: the caller runs the float32 gemm then.
bool pack_operands(index_t M, index_t N, index_t K, const float* a, index_t a_rs, index_t a_ks, const float* b,
                   index_t b_ks, const std::uint16_t** Ap, const std::uint16_t** Bp) {
  const index_t mt = (M + 15) / 16, nt = (N + 15) / 16, ks = (K + 31) / 32;
  thread_local TileBuf abuf, bbuf;
  std::uint16_t* ap = abuf.get(mt * ks * kTile);
  std::uint16_t* bp = bbuf.get(ks * nt * kTile);
  if (K <= 0 || !ap || !bp || (a_ks != 1 && a_rs != 1)) return false;   // (never from the driver)
  pack_a(M, K, a, a_rs, a_ks, ap);
  pack_b(K, N, b, b_ks, bp);
  *Ap = ap;
  *Bp = bp;
  return true;
}

}  // namespace
}  // namespace kilnet::cpu::attn_detail
