// rnn_avx512.cpp — the AVX-512 step kernels of the recurrent layers (compiled with the AVX-512
// flags, run only when kilnet::cpu::use_avx512()). rnn.cpp drives them; rnn_internal.h is the
// contract; rnn_avx2.cpp is the same on 8 lanes.
//   gemm_rows   an MR x (4 x 16) register tile: one zmm per packed panel row, 4 panels side by
//               side, 24 accumulators at MR = 6 (of 32 zmm), starting from the bias and running
//               over x_t's and h_{t-1}'s columns in turn, so b + x W + h U is one pass. Each B
//               vector loaded feeds 6 FMAs and each broadcast of A 4: the loads stay under the
//               2 FMAs a cycle. The last panel's columns past n are masked off.
//   *_fwd/_bwd  the gate math 16 units at a time, the row's tail through masked loads/stores,
//               with Keras' default activations fixed at compile time; each row asks for the
//               next row's output lines (PREFETCHW) and, backward, its inputs
//               (StepKernels::prefetches_ahead)
// Everything here is vector code or file-local: no inline function shared with another build.
#include "rnn_internal.h"

#if defined(KILNET_HAVE_AVX512_BUILD) && defined(__AVX512F__)
#include <immintrin.h>
#include "vact_avx512.h"   // sigmoid16, tanh16
#include "vexp_avx512.h"   // exp16

// GCC 12's avx512fintrin.h passes _mm512_undefined_ps() as the unused merge source of
// max/min/rcp14/roundscale, and -Wmaybe-uninitialized reports it at every use: a false alarm.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kilnet::cpu::rnn_detail {
namespace {

static_assert(NR == 16, "one zmm per packed panel row");

// ---------------------------------------------------------------- loads, stores, math
inline __mmask16 tail_mask(index_t n) {   // the first n (0..16) lanes
  return static_cast<__mmask16>((1u << n) - 1u);
}

struct Full {
  __m512 ld(const float* p) const { return _mm512_loadu_ps(p); }
  void st(float* p, __m512 v) const { _mm512_storeu_ps(p, v); }
};
struct Part {
  __mmask16 m;
  __m512 ld(const float* p) const { return _mm512_maskz_loadu_ps(m, p); }
  void st(float* p, __m512 v) const { _mm512_mask_storeu_ps(p, m, v); }
};

inline __m512 act16(Act a, __m512 x) {
  switch (a) {
    case Act::Relu: return _mm512_max_ps(_mm512_setzero_ps(), x);   // NaN stays NaN
    case Act::Sigmoid: return sigmoid16(x);
    case Act::Tanh: return tanh16(x);
    default: return x;
  }
}

// The gradient wrt the activation's input, from its output y and the output gradient dy.
inline __m512 dact16(Act a, __m512 y, __m512 dy) {
  const __m512 one = _mm512_set1_ps(1.f);
  switch (a) {
    case Act::Relu: return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ), dy);
    case Act::Sigmoid: return _mm512_mul_ps(dy, _mm512_mul_ps(y, _mm512_sub_ps(one, y)));
    case Act::Tanh: return _mm512_mul_ps(dy, _mm512_fnmadd_ps(y, y, one));
    default: return dy;
  }
}

