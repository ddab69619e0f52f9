// conv_dense_avx512.cpp — the three narrow products of the fused Conv2D -> Flatten -> Dense block
// (conv_dense.cpp) for U <= 16 units, when the AVX-512 level runs: one zmm holds a row of the
// Dense weights (U lanes), so none of them packs anything. With U = 10 the general GEMM pads to
// 16 columns and packs both operands for each small block; measured on a block of the canonical
// CNN (32 x 1664 x 10, in L2) it reached ~33 GFLOP/s.
//
// This file includes no project header with inline functions and instantiates no std::
// templates (see conv2d_avx512.cpp): it is compiled with the AVX-512 flags.
#include <immintrin.h>

#include "kilnet/common.h"

namespace kilnet::cpu::avx512 {
namespace {
inline __mmask16 lanes(index_t u) { return __mmask16((1u << unsigned(u)) - 1u); }
}  // namespace

// z[N x U] = (accumulate ? z : 0) + h[N x kb] · w[kb x U]; 8 rows of h at a time share each
// loaded row of w.
void narrow_forward(index_t N, index_t kb, index_t U, const float* h, const float* w, float* z, bool accumulate) {
  const __mmask16 m = lanes(U);
  index_t n = 0;
  for (; n + 8 <= N; n += 8) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    const float* r = h + n * kb;
    for (index_t k = 0; k < kb; ++k) {
      const __m512 wv = _mm512_maskz_loadu_ps(m, w + k * U);
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(r[k]), wv, a0);
      a1 = _mm512_fmadd_ps(_mm512_set1_ps(r[kb + k]), wv, a1);
      a2 = _mm512_fmadd_ps(_mm512_set1_ps(r[2 * kb + k]), wv, a2);
      a3 = _mm512_fmadd_ps(_mm512_set1_ps(r[3 * kb + k]), wv, a3);
      a4 = _mm512_fmadd_ps(_mm512_set1_ps(r[4 * kb + k]), wv, a4);
      a5 = _mm512_fmadd_ps(_mm512_set1_ps(r[5 * kb + k]), wv, a5);
      a6 = _mm512_fmadd_ps(_mm512_set1_ps(r[6 * kb + k]), wv, a6);
      a7 = _mm512_fmadd_ps(_mm512_set1_ps(r[7 * kb + k]), wv, a7);
    }
    const __m512 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
    for (int i = 0; i < 8; ++i) {
      float* zr = z + (n + i) * U;
      const __m512 v = accumulate ? _mm512_add_ps(acc[i], _mm512_maskz_loadu_ps(m, zr)) : acc[i];
      _mm512_mask_storeu_ps(zr, m, v);
    }
  }
  for (; n < N; ++n) {   // the rows left over, one at a time (two chains for the FMA latency)
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;
    const float* r = h + n * kb;
    index_t k = 0;
    for (; k + 2 <= kb; k += 2) {
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(r[k]), _mm512_maskz_loadu_ps(m, w + k * U), a0);
      a1 = _mm512_fmadd_ps(_mm512_set1_ps(r[k + 1]), _mm512_maskz_loadu_ps(m, w + (k + 1) * U), a1);
    }
    if (k < kb) a0 = _mm512_fmadd_ps(_mm512_set1_ps(r[k]), _mm512_maskz_loadu_ps(m, w + k * U), a0);
    float* zr = z + n * U;
    __m512 v = _mm512_add_ps(a0, a1);
    if (accumulate) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, zr));
    _mm512_mask_storeu_ps(zr, m, v);
  }
}

