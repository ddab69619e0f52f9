// gemm_avx512.cpp — the AVX-512 micro-kernel of the SGEMM and its packers (built with the AVX-512
// flags; gemm.cpp uses them only when use_avx512() is true and N > 16). See gemm_internal.h for
// the contracts. No std:: templates here: their out-of-line copies would be shared with the
// portable translation units at link time.
//
// The tile is 12 rows x 32 columns of C: 24 zmm accumulators, 2 zmm for the k-th row of the B
// sliver and 1 for a broadcast A element: 27 of the 32 registers, none spilled. Per k: 2 aligned
// loads of B, 12 broadcasts, 24 FMAs — 12 cycles of FMAs on two 512-bit FMA ports, 14 loads on
// two load ports: FMA-bound. A packed (12 values per k, zero past the valid rows) has its
// operands at fixed offsets from one pointer; A read in place (narrow panels, as in the AVX2
// kernel) at 12 offsets held in registers; B slivers are 32 values per k, 64-byte
// aligned, zero past column n.
#include "gemm_internal.h"

#if defined(KILNET_HAVE_AVX512_BUILD) && defined(__AVX512F__)
#include <immintrin.h>
#include "gemm_prefetch.h"

namespace kilnet::cpu::gemm_detail {

namespace {

static_assert(MR512 == 12 && NR512 == 32, "the kernel below is written for 12x32 tiles");

inline __mmask16 first_lanes(int w) {   // lanes 0..w-1 (w may be <= 0 or >= 16)
  return w <= 0 ? __mmask16(0) : w >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << w) - 1u);
}

// One row of a tile's rank-1 update: broadcast a[r] against the two B vectors.
#define KILNET_ROW(r)                                                   \
  {                                                                     \
    const __m512 ar = _mm512_set1_ps(a[kPacked ? r : o[r]]);            \
    c##r##0 = _mm512_fmadd_ps(ar, b0, c##r##0);                         \
    c##r##1 = _mm512_fmadd_ps(ar, b1, c##r##1);                         \
  }