// Keras' default pair (tanh, sigmoid) fixed at compile time, other pairs through a switch (see
// rnn_avx2.cpp: a run-time switch per vector costs the LSTM gate math ~2x).
template <Act A>
struct Fixed {
  __m512 f(__m512 x) const { return act16(A, x); }
  __m512 df(__m512 y, __m512 dy) const { return dact16(A, y, dy); }
};
struct Dynamic {
  Act a;
  __m512 f(__m512 x) const { return act16(a, x); }
  __m512 df(__m512 y, __m512 dy) const { return dact16(a, y, dy); }
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

// Asks for the line at p in a writable state, without waiting. The gate kernels write their
// outputs (dz, c, h, ...) to lines no cache holds (the workspace is several MB): without this,
// each store waited for its line's read-for-ownership, and the LSTM backward gate kernel spent
// ~80% of its time stalled on its dz stores. Every row asks for the next row's lines (the
// rows of a step are contiguous, so past the block's last row this is the next block's first).
// PREFETCHW is on every AVX-512 CPU; GCC emits it for __builtin_prefetch only with -mprfchw.
inline void prefetch_w(const float* p) { asm volatile("prefetchw %0" : : "m"(*reinterpret_cast<const char*>(p))); }
// The same for reading: the backward kernels' inputs were written during the forward, long
// evicted to L3 or memory. One row ahead is ~500 cycles of gate math: an L3 hit's latency
// several times over (StepKernels::prefetches_ahead: the driver's burst is then skipped).
inline void prefetch_r(const float* p) { _mm_prefetch(reinterpret_cast<const char*>(p), _MM_HINT_T0); }

// Calls body(io, j) for j = 0, 16, 32, ... < n with full vectors, then once for the tail.
template <class F>
inline void for_vectors(index_t n, F&& body) {
  index_t j = 0;
  for (; j + 16 <= n; j += 16) body(Full{}, j);
  if (j < n) body(Part{tail_mask(n - j)}, j);
}

// ---------------------------------------------------------------- the recurrent GEMM
constexpr int kPanels = 4;   // panels per register tile

// c += A[0:M, 0:k] · (P panels from bp, panel stride ps floats, k rows of NR floats each)
template <int M, int P>
__attribute__((always_inline)) inline void accumulate(index_t k, const float* A, index_t lda, const float* bp,
                                                      index_t ps, __m512 (&c)[M][P]) {
#pragma GCC unroll 4
  for (index_t q = 0; q < k; ++q) {
    __m512 b[P];
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) b[p] = _mm512_loadu_ps(bp + p * ps + q * NR);
#pragma GCC unroll 6
    for (int r = 0; r < M; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + q]);
#pragma GCC unroll 4
      for (int p = 0; p < P; ++p) c[r][p] = _mm512_fmadd_ps(a, b[p], c[r][p]);
    }
  }
}

// One M x (P x NR) tile: C = Cinit + [A | A2] · panels; `last` masks the last panel's columns.
template <int M, int P>
inline void tile(index_t k, const float* A, index_t lda, index_t k2, const float* A2, index_t lda2,
                 const float* bp, index_t kp, const float* ci, index_t ldci, float* C, index_t ldc,
                 __mmask16 last) {
  __m512 c[M][P];
#pragma GCC unroll 6
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      const __mmask16 m = p == P - 1 ? last : __mmask16(0xFFFF);
      c[r][p] = ci ? _mm512_maskz_loadu_ps(m, ci + r * ldci + p * NR) : _mm512_setzero_ps();
    }
  const index_t ps = kp * NR;
  accumulate<M, P>(k, A, lda, bp, ps, c);
  if (k2) accumulate<M, P>(k2, A2, lda2, bp + k * NR, ps, c);
#pragma GCC unroll 6
  for (int r = 0; r < M; ++r)
#pragma GCC unroll 4
    for (int p = 0; p < P; ++p) {
      const __mmask16 m = p == P - 1 ? last : __mmask16(0xFFFF);
      _mm512_mask_storeu_ps(C + r * ldc + p * NR, m, c[r][p]);
    }
}

