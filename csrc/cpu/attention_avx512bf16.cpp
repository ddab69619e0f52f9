// attention_avx512bf16.cpp — the attention work items of attention_driver.h with bfloat16
// products on VDPBF16PS (AttnShape::bf16 set and bf16_level() == "avx512bf16": AVX512-BF16
// without AMX, as on AMD Zen 4; attention.cpp chooses). As attention_amx.cpp, only the gemm
// differs from the AVX-512 items: the operands are rounded to bfloat16 into the same tile layout
// (attention_pack_bf16.h) and multiplied with float32 sums, two multiply-adds per float32 lane
// and instruction; scores, the online softmax and every output stay float32.
#include "attention_internal.h"

#if defined(KILNET_HAVE_AVX512BF16_BUILD) && defined(__AVX512BF16__)
#include <immintrin.h>
#include <cstdint>
#include <cstring>
#include "attention_driver.h"
#include "attention_kern_avx512.h"
#include "attention_pack_bf16.h"

namespace kilnet::cpu::attn_detail {
namespace {

// C rows [0, rows) x columns [0, cols) (cols <= 16 NV) (+)= 8 rows of packed A x NV column tiles
// of packed B. ar: row 0 of the 8 in the first k step (tile rows are 32 values apart, k steps
// kTile); bt: the first column tile in the first k step (column tiles kTile apart, k steps
// b_step). Rows past `rows` are computed from A's zero padding and not stored.
template <int NV>
void dp_rows8(const std::uint16_t* ar, const std::uint16_t* bt, index_t ks, index_t b_step, float* c,
              index_t c_rs, index_t rows, index_t cols, bool acc) {
  __mmask16 m[NV];
  for (int v = 0; v < NV; ++v) m[v] = lanes(cols - 16 * v < 16 ? cols - 16 * v : 16);
  __m512 s[8][NV];
  for (int i = 0; i < 8; ++i)
    for (int v = 0; v < NV; ++v)
      s[i][v] = acc && i < rows ? _mm512_maskz_loadu_ps(m[v], c + i * c_rs + 16 * v) : _mm512_setzero_ps();
  for (index_t k = 0; k < ks; ++k, ar += kTile, bt += b_step) {
#pragma GCC unroll 16
    for (int p = 0; p < 16; ++p) {
      __m512bh bv[NV];
      for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_load_si512(bt + v * kTile + 32 * p);
#pragma GCC unroll 8
      for (int i = 0; i < 8; ++i) {
        int pair;
        std::memcpy(&pair, ar + 32 * i + 2 * p, 4);
        const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
        for (int v = 0; v < NV; ++v) s[i][v] = _mm512_dpbf16_ps(s[i][v], x, bv[v]);
      }
    }
  }
  for (int i = 0; i < 8 && i < rows; ++i)
    for (int v = 0; v < NV; ++v) _mm512_mask_storeu_ps(c + i * c_rs + 16 * v, m[v], s[i][v]);
}

void gemm_dp(index_t M, index_t N, index_t K, const float* a, index_t a_rs, index_t a_ks, const float* b,
             index_t b_ks, float* c, index_t c_rs, bool acc) {
  if (M <= 0 || N <= 0) return;
  const index_t nt = (N + 15) / 16, ks = (K + 31) / 32;
  const std::uint16_t *Ap, *Bp;
  if (!pack_operands(M, N, K, a, a_rs, a_ks, b, b_ks, &Ap, &Bp))
    return gemm_avx512(M, N, K, a, a_rs, a_ks, b, b_ks, c, c_rs, acc);
  for (index_t r0 = 0; r0 < M; r0 += 8) {   // 8 rows: the upper or lower half of a 16-row tile
    const std::uint16_t* ar = Ap + (r0 / 16) * ks * kTile + (r0 % 16) * 32;
    const index_t rows = M - r0 < 8 ? M - r0 : 8;
    for (index_t tj = 0; tj < nt; tj += 2) {
      const index_t c0 = 16 * tj, cols = N - c0;
      if (cols > 16) dp_rows8<2>(ar, Bp + tj * kTile, ks, nt * kTile, c + r0 * c_rs + c0, c_rs, rows, cols, acc);
      else dp_rows8<1>(ar, Bp + tj * kTile, ks, nt * kTile, c + r0 * c_rs + c0, c_rs, rows, cols, acc);
    }
  }
}

struct Dp {
  static constexpr auto transpose = &transpose_avx512;
  static constexpr auto gemm = &gemm_dp;
  static constexpr auto exp_cols = &exp_cols_avx512;
  static constexpr auto softmax_step = &softmax_step_avx512;
  static constexpr auto dsoftmax = &dsoftmax_avx512;
};

void forward_dp(const AttnShape& s, const float* q, const float* k, const float* v, const AttnMask& m,
                float* out, float* lse, index_t b, index_t n, index_t qt0, index_t qt1, float* work) {
  forward_item<Dp>(s, q, k, v, m, out, lse, b, n, qt0, qt1, work);
}

void backward_dp(const AttnShape& s, const float* q, const float* k, const float* v, const AttnMask& m,
                 const float* out, const float* lse, const float* dout, float* dq, float* dk, float* dv,
                 index_t b, index_t kh, float* work) {
  backward_item<Dp>(s, q, k, v, m, out, lse, dout, dq, dk, dv, b, kh, work);
}

}  // namespace

const Items& avx512bf16_items() {
  static const Items t{&forward_dp, &backward_dp};
  return t;
}

}  // namespace kilnet::cpu::attn_detail
#endif
