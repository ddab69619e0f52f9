// attention_amx.cpp — the attention work items of attention_driver.h with bfloat16 products on
// AMX tiles (AttnShape::bf16 set and bf16_level() == "amx"; attention.cpp chooses). Only the gemm
// differs from the AVX-512 items: each product's operands are rounded to bfloat16 into tiles as
// it is called (VCVTNE2PS2BF16: nearest even, denormals flushed) and multiplied with float32 sums
// (TDPBF16PS); scores, the online softmax and every output stay float32. Packing per call costs
// O((M + N) K) against the O(M N K) of the product, and the tiles make the product nearly free,
// which leaves the softmax's exponentials as the main cost (as in FlashAttention on GPUs).
#include "attention_internal.h"

#if defined(KILNET_HAVE_AMX_BUILD) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__)
#include <immintrin.h>
#include <cstdint>
#include <cstdlib>
#include "attention_driver.h"
#include "attention_kern_avx512.h"
#include "gemm_bf16_internal.h"

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

// Where a 16 x 16 block of C is, and whether it lies wholly inside C (then the tiles load and
// store it in place; else through a zero-padded buffer and the valid corner is copied).
struct CBlock {
  float* c;
  index_t rows, cols;   // valid part, 1..16 each
  bool whole() const { return rows == 16 && cols == 16; }
};

void corner_in(const CBlock& b, index_t c_rs, float* buf) {
  for (index_t r = 0; r < 16; ++r)
    _mm512_store_ps(buf + 16 * r, r < b.rows ? _mm512_maskz_loadu_ps(lanes(b.cols), b.c + r * c_rs)
                                             : _mm512_setzero_ps());
}

void corner_out(const CBlock& b, index_t c_rs, const float* buf) {
  for (index_t r = 0; r < b.rows; ++r) _mm512_mask_storeu_ps(b.c + r * c_rs, lanes(b.cols), _mm512_load_ps(buf + 16 * r));
}

// Tile numbers must be immediates: 0-3 accumulate C blocks (ti, tj), (ti, tj+1), (ti+1, tj),
// (ti+1, tj+1); 4-5 hold A tiles, 6-7 B tiles.
#define KILNET_C_IN(T)                                                    \
  if (use[T]) {                                                           \
    if (!acc) _tile_zero(T);                                              \
    else if (cb[T].whole()) _tile_loadd(T, cb[T].c, ld);                  \
    else { corner_in(cb[T], c_rs, buf[T]); _tile_loadd(T, buf[T], 64); }  \
  }
#define KILNET_C_OUT(T)                                                   \
  if (use[T]) {                                                           \
    if (cb[T].whole()) _tile_stored(T, cb[T].c, ld);                      \
    else { _tile_stored(T, buf[T], 64); corner_out(cb[T], c_rs, buf[T]); } \
  }

void gemm_amx(index_t M, index_t N, index_t K, const float* a, index_t a_rs, index_t a_ks, const float* b,
              index_t b_ks, float* c, index_t c_rs, bool acc) {
  if (M <= 0 || N <= 0) return;
  const index_t mt = (M + 15) / 16, nt = (N + 15) / 16, ks = (K + 31) / 32;
  thread_local TileBuf abuf, bbuf;
  std::uint16_t* Ap = abuf.get(mt * ks * kTile);
  std::uint16_t* Bp = bbuf.get(ks * nt * kTile);
  if (K <= 0 || !Ap || !Bp || (a_ks != 1 && a_rs != 1))   // (never from the driver; float32 then)
    return gemm_avx512(M, N, K, a, a_rs, a_ks, b, b_ks, c, c_rs, acc);
  pack_a(M, K, a, a_rs, a_ks, Ap);
  pack_b(K, N, b, b_ks, Bp);
  const index_t ld = c_rs * index_t(sizeof(float));
  alignas(64) float buf[4][256];
  for (index_t ti = 0; ti < mt; ti += 2)
    for (index_t tj = 0; tj < nt; tj += 2) {
      const bool m2 = ti + 1 < mt, n2 = tj + 1 < nt;
      const bool use[4] = {true, n2, m2, m2 && n2};
      CBlock cb[4];
      for (int t = 0; t < 4; ++t) {
        const index_t i = ti + t / 2, j = tj + t % 2;
        cb[t] = {c + 16 * i * c_rs + 16 * j, M - 16 * i < 16 ? M - 16 * i : 16, N - 16 * j < 16 ? N - 16 * j : 16};
      }
      KILNET_C_IN(0) KILNET_C_IN(1) KILNET_C_IN(2) KILNET_C_IN(3)
      const std::uint16_t* a0 = Ap + ti * ks * kTile;
      const std::uint16_t* a1 = a0 + ks * kTile;
      for (index_t s = 0; s < ks; ++s) {
        const std::uint16_t* bs = Bp + (s * nt + tj) * kTile;
        _tile_loadd(4, a0 + s * kTile, 64);
        _tile_loadd(6, bs, 64);
        _tile_dpbf16ps(0, 4, 6);
        if (n2) {
          _tile_loadd(7, bs + kTile, 64);
          _tile_dpbf16ps(1, 4, 7);
        }
        if (m2) {
          _tile_loadd(5, a1 + s * kTile, 64);
          _tile_dpbf16ps(2, 5, 6);
          if (n2) _tile_dpbf16ps(3, 5, 7);
        }
      }
      KILNET_C_OUT(0) KILNET_C_OUT(1) KILNET_C_OUT(2) KILNET_C_OUT(3)
    }
}
#undef KILNET_C_IN
#undef KILNET_C_OUT

struct Amx {
  static constexpr auto transpose = &transpose_avx512;
  static constexpr auto gemm = &gemm_amx;
  static constexpr auto exp_cols = &exp_cols_avx512;
  static constexpr auto softmax_step = &softmax_step_avx512;
  static constexpr auto dsoftmax = &dsoftmax_avx512;
};

// The tile configuration (every tile 16 rows x 64 bytes, gemm_bf16's) is loaded per work item
// and released after it.
void forward_amx(const AttnShape& s, const float* q, const float* k, const float* v, const AttnMask& m,
                 float* out, float* lse, index_t b, index_t n, index_t qt0, index_t qt1, float* work) {
  bf16_detail::amx_begin();
  forward_item<Amx>(s, q, k, v, m, out, lse, b, n, qt0, qt1, work);
  bf16_detail::amx_end();
}

void backward_amx(const AttnShape& s, const float* q, const float* k, const float* v, const AttnMask& m,
                  const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv,
                  index_t b, index_t kh, float* work) {
  bf16_detail::amx_begin();
  backward_item<Amx>(s, q, k, v, m, out, lse, dout, dq, dk, dv, b, kh, work);
  bf16_detail::amx_end();
}

}  // namespace

const Items& amx_items() {
  static const Items t{&forward_amx, &backward_amx};
  return t;
}

}  // namespace kilnet::cpu::attn_detail

#endif