template <int M>
void panels(index_t n, index_t k, const float* A, index_t lda, index_t k2, const float* A2, index_t lda2,
            const float* Bp, index_t kp, const float* ci, index_t ldci, float* C, index_t ldc) {
  const index_t np = (n + NR - 1) / NR;
  for (index_t p0 = 0; p0 < np; p0 += kPanels) {
    const index_t P = np - p0 < kPanels ? np - p0 : kPanels;
    const index_t j0 = p0 * NR, cols = n - j0 < P * NR ? n - j0 : P * NR;
    const __mmask16 last = tail_mask(cols - (P - 1) * NR);
    const float* bp = Bp + j0 * kp;
    const float* c_in = ci ? ci + j0 : nullptr;
    switch (P) {
      case 1: tile<M, 1>(k, A, lda, k2, A2, lda2, bp, kp, c_in, ldci, C + j0, ldc, last); break;
      case 2: tile<M, 2>(k, A, lda, k2, A2, lda2, bp, kp, c_in, ldci, C + j0, ldc, last); break;
      case 3: tile<M, 3>(k, A, lda, k2, A2, lda2, bp, kp, c_in, ldci, C + j0, ldc, last); break;
      default: tile<M, 4>(k, A, lda, k2, A2, lda2, bp, kp, c_in, ldci, C + j0, ldc, last); break;
    }
  }
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
        const __m512 i = s.f(io.ld(g + j)), f = s.f(io.ld(g + H + j));
        const __m512 gg = a.f(io.ld(g + 2 * H + j)), o = s.f(io.ld(g + 3 * H + j));
        const __m512 cn = _mm512_fmadd_ps(f, io.ld(cp + j), _mm512_mul_ps(i, gg));
        io.st(g + j, i); io.st(g + H + j, f); io.st(g + 2 * H + j, gg); io.st(g + 3 * H + j, o);
        prefetch_w(c + H + j); prefetch_w(tc + H + j); prefetch_w(h + H + j);
        const __m512 t = a.f(cn);
        io.st(c + j, cn);
        io.st(tc + j, t);
        io.st(h + j, _mm512_mul_ps(o, t));
      });
  });
}

void gru_fwd(index_t m, index_t H, Act act, Act rec, float* g, const float* hu, const float* hp, float* huh,
             float* h) {
  with_acts(act, rec, [&](auto a, auto s) {
    for (index_t r = 0; r < m; ++r, g += 3 * H, hu += 3 * H, hp += H, huh += H, h += H)
      for_vectors(H, [&](auto io, index_t j) {
        const __m512 z = s.f(_mm512_add_ps(io.ld(g + j), io.ld(hu + j)));
        const __m512 rr = s.f(_mm512_add_ps(io.ld(g + H + j), io.ld(hu + H + j)));
        const __m512 uh = io.ld(hu + 2 * H + j);
        const __m512 hh = a.f(_mm512_fmadd_ps(rr, uh, io.ld(g + 2 * H + j)));
        // h = z h_prev + (1 - z) hh = hh + z (h_prev - hh)
        io.st(h + j, _mm512_fmadd_ps(z, _mm512_sub_ps(io.ld(hp + j), hh), hh));
        prefetch_w(h + H + j); prefetch_w(huh + H + j);
        io.st(g + j, z); io.st(g + H + j, rr); io.st(g + 2 * H + j, hh);
        io.st(huh + j, uh);
      });
  });
}

// ---------------------------------------------------------------- gate math, backward
template <class IO>
inline __m512 grad_in(const IO& io, const float* dh, const float* dy, index_t j) {
  __m512 d = dh ? io.ld(dh + j) : _mm512_setzero_ps();
  return dy ? _mm512_add_ps(d, io.ld(dy + j)) : d;
}

