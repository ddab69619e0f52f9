// lanes_avx512.h — 16 lanes (zmm) or 8 (ymm, AVX-512VL) behind one interface, for the kernels
// with examples in the lanes (the fused Conv2D -> Dense forward and DP-SGD's per-example pass): a
// group of up to 8 examples runs on 8-lane vectors. On Zen 4 an 8-lane FMA costs half a 16-lane
// one (a zmm FMA is two ymm halves), so a batch of 33 costs 2.5 groups instead of 3 (Poisson
// batches, DP-SGD's, end on such remainders about half the time); where 512-bit FMAs are native
// it costs what a 16-lane group would. In an anonymous namespace, included only by files built
// with the AVX-512 flags.
#pragma once
#include <immintrin.h>

// GCC 12's _mm512_castps512_ps256 passes an undefined vector as the unused merge source: a false
// "used uninitialized" at every use (as transpose_avx512.h's shuffles).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kilnet::cpu {
namespace {

struct Lanes16 {
  using V = __m512;
  static constexpr int L = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float a) { return _mm512_set1_ps(a); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V a) { _mm512_storeu_ps(p, a); }
  static V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  // g where h > 0, else 0 (NaN h: 0)
  static V where_positive(V h, V g) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(h, zero(), _CMP_GT_OQ), g); }
  static V low(__m512 a) { return a; }    // the lanes of a 16-lane vector this width keeps
  static __m512 wide(V a) { return a; }   // as a 16-lane vector, the lanes beyond L zero
};

struct Lanes8 {
  using V = __m256;
  static constexpr int L = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float a) { return _mm256_set1_ps(a); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V a) { _mm256_storeu_ps(p, a); }
  static V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V where_positive(V h, V g) { return _mm256_maskz_mov_ps(_mm256_cmp_ps_mask(h, zero(), _CMP_GT_OQ), g); }
  static V low(__m512 a) { return _mm512_castps512_ps256(a); }
  static __m512 wide(V a) { return _mm512_insertf32x8(_mm512_setzero_ps(), a, 0); }
};

}  // namespace
}  // namespace kilnet::cpu

#pragma GCC diagnostic pop