// dw[kb x U] = (overwrite ? 0 : dw) + h^T · dz, h N x kb, dz N x U: 8 rows of dw at a time, each
// row of dz loaded once for them.
void narrow_weight_grad(index_t N, index_t kb, index_t U, const float* h, const float* dz, float* dw,
                        bool overwrite) {
  const __mmask16 m = lanes(U);
  index_t k = 0;
  for (; k + 8 <= kb; k += 8) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
    for (index_t n = 0; n < N; ++n) {
      const __m512 d = _mm512_maskz_loadu_ps(m, dz + n * U);
      const float* r = h + n * kb + k;
      a0 = _mm512_fmadd_ps(_mm512_set1_ps(r[0]), d, a0);
      a1 = _mm512_fmadd_ps(_mm512_set1_ps(r[1]), d, a1);
      a2 = _mm512_fmadd_ps(_mm512_set1_ps(r[2]), d, a2);
      a3 = _mm512_fmadd_ps(_mm512_set1_ps(r[3]), d, a3);
      a4 = _mm512_fmadd_ps(_mm512_set1_ps(r[4]), d, a4);
      a5 = _mm512_fmadd_ps(_mm512_set1_ps(r[5]), d, a5);
      a6 = _mm512_fmadd_ps(_mm512_set1_ps(r[6]), d, a6);
      a7 = _mm512_fmadd_ps(_mm512_set1_ps(r[7]), d, a7);
    }
    const __m512 acc[8] = {a0, a1, a2, a3, a4, a5, a6, a7};
    for (int i = 0; i < 8; ++i) {
      float* o = dw + (k + i) * U;
      const __m512 v = overwrite ? acc[i] : _mm512_add_ps(acc[i], _mm512_maskz_loadu_ps(m, o));
      _mm512_mask_storeu_ps(o, m, v);
    }
  }
  for (; k < kb; ++k) {
    __m512 a = _mm512_setzero_ps();
    for (index_t n = 0; n < N; ++n)
      a = _mm512_fmadd_ps(_mm512_set1_ps(h[n * kb + k]), _mm512_maskz_loadu_ps(m, dz + n * U), a);
    float* o = dw + k * U;
    _mm512_mask_storeu_ps(o, m, overwrite ? a : _mm512_add_ps(a, _mm512_maskz_loadu_ps(m, o)));
  }
}

// dh[N x kb] = dz[N x U] · w^T, w kb x U: 16 rows of w are gathered into U column vectors, then
// each row of dz is U broadcasts against them; four rows of dh at a time for independent FMA
// chains.
void narrow_input_grad(index_t N, index_t kb, index_t U, const float* dz, const float* w, float* dh) {
  // lane j of column u's vector reads w[(k0 + j) * U + u]: 16 rows of w are 16 * U floats in a row
  const __m512i rows = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                          _mm512_set1_epi32(static_cast<int>(U)));
  for (index_t k0 = 0; k0 < kb; k0 += 16) {
    const index_t kw = kb - k0 < 16 ? kb - k0 : 16;
    const __mmask16 km = lanes(kw);
    __m512 wv[16];
    for (index_t u = 0; u < U; ++u)
      wv[u] = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), km, rows, w + k0 * U + u, 4);
    index_t n = 0;
    for (; n + 4 <= N; n += 4) {
      const float* d = dz + n * U;
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (index_t u = 0; u < U; ++u) {
        a0 = _mm512_fmadd_ps(_mm512_set1_ps(d[u]), wv[u], a0);
        a1 = _mm512_fmadd_ps(_mm512_set1_ps(d[U + u]), wv[u], a1);
        a2 = _mm512_fmadd_ps(_mm512_set1_ps(d[2 * U + u]), wv[u], a2);
        a3 = _mm512_fmadd_ps(_mm512_set1_ps(d[3 * U + u]), wv[u], a3);
      }
      _mm512_mask_storeu_ps(dh + n * kb + k0, km, a0);
      _mm512_mask_storeu_ps(dh + (n + 1) * kb + k0, km, a1);
      _mm512_mask_storeu_ps(dh + (n + 2) * kb + k0, km, a2);
      _mm512_mask_storeu_ps(dh + (n + 3) * kb + k0, km, a3);
    }
    for (; n < N; ++n) {
      __m512 a = _mm512_setzero_ps();
      for (index_t u = 0; u < U; ++u) a = _mm512_fmadd_ps(_mm512_set1_ps(dz[n * U + u]), wv[u], a);
      _mm512_mask_storeu_ps(dh + n * kb + k0, km, a);
    }
  }
}

}  // namespace kilnet::cpu::avx512
