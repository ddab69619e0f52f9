// rnn_avx2.cpp — the AVX2/FMA step kernels of the recurrent layers (compiled with -mavx2 -mfma,
// run only when kilnet::cpu::use_avx2()). rnn.cpp drives them; rnn_internal.h is the contract.
//   gemm_rows   an MR x 16 register tile per packed panel (12 accumulators at MR = 6) that
//               starts from the bias and runs over x_t's and h_{t-1}'s columns in turn, so
//               b + x W + h U is one pass
//   *_fwd/_bwd  the gate math 8 units at a time, the row's tail through masked loads/stores,
//               with Keras' default activations fixed at compile time
// Everything here is vector code or file-local: no inline function shared with the portable
// build (the linker could pick this file's AVX2 copy for the scalar path).
#if defined(KILNET_HAVE_AVX2_BUILD)
#include <immintrin.h>
#include <cstdint>
#include "rnn_internal.h"
#include "vexp_avx2.h"   // exp8

namespace kilnet::cpu::rnn_detail {
namespace {

// ---------------------------------------------------------------- loads, stores, math
alignas(32) const std::int32_t kMaskSrc[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

inline __m256i tail_mask(index_t n) {   // the first n (0..8) lanes
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskSrc + 8 - n));
}

struct Full {
  __m256 ld(const float* p) const { return _mm256_loadu_ps(p); }
  void st(float* p, __m256 v) const { _mm256_storeu_ps(p, v); }
};
struct Part {
  __m256i m;
  __m256 ld(const float* p) const { return _mm256_maskload_ps(p, m); }
  void st(float* p, __m256 v) const { _mm256_maskstore_ps(p, m, v); }
};

// 1/d: the 12-bit estimate and one Newton step (~1 ulp more than a division, several times the
// throughput). d is in [1, inf] (sigmoid) or [4.9e-3, 1] (tanh's denominator): no zero or NaN.
inline __m256 recip8(__m256 d) {
  const __m256 r = _mm256_rcp_ps(d);
  return _mm256_mul_ps(r, _mm256_fnmadd_ps(d, r, _mm256_set1_ps(2.f)));
}

inline __m256 sigmoid8(__m256 x) {
  return recip8(_mm256_add_ps(_mm256_set1_ps(1.f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
}

// tanh as a 13/6 rational function on [-7.9, 7.9] (Eigen's float tanh; a few ulp), x itself
// for tiny |x| where the rational's relative error would show.
inline __m256 tanh8(__m256 x) {
  const __m256 c = _mm256_set1_ps(7.90531110763549805f);
  // x second: max/min return their second operand when either is NaN, so a NaN stays NaN
  // (it used to come out as -1 here, hiding a broken input).
  const __m256 xc = _mm256_min_ps(c, _mm256_max_ps(_mm256_sub_ps(_mm256_setzero_ps(), c), x));
  const __m256 x2 = _mm256_mul_ps(xc, xc);
  __m256 p = _mm256_set1_ps(-2.76076847742355e-16f);
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(2.00018790482477e-13f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(-8.60467152213735e-11f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(5.12229709037114e-08f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(1.48572235717979e-05f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(6.37261928875436e-04f));
  p = _mm256_fmadd_ps(p, x2, _mm256_set1_ps(4.89352455891786e-03f));
  p = _mm256_mul_ps(p, xc);
  __m256 q = _mm256_set1_ps(1.19825839466702e-06f);
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(1.18534705686654e-04f));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(2.26843463243900e-03f));
  q = _mm256_fmadd_ps(q, x2, _mm256_set1_ps(4.89352518554385e-03f));
  const __m256 r = _mm256_mul_ps(p, recip8(q));
  const __m256 abs_x = _mm256_andnot_ps(_mm256_set1_ps(-0.f), x);
  return _mm256_blendv_ps(r, x, _mm256_cmp_ps(abs_x, _mm256_set1_ps(4e-4f), _CMP_LT_OQ));
}

inline __m256 act8(Act a, __m256 x) {
  switch (a) {
    case Act::Relu: return _mm256_max_ps(_mm256_setzero_ps(), x);   // NaN stays NaN
    case Act::Sigmoid: return sigmoid8(x);
    case Act::Tanh: return tanh8(x);
    default: return x;
  }
}

// The gradient wrt the activation's input, from its output y and the output gradient dy.
inline __m256 dact8(Act a, __m256 y, __m256 dy) {
  const __m256 one = _mm256_set1_ps(1.f);
  switch (a) {
    case Act::Relu: return _mm256_and_ps(dy, _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GT_OQ));
    case Act::Sigmoid: return _mm256_mul_ps(dy, _mm256_mul_ps(y, _mm256_sub_ps(one, y)));
    case Act::Tanh: return _mm256_mul_ps(dy, _mm256_fnmadd_ps(y, y, one));
    default: return dy;
  }
}

// An activation as a value with f (forward) and df (backward, from the output). The gate kernels
// are instantiated with Keras' defaults (activation tanh, recurrent sigmoid) fixed at compile
// time: with a run-time switch per vector GCC left branches between the gates and reloaded
// every constant, and the LSTM gate math took ~2x as long. Other pairs use the switch.
template <Act A>
struct Fixed {
  __m256 f(__m256 x) const { return act8(A, x); }
  __m256 df(__m256 y, __m256 dy) const { return dact8(A, y, dy); }
};
struct Dynamic {
  Act a;
  __m256 f(__m256 x) const { return act8(a, x); }
  __m256 df(__m256 y, __m256 dy) const { return dact8(a, y, dy); }
};

template <class F>
inline void with_act(Act a, F&& body) {
  if (a == Act::Tanh) body(Fixed<Act::Tanh>{});
  else body(Dynamic{a});
}

template <class F>
inline void with_acts(Act a, Act s, F&& body) {
  if (a == Act::Tanh && s == Act::Sigmoid) body(Fixed<Act::Tanh>{}, Fixed<Act::Sigmoid>{});
  else body(Dynamic{a}, Dynamic{s});
}

// Calls body(io, j) for j = 0, 8, 16, ... < n with full vectors, then once for the tail.
template <class F>
inline void for_vectors(index_t n, F&& body) {
  index_t j = 0;
  for (; j + 8 <= n; j += 8) body(Full{}, j);
  if (j < n) body(Part{tail_mask(n - j)}, j);
}

// ---------------------------------------------------------------- the recurrent GEMM
// c += A[0:M, 0:k] · bp (k rows of NR floats): 12 accumulators, 2 B vectors and the broadcast
// use 15 of the 16 ymm registers.
template <int M>
__attribute__((always_inline)) inline void accumulate(index_t k, const float* A, index_t lda, const float* bp,
                                                      __m256 (&c0)[M], __m256 (&c1)[M]) {
#pragma GCC unroll 2
  for (index_t q = 0; q < k; ++q) {
    const __m256 b0 = _mm256_loadu_ps(bp + q * NR), b1 = _mm256_loadu_ps(bp + q * NR + 8);
#pragma GCC unroll 6
    for (int r = 0; r < M; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + q);
      c0[r] = _mm256_fmadd_ps(a, b0, c0[r]);
      c1[r] = _mm256_fmadd_ps(a, b1, c1[r]);
    }
  }
}

// One M x NR tile: C = Cinit + [A | A2] · panel. A partial tile (n < NR columns) goes through a
// stack copy, so that no mask register stays live across the k loops.
template <int M, bool Partial>
inline void tile(index_t k, const float* A, index_t lda, index_t k2, const float* A2, index_t lda2,
                 const float* bp, const float* ci, index_t ldci, float* C, index_t ldc, index_t n) {
  alignas(32) float edge[Partial ? M * NR : 1];
  __m256 c0[M], c1[M];
#pragma GCC unroll 6
  for (int r = 0; r < M; ++r) {
    if (!ci) { c0[r] = _mm256_setzero_ps(); c1[r] = _mm256_setzero_ps(); continue; }
    const float* src = ci + r * ldci;
    if (Partial) {
      for (index_t j = 0; j < NR; ++j) edge[r * NR + j] = j < n ? src[j] : 0.f;
      src = edge + r * NR;
    }
    c0[r] = _mm256_loadu_ps(src);
    c1[r] = _mm256_loadu_ps(src + 8);
  }
  accumulate<M>(k, A, lda, bp, c0, c1);
  if (k2) accumulate<M>(k2, A2, lda2, bp + k * NR, c0, c1);
#pragma GCC unroll 6
  for (int r = 0; r < M; ++r) {
    float* dst = Partial ? edge + r * NR : C + r * ldc;
    _mm256_storeu_ps(dst, c0[r]);
    _mm256_storeu_ps(dst + 8, c1[r]);
    if (Partial)
      for (index_t j = 0; j < n; ++j) C[r * ldc + j] = edge[r * NR + j];
  }
}

template <int M>
void panels(index_t n, index_t k, const float* A, index_t lda, index_t k2, const float* A2, index_t lda2,
            const float* Bp, index_t kp, const float* ci, index_t ldci, float* C, index_t ldc) {
  index_t j0 = 0;
  for (; j0 + NR <= n; j0 += NR)
    tile<M, false>(k, A, lda, k2, A2, lda2, Bp + j0 * kp, ci ? ci + j0 : nullptr, ldci, C + j0, ldc, NR);
  if (j0 < n)
    tile<M, true>(k, A, lda, k2, A2, lda2, Bp + j0 * kp, ci ? ci + j0 : nullptr, ldci, C + j0, ldc, n - j0);
}

void gemm_rows(index_t m, index_t n, index_t k, const float* A, index_t lda, index_t k2, const float* A2,
               index_t lda2, const float* Bp, index_t kp, const float* ci, index_t ldci, float* C, index_t ldc) {
  for (index_t r = 0; r < m; r += MR) {
    const index_t mm = m - r < MR ? m - r : MR;
    const float* a = A + r * lda;
    const float* a2 = k2 ? A2 + r * lda2 : nullptr;
    const float* c_in = ci ? ci + r * ldci : nullptr;
    float* c = C + r * ldc;
    switch (mm) {
      case 1: panels<1>(n, k, a, lda, k2, a2, lda2, Bp, kp, c_in, ldci, c, ldc); break;
      case 2: panels<2>(n, k, a, lda, k2, a2, lda2, Bp, kp, c_in, ldci, c, ldc); break;
      case 3: panels<3>(n, k, a, lda, k2, a2, lda2, Bp, kp, c_in, ldci, c, ldc); break;
      case 4: panels<4>(n, k, a, lda, k2, a2, lda2, Bp, kp, c_in, ldci, c, ldc); break;
      case 5: panels<5>(n, k, a, lda, k2, a2, lda2, Bp, kp, c_in, ldci, c, ldc); break;
      default: panels<6>(n, k, a, lda, k2, a2, lda2, Bp, kp, c_in, ldci, c, ldc); break;
    }
  }
}

// ---------------------------------------------------------------- gate math, forward
void rnn_fwd(index_t m, index_t H, Act act, float* h) {
  with_act(act, [&](auto a) {
    for_vectors(m * H, [&](auto io, index_t j) { io.st(h + j, a.f(io.ld(h + j))); });
  });
}

void lstm_fwd(index_t m, index_t H, Act act, Act rec, float* g, const float* cp, float* c, float* tc, float* h) {
  with_acts(act, rec, [&](auto a, auto s) {
    for (index_t r = 0; r < m; ++r, g += 4 * H, cp += H, c += H, tc += H, h += H)
      for_vectors(H, [&](auto io, index_t j) {
        const __m256 i = s.f(io.ld(g + j)), f = s.f(io.ld(g + H + j));
        const __m256 gg = a.f(io.ld(g + 2 * H + j)), o = s.f(io.ld(g + 3 * H + j));
        const __m256 cn = _mm256_fmadd_ps(f, io.ld(cp + j), _mm256_mul_ps(i, gg));
        io.st(g + j, i); io.st(g + H + j, f); io.st(g + 2 * H + j, gg); io.st(g + 3 * H + j, o);
        const __m256 t = a.f(cn);
        io.st(c + j, cn);
        io.st(tc + j, t);
        io.st(h + j, _mm256_mul_ps(o, t));
      });
  });
}

void gru_fwd(index_t m, index_t H, Act act, Act rec, float* g, const float* hu, const float* hp, float* huh,
             float* h) {
  with_acts(act, rec, [&](auto a, auto s) {
    for (index_t r = 0; r < m; ++r, g += 3 * H, hu += 3 * H, hp += H, huh += H, h += H)
      for_vectors(H, [&](auto io, index_t j) {
        const __m256 z = s.f(_mm256_add_ps(io.ld(g + j), io.ld(hu + j)));
        const __m256 rr = s.f(_mm256_add_ps(io.ld(g + H + j), io.ld(hu + H + j)));
        const __m256 uh = io.ld(hu + 2 * H + j);
        const __m256 hh = a.f(_mm256_fmadd_ps(rr, uh, io.ld(g + 2 * H + j)));
        // h = z h_prev + (1 - z) hh = hh + z (h_prev - hh)
        io.st(h + j, _mm256_fmadd_ps(z, _mm256_sub_ps(io.ld(hp + j), hh), hh));
        io.st(g + j, z); io.st(g + H + j, rr); io.st(g + 2 * H + j, hh);
        io.st(huh + j, uh);
      });
  });
}

// ---------------------------------------------------------------- gate math, backward
template <class IO>
inline __m256 grad_in(const IO& io, const float* dh, const float* dy, index_t j) {
  __m256 d = dh ? io.ld(dh + j) : _mm256_setzero_ps();
  return dy ? _mm256_add_ps(d, io.ld(dy + j)) : d;
}

void rnn_bwd(index_t m, index_t H, Act act, const float* dh, const float* dy, index_t ldy, const float* h,
             float* dz) {
  with_act(act, [&](auto a) {
    for (index_t r = 0; r < m; ++r, h += H, dz += H) {
      for_vectors(H, [&](auto io, index_t j) { io.st(dz + j, a.df(io.ld(h + j), grad_in(io, dh, dy, j))); });
      if (dh) dh += H;
      if (dy) dy += ldy;
    }
  });
}

void lstm_bwd(index_t m, index_t H, Act act, Act rec, const float* dh, const float* dy, index_t ldy,
              const float* g, const float* cp, const float* tcp, float* dc, float* dz) {
  with_acts(act, rec, [&](auto a, auto s) {
    for (index_t r = 0; r < m; ++r, g += 4 * H, cp += H, tcp += H, dc += H, dz += 4 * H) {
      for_vectors(H, [&](auto io, index_t j) {
        const __m256 d = grad_in(io, dh, dy, j);
        const __m256 i = io.ld(g + j), f = io.ld(g + H + j), gg = io.ld(g + 2 * H + j), o = io.ld(g + 3 * H + j);
        const __m256 tc = io.ld(tcp + j);
        const __m256 dct = _mm256_add_ps(io.ld(dc + j), a.df(tc, _mm256_mul_ps(d, o)));
        io.st(dz + j, s.df(i, _mm256_mul_ps(dct, gg)));
        io.st(dz + H + j, s.df(f, _mm256_mul_ps(dct, io.ld(cp + j))));
        io.st(dz + 2 * H + j, a.df(gg, _mm256_mul_ps(dct, i)));
        io.st(dz + 3 * H + j, s.df(o, _mm256_mul_ps(d, tc)));
        io.st(dc + j, _mm256_mul_ps(dct, f));
      });
      if (dh) dh += H;
      if (dy) dy += ldy;
    }
  });
}

void gru_bwd(index_t m, index_t H, Act act, Act rec, const float* dh, const float* dy, index_t ldy,
             const float* g, const float* huh, const float* hp, float* carry, float* dz, float* dhu) {
  const __m256 one = _mm256_set1_ps(1.f);
  with_acts(act, rec, [&](auto a, auto s) {
    for (index_t r = 0; r < m; ++r, g += 3 * H, huh += H, hp += H, carry += H, dz += 3 * H, dhu += 3 * H) {
      for_vectors(H, [&](auto io, index_t j) {
        const __m256 d = _mm256_add_ps(grad_in(io, dh, dy, j), io.ld(carry + j));
        const __m256 z = io.ld(g + j), rr = io.ld(g + H + j), hh = io.ld(g + 2 * H + j);
        const __m256 dxz = s.df(z, _mm256_mul_ps(d, _mm256_sub_ps(io.ld(hp + j), hh)));
        const __m256 dxh = a.df(hh, _mm256_mul_ps(d, _mm256_sub_ps(one, z)));
        const __m256 dxr = s.df(rr, _mm256_mul_ps(dxh, io.ld(huh + j)));
        io.st(carry + j, _mm256_mul_ps(d, z));
        io.st(dz + j, dxz); io.st(dz + H + j, dxr); io.st(dz + 2 * H + j, dxh);
        io.st(dhu + j, dxz); io.st(dhu + H + j, dxr); io.st(dhu + 2 * H + j, _mm256_mul_ps(dxh, rr));
      });
      if (dh) dh += H;
      if (dy) dy += ldy;
    }
  });
}

const StepKernels kAvx2 = {gemm_rows, rnn_fwd, lstm_fwd, gru_fwd, rnn_bwd, lstm_bwd, gru_bwd, false};

}  // namespace

const StepKernels& avx2_step_kernels() { return kAvx2; }

}  // namespace kilnet::cpu::rnn_detail
#endif  // KILNET_HAVE_AVX2_BUILD