// The tiles of a sweep. kPacked: A is a packed sliver (row r of step k at a[k*12 + r]); else A
// is read in place through its strides, rows past m aliasing row m-1 (never read out of bounds).
template <bool kPacked>
void tiles(index_t kc, const float* a0, index_t rs_a, index_t cs_a, const float* b0p, float* c,
           index_t ldc, int m, int n, const Epilogue& ep, const Sweep& sw) {
  index_t o[MR512];
  for (int r = 0; r < MR512; ++r) o[r] = (r < m ? r : m - 1) * rs_a;
  const index_t step = kPacked ? MR512 : cs_a;
  const bool scale = ep.alpha != 1.f, read_c = ep.beta != 0.f, beta1 = ep.beta == 1.f;
  const __mmask16 mask0 = first_lanes(n), mask1 = first_lanes(n - 16);
  for (index_t t = 0; t < sw.count; ++t) {
    const float* a = a0 + t * sw.a_step;
    const float* b = b0p + t * sw.b_step;
    float* ct = c + t * sw.c_step;
    // Warm this tile's C lines while the FMAs run (they are read or written only at the end).
    for (int i = 0; i < m; ++i) {
      _mm_prefetch(reinterpret_cast<const char*>(ct + i * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(ct + i * ldc + 16), _MM_HINT_T0);
    }
    __m512 c00 = _mm512_setzero_ps(), c01 = _mm512_setzero_ps(), c10 = _mm512_setzero_ps(),
           c11 = _mm512_setzero_ps(), c20 = _mm512_setzero_ps(), c21 = _mm512_setzero_ps(),
           c30 = _mm512_setzero_ps(), c31 = _mm512_setzero_ps(), c40 = _mm512_setzero_ps(),
           c41 = _mm512_setzero_ps(), c50 = _mm512_setzero_ps(), c51 = _mm512_setzero_ps(),
           c60 = _mm512_setzero_ps(), c61 = _mm512_setzero_ps(), c70 = _mm512_setzero_ps(),
           c71 = _mm512_setzero_ps(), c80 = _mm512_setzero_ps(), c81 = _mm512_setzero_ps(),
           c90 = _mm512_setzero_ps(), c91 = _mm512_setzero_ps(), c100 = _mm512_setzero_ps(),
           c101 = _mm512_setzero_ps(), c110 = _mm512_setzero_ps(), c111 = _mm512_setzero_ps();
    // (no software prefetch of this sliver's A: the hardware prefetcher follows it; the
    // prefetch stream, one line every 4 k, is the driver's next block)
#define KILNET_STEP                                                                        \
    {                                                                                      \
      const __m512 b0 = _mm512_load_ps(b), b1 = _mm512_load_ps(b + 16);                    \
      KILNET_ROW(0) KILNET_ROW(1) KILNET_ROW(2) KILNET_ROW(3) KILNET_ROW(4) KILNET_ROW(5)  \
      KILNET_ROW(6) KILNET_ROW(7) KILNET_ROW(8) KILNET_ROW(9) KILNET_ROW(10) KILNET_ROW(11)\
      a += step;                                                                           \
      b += NR512;                                                                          \
    }
    KILNET_GEMM_K_LOOP(kc, sw.pf, KILNET_STEP)
#undef KILNET_STEP

    // Epilogue on the valid m x n corner: C = alpha*acc + bias + beta*C. With alpha == 1 and
    // beta in {0, 1} (every call the layers make) it is adds only. Masked loads and stores
    // touch only the n valid columns of C and of the bias.
    const float* bt = ep.bias ? ep.bias + t * sw.bias_step : nullptr;
    const __m512 bias0 = bt ? _mm512_maskz_loadu_ps(mask0, bt) : _mm512_setzero_ps();
    const __m512 bias1 = bt ? _mm512_maskz_loadu_ps(mask1, bt + 16) : _mm512_setzero_ps();
    const __m512 alpha = _mm512_set1_ps(ep.alpha), beta = _mm512_set1_ps(ep.beta);
    auto finish = [&](float* ci, __m512 acc, __m512 bv, __mmask16 mk) {
      acc = scale ? _mm512_fmadd_ps(acc, alpha, bv) : _mm512_add_ps(acc, bv);
      if (read_c) {
        const __m512 cv = _mm512_maskz_loadu_ps(mk, ci);
        acc = beta1 ? _mm512_add_ps(cv, acc) : _mm512_fmadd_ps(beta, cv, acc);
      }
      _mm512_mask_storeu_ps(ci, mk, acc);
    };
    auto row = [&](int r, __m512 lo, __m512 hi) {
      if (r >= m) return;
      float* ci = ct + r * ldc;
      finish(ci, lo, bias0, mask0);
      if (mask1) finish(ci + 16, hi, bias1, mask1);
    };
    row(0, c00, c01); row(1, c10, c11); row(2, c20, c21); row(3, c30, c31);
    row(4, c40, c41); row(5, c50, c51); row(6, c60, c61); row(7, c70, c71);
    row(8, c80, c81); row(9, c90, c91); row(10, c100, c101); row(11, c110, c111);
  }
}

#undef KILNET_ROW

}  // namespace

void ukernel_12x32_avx512(index_t kc, const float* a, index_t rs_a, index_t cs_a, const float* b,
                          float* c, index_t ldc, int m, int n, const Epilogue& ep, const Sweep& sw) {
  if (rs_a == 1 && cs_a == MR512) tiles<true>(kc, a, rs_a, cs_a, b, c, ldc, m, n, ep, sw);
  else tiles<false>(kc, a, rs_a, cs_a, b, c, ldc, m, n, ep, sw);
}

// op(A) sliver -> 12 values per k (zero past row w). Rows along k contiguous (cs == 1, A not
// transposed): one masked gather of the 12 rows per k. The 12 values of one k contiguous
// (rs == 1, A transposed): one masked load and store per k. Otherwise scalar loops.
void pack_a_12_avx512(const float* src, index_t rs, index_t cs, int w, index_t kc, float* dst) {
  const __mmask16 valid = first_lanes(w), rowmask = first_lanes(MR512);
  if (rs == 1) {
    for (index_t k = 0; k < kc; ++k)
      _mm512_mask_storeu_ps(dst + k * MR512, rowmask, _mm512_maskz_loadu_ps(valid, src + k * cs));
    return;
  }
  if (cs == 1 && rs <= (index_t(1) << 31) / 16) {   // row offsets fit the gather's int32 lanes
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i idx = _mm512_mullo_epi32(lane, _mm512_set1_epi32(int(rs)));
    for (index_t k = 0; k < kc; ++k) {
      const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), valid, idx, src + k, 4);
      _mm512_mask_storeu_ps(dst + k * MR512, rowmask, v);
    }
    return;
  }
  for (index_t k = 0; k < kc; ++k)
    for (int r = 0; r < MR512; ++r) dst[k * MR512 + r] = r < w ? src[r * rs + k * cs] : 0.f;
}

