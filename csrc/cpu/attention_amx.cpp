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
#include "attention_pack_bf16.h"
#include "gemm_bf16_internal.h"

namespace kilnet::cpu::attn_detail {
namespace {

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
  const std::uint16_t *Ap, *Bp;
  if (!pack_operands(M, N, K, a, a_rs, a_ks, b, b_ks, &Ap, &Bp))
    return gemm_avx512(M, N, K, a, a_rs, a_ks, b, b_ks, c, c_rs, acc);
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