void rnn_bwd(index_t m, index_t H, Act act, const float* dh, const float* dy, index_t ldy, const float* h,
             float* dz) {
  with_act(act, [&](auto a) {
    for (index_t r = 0; r < m; ++r, h += H, dz += H) {
      for_vectors(H, [&](auto io, index_t j) {
        prefetch_w(dz + H + j);
        prefetch_r(h + H + j);
        if (dy) prefetch_r(dy + ldy + j);
        io.st(dz + j, a.df(io.ld(h + j), grad_in(io, dh, dy, j)));
      });
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
        const __m512 d = grad_in(io, dh, dy, j);
        prefetch_w(dz + 4 * H + j); prefetch_w(dz + 5 * H + j); prefetch_w(dz + 6 * H + j); prefetch_w(dz + 7 * H + j);
        prefetch_r(g + 4 * H + j); prefetch_r(g + 5 * H + j); prefetch_r(g + 6 * H + j); prefetch_r(g + 7 * H + j);
        prefetch_r(cp + H + j); prefetch_r(tcp + H + j);
        if (dy) prefetch_r(dy + ldy + j);
        const __m512 i = io.ld(g + j), f = io.ld(g + H + j), gg = io.ld(g + 2 * H + j), o = io.ld(g + 3 * H + j);
        const __m512 tc = io.ld(tcp + j);
        const __m512 dct = _mm512_add_ps(io.ld(dc + j), a.df(tc, _mm512_mul_ps(d, o)));
        io.st(dz + j, s.df(i, _mm512_mul_ps(dct, gg)));
        io.st(dz + H + j, s.df(f, _mm512_mul_ps(dct, io.ld(cp + j))));
        io.st(dz + 2 * H + j, a.df(gg, _mm512_mul_ps(dct, i)));
        io.st(dz + 3 * H + j, s.df(o, _mm512_mul_ps(d, tc)));
        io.st(dc + j, _mm512_mul_ps(dct, f));
      });
      if (dh) dh += H;
      if (dy) dy += ldy;
    }
  });
}

void gru_bwd(index_t m, index_t H, Act act, Act rec, const float* dh, const float* dy, index_t ldy,
             const float* g, const float* huh, const float* hp, float* carry, float* dz, float* dhu) {
  const __m512 one = _mm512_set1_ps(1.f);
  with_acts(act, rec, [&](auto a, auto s) {
    for (index_t r = 0; r < m; ++r, g += 3 * H, huh += H, hp += H, carry += H, dz += 3 * H, dhu += 3 * H) {
      for_vectors(H, [&](auto io, index_t j) {
        const __m512 d = _mm512_add_ps(grad_in(io, dh, dy, j), io.ld(carry + j));
        prefetch_w(dz + 3 * H + j); prefetch_w(dz + 4 * H + j); prefetch_w(dz + 5 * H + j);
        prefetch_w(dhu + 3 * H + j); prefetch_w(dhu + 4 * H + j); prefetch_w(dhu + 5 * H + j);
        prefetch_r(g + 3 * H + j); prefetch_r(g + 4 * H + j); prefetch_r(g + 5 * H + j);
        prefetch_r(huh + H + j); prefetch_r(hp + H + j);
        if (dy) prefetch_r(dy + ldy + j);
        const __m512 z = io.ld(g + j), rr = io.ld(g + H + j), hh = io.ld(g + 2 * H + j);
        const __m512 dxz = s.df(z, _mm512_mul_ps(d, _mm512_sub_ps(io.ld(hp + j), hh)));
        const __m512 dxh = a.df(hh, _mm512_mul_ps(d, _mm512_sub_ps(one, z)));
        const __m512 dxr = s.df(rr, _mm512_mul_ps(dxh, io.ld(huh + j)));
        io.st(carry + j, _mm512_mul_ps(d, z));
        io.st(dz + j, dxz); io.st(dz + H + j, dxr); io.st(dz + 2 * H + j, dxh);
        io.st(dhu + j, dxz); io.st(dhu + H + j, dxr); io.st(dhu + 2 * H + j, _mm512_mul_ps(dxh, rr));
      });
      if (dh) dh += H;
      if (dy) dy += ldy;
    }
  });
}

const StepKernels kAvx512 = {gemm_rows, rnn_fwd, lstm_fwd, gru_fwd, rnn_bwd, lstm_bwd, gru_bwd, true};

}  // namespace

const StepKernels& avx512_step_kernels() { return kAvx512; }

}  // namespace kilnet::cpu::rnn_detail
#endif  // KILNET_HAVE_AVX512_BUILD && __AVX512F__