// op(B) sliver -> 32 values per k (zero past column w), 64-byte aligned rows. Columns contiguous
// (cs == 1, B not transposed): two masked loads and aligned stores per k. B transposed (rs == 1:
// each column contiguous along k): 8x8 transposes (gathers were 40% of a 32x21632x10 call).
void pack_b_32_avx512(const float* src, index_t rs, index_t cs, int w, index_t kc, float* dst) {
  const __mmask16 m0 = first_lanes(w), m1 = first_lanes(w - 16);
  if (cs == 1) {
    for (index_t k = 0; k < kc; ++k) {
      const float* s = src + k * rs;
      _mm512_store_ps(dst + k * NR512, _mm512_maskz_loadu_ps(m0, s));
      _mm512_store_ps(dst + k * NR512 + 16, _mm512_maskz_loadu_ps(m1, s + 16));
    }
    return;
  }
  if (rs == 1) {   // B transposed: 8x8 transposes in ymm registers, as pack_bt_16_avx2 does
    for (index_t k = 0; k < kc; k += 8) {
      const int kw = kc - k < 8 ? int(kc - k) : 8;
      const __mmask8 km = __mmask8((1u << kw) - 1u);
      for (int c0 = 0; c0 < NR512; c0 += 8) {
        __m256 r[8];
        for (int i = 0; i < 8; ++i)   // column c0+i of op(B), k..k+7; zero past column w
          r[i] = c0 + i < w ? _mm256_maskz_loadu_ps(km, src + (c0 + i) * cs + k) : _mm256_setzero_ps();
        const __m256 u0 = _mm256_unpacklo_ps(r[0], r[1]), u1 = _mm256_unpackhi_ps(r[0], r[1]);
        const __m256 u2 = _mm256_unpacklo_ps(r[2], r[3]), u3 = _mm256_unpackhi_ps(r[2], r[3]);
        const __m256 u4 = _mm256_unpacklo_ps(r[4], r[5]), u5 = _mm256_unpackhi_ps(r[4], r[5]);
        const __m256 u6 = _mm256_unpacklo_ps(r[6], r[7]), u7 = _mm256_unpackhi_ps(r[6], r[7]);
        const __m256 v0 = _mm256_shuffle_ps(u0, u2, 0x44), v1 = _mm256_shuffle_ps(u0, u2, 0xEE);
        const __m256 v2 = _mm256_shuffle_ps(u1, u3, 0x44), v3 = _mm256_shuffle_ps(u1, u3, 0xEE);
        const __m256 v4 = _mm256_shuffle_ps(u4, u6, 0x44), v5 = _mm256_shuffle_ps(u4, u6, 0xEE);
        const __m256 v6 = _mm256_shuffle_ps(u5, u7, 0x44), v7 = _mm256_shuffle_ps(u5, u7, 0xEE);
        __m256 t[8];
        t[0] = _mm256_permute2f128_ps(v0, v4, 0x20); t[4] = _mm256_permute2f128_ps(v0, v4, 0x31);
        t[1] = _mm256_permute2f128_ps(v1, v5, 0x20); t[5] = _mm256_permute2f128_ps(v1, v5, 0x31);
        t[2] = _mm256_permute2f128_ps(v2, v6, 0x20); t[6] = _mm256_permute2f128_ps(v2, v6, 0x31);
        t[3] = _mm256_permute2f128_ps(v3, v7, 0x20); t[7] = _mm256_permute2f128_ps(v3, v7, 0x31);
        for (int q = 0; q < kw; ++q) _mm256_store_ps(dst + (k + q) * NR512 + c0, t[q]);
      }
    }
    return;
  }
  for (index_t k = 0; k < kc; ++k)
    for (int j = 0; j < NR512; ++j) dst[k * NR512 + j] = j < w ? src[k * rs + j * cs] : 0.f;
}

}  // namespace kilnet::cpu::gemm_detail

#endif  // AVX-512 build
