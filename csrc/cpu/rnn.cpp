// rnn.cpp — SimpleRNN, LSTM and GRU over whole sequences: the workspace layout, the naive
// reference, the BPTT driver and its portable step kernels (rnn_avx2.cpp and rnn_avx512.cpp
// have the vector ones).
//
// The driver (rnn_forward / rnn_backward):
//   forward   xs = x time-major; [W; U] packed once; per step and per block of <= MR batch
//             rows: b + x_t W + h_{t-1} U in one register-tiled product, then the gate math
//             (GRU: xs W + b_in for all steps is one GEMM first, and only U is packed)
//   backward  per step, from the last: dz_{t+1} U^T (U^T packed once) fused with the gate
//             derivatives of step t; then [dW; dU; db] += [xs | hs[0:T] | 1]^T dz (one GEMM;
//             the GRU's dU and b_rec use dr, a second one), dx = dz W^T (one GEMM)
// Batch rows never interact in the recurrence, so each thread owns a fixed range of rows for
// all T steps: there is no barrier between steps.
#include <algorithm>
#include <cstring>
#include <initializer_list>
#include <vector>
#include "kilnet/gemm.h"
#include "kilnet/rnn.h"
#include "kilnet/detail/elementwise.h"
#include "kilnet/detail/rnn_layout.h"
#include "parallel.h"
#include "rnn_internal.h"

namespace kilnet {

index_t rnn_gates(Cell cell) { return detail::rnn_gate_count(cell); }

namespace {
// The layout is shared with the CUDA kernels (kilnet/detail/rnn_layout.h).
using Layout = detail::RnnLayout;
inline Layout layout(const RnnShape& s) { return detail::rnn_layout(s); }
}  // namespace

index_t rnn_workspace_floats(const RnnShape& s) { return layout(s).ws_total; }
index_t rnn_scratch_floats(const RnnShape& s) { return layout(s).scratch_total; }

}  // namespace kilnet

namespace kilnet::cpu {
using detail::act_backward;
using detail::act_forward;

namespace {

// x (B,T,I) -> xs (T,B,I), time-reversed for go_backwards; and back for the gradient.
void to_time_major(const RnnShape& s, const float* x, float* xs) {
#pragma omp parallel for num_threads(threads_for(s.T * s.B * s.I)) schedule(static)
  for (index_t t = 0; t < s.T; ++t) {
    const index_t tt = s.go_backwards ? s.T - 1 - t : t;
    for (index_t b = 0; b < s.B; ++b)
      std::memcpy(xs + (t * s.B + b) * s.I, x + (b * s.T + tt) * s.I, size_t(s.I) * sizeof(float));
  }
}

void from_time_major(const RnnShape& s, const float* xs, float* x) {
#pragma omp parallel for num_threads(threads_for(s.T * s.B * s.I)) schedule(static)
  for (index_t b = 0; b < s.B; ++b)
    for (index_t t = 0; t < s.T; ++t) {
      const index_t tt = s.go_backwards ? s.T - 1 - t : t;
      std::memcpy(x + (b * s.T + tt) * s.I, xs + (t * s.B + b) * s.I, size_t(s.I) * sizeof(float));
    }
}

void init_state(float* dst, const float* src, index_t n) {
  if (src) std::memcpy(dst, src, size_t(n) * sizeof(float));
  else std::fill(dst, dst + n, 0.f);
}

// Whether batch row n takes part in processing step t (mask nullptr: every step does).
inline bool kept(const RnnShape& s, const float* mask, index_t n, index_t t) {
  return !mask || mask[n * s.T + (s.go_backwards ? s.T - 1 - t : t)] != 0.f;
}

// y for batch rows [n0, n1): every h_t (B, T, H) with return_sequences, else the last (B, H).
// A masked step's h_t is h_{t-1} already (carried); with zero_output_for_mask its output is 0.
void copy_outputs(const RnnShape& s, const float* hs, const float* mask, index_t n0, index_t n1, float* y) {
  const index_t T = s.T, H = s.H;
  const bool zero = s.zero_output_for_mask && mask;
  for (index_t n = n0; n < n1; ++n)
    for (index_t t = s.return_sequences ? 0 : T - 1; t < T; ++t) {
      float* dst = y + (s.return_sequences ? (n * T + t) * H : n * H);
      if (zero && !kept(s, mask, n, t)) std::fill(dst, dst + H, 0.f);
      else std::memcpy(dst, hs + ((t + 1) * s.B + n) * H, size_t(H) * sizeof(float));
    }
}

// h_last / c_last rows [n0, n1): the states after the last step (hs[T], cs[T]).
void copy_last_states(const RnnShape& s, const float* ws, index_t n0, index_t n1, float* h_last,
                      float* c_last) {
  const detail::RnnLayout L = detail::rnn_layout(s);
  const size_t off = size_t((s.T * s.B + n0) * s.H), n = size_t((n1 - n0) * s.H);
  if (h_last) std::memcpy(h_last + n0 * s.H, ws + L.hs + off, n * sizeof(float));
  if (c_last && s.cell == Cell::LSTM) std::memcpy(c_last + n0 * s.H, ws + L.cs + off, n * sizeof(float));
}

}  // namespace

// ================================================================================ reference
// Plain loops, one step at a time, sums in double; the weight gradients accumulate step by step
// (the textbook BPTT the fast path's single GEMMs must agree with).

void rnn_forward_ref(const RnnShape& s, const float* x, const float* W, const float* U,
                     const float* b, const float* h0, const float* c0, float* y, float* ws,
                     const float* mask, float* h_last, float* c_last) {
  const Layout L = layout(s);
  const index_t B = s.B, T = s.T, I = s.I, H = s.H, GH = rnn_gates(s.cell) * H;
  float* xs = ws + L.xs;
  float* hs = ws + L.hs;
  to_time_major(s, x, xs);
  init_state(hs, h0, B * H);
  if (s.cell == Cell::LSTM) init_state(ws + L.cs, c0, B * H);
  std::vector<double> xw(static_cast<size_t>(GH)), hu(static_cast<size_t>(GH));
  for (index_t t = 0; t < T; ++t)
    for (index_t n = 0; n < B; ++n) {
      const float* xr = xs + (t * B + n) * I;
      const float* hp = hs + (t * B + n) * H;
      float* h = hs + ((t + 1) * B + n) * H;
      for (index_t j = 0; j < GH; ++j) {
        double a = b ? b[j] : 0.0, r = (b && s.cell == Cell::GRU) ? b[GH + j] : 0.0;
        for (index_t i = 0; i < I; ++i) a += double(xr[i]) * W[i * GH + j];
        for (index_t k = 0; k < H; ++k) r += double(hp[k]) * U[k * GH + j];
        xw[size_t(j)] = a;
        hu[size_t(j)] = r;
      }
      if (s.cell == Cell::SimpleRNN) {
        for (index_t j = 0; j < H; ++j) h[j] = act_forward(s.act, float(xw[size_t(j)] + hu[size_t(j)]));
      } else if (s.cell == Cell::LSTM) {
        float* g = ws + L.gates + (t * B + n) * GH;
        const float* cp = ws + L.cs + (t * B + n) * H;
        float* c = ws + L.cs + ((t + 1) * B + n) * H;
        for (index_t j = 0; j < GH; ++j) g[j] = float(xw[size_t(j)] + hu[size_t(j)]);
        float* tc = ws + L.tcs + (t * B + n) * H;
        for (index_t j = 0; j < H; ++j)
          detail::lstm_unit_forward(s.act, s.rec_act, g[j], g[H + j], g[2 * H + j], g[3 * H + j],
                                    cp[j], c[j], tc[j], h[j]);
      } else {
        float* g = ws + L.gates + (t * B + n) * GH;
        float* huh = ws + L.huh + (t * B + n) * H;
        for (index_t j = 0; j < H; ++j) {
          float z = float(xw[size_t(j)] + hu[size_t(j)]), r = float(xw[size_t(H + j)] + hu[size_t(H + j)]);
          huh[j] = float(hu[size_t(2 * H + j)]);
          float hh;
          detail::gru_unit_forward(s.act, s.rec_act, z, r, float(xw[size_t(2 * H + j)]), huh[j], hp[j], hh, h[j]);
          g[j] = z; g[H + j] = r; g[2 * H + j] = hh;
        }
      }
      if (!kept(s, mask, n, t)) {   // a masked step carries the states
        std::memcpy(h, hp, size_t(H) * sizeof(float));
        if (s.cell == Cell::LSTM)
          std::memcpy(ws + L.cs + ((t + 1) * B + n) * H, ws + L.cs + (t * B + n) * H, size_t(H) * sizeof(float));
      }
    }
  copy_outputs(s, hs, mask, 0, B, y);
  copy_last_states(s, ws, 0, B, h_last, c_last);
}

void rnn_backward_ref(const RnnShape& s, const float* dy, const float* W, const float* U,
                      const float* ws, float* scratch, float* dx, float* dW, float* dU, float* db,
                      float* dh0, float* dc0, const float* mask, const float* dh_last, const float* dc_last) {
  const Layout L = layout(s);
  const index_t B = s.B, T = s.T, I = s.I, H = s.H, GH = rnn_gates(s.cell) * H;
  const bool gru = s.cell == Cell::GRU;
  const float* xs = ws + L.xs;
  const float* hs = ws + L.hs;
  float* dz = scratch + L.dz;
  float* dr = gru ? scratch + L.dhu : dz;          // gradient wrt h_{t-1} U (+ b_rec)
  // dh: the gradient wrt h_t from later steps (dh_last at the end); carry: LSTM dc (dc_last at
  // the end), GRU dh z.
  std::vector<float> dh(size_t(B * H), 0.f), carry(size_t(B * H), 0.f);
  if (dh_last) std::copy(dh_last, dh_last + B * H, dh.begin());
  if (dc_last && s.cell == Cell::LSTM) std::copy(dc_last, dc_last + B * H, carry.begin());
  for (index_t t = T - 1; t >= 0; --t) {
    for (index_t n = 0; n < B; ++n) {
      const float* dyr = s.return_sequences ? dy + (n * T + t) * H : (t == T - 1 ? dy + n * H : nullptr);
      float* d = dh.data() + n * H;
      float* z = dz + (t * B + n) * GH;
      if (!kept(s, mask, n, t)) {
        // h_t = h_{t-1} and c_t = c_{t-1}: their gradients pass unchanged; the output is h_{t-1}
        // (its gradient joins) or a constant 0 (zero_output_for_mask).
        if (dyr && !s.zero_output_for_mask) for (index_t j = 0; j < H; ++j) d[j] += dyr[j];
        std::fill(z, z + GH, 0.f);
        if (gru) std::fill(dr + (t * B + n) * GH, dr + (t * B + n + 1) * GH, 0.f);
        continue;
      }
      if (dyr) for (index_t j = 0; j < H; ++j) d[j] += dyr[j];
      const float* h = hs + ((t + 1) * B + n) * H;
      if (s.cell == Cell::SimpleRNN) {
        for (index_t j = 0; j < H; ++j) z[j] = act_backward(s.act, h[j], d[j]);
      } else if (s.cell == Cell::LSTM) {
        const float* g = ws + L.gates + (t * B + n) * GH;
        const float* cp = ws + L.cs + (t * B + n) * H;
        const float* tc = ws + L.tcs + (t * B + n) * H;
        for (index_t j = 0; j < H; ++j)
          detail::lstm_unit_backward(s.act, s.rec_act, g[j], g[H + j], g[2 * H + j], g[3 * H + j], cp[j],
                                     tc[j], d[j], carry[size_t(n * H + j)], z[j], z[H + j], z[2 * H + j],
                                     z[3 * H + j]);
      } else {
        const float* g = ws + L.gates + (t * B + n) * GH;
        const float* huh = ws + L.huh + (t * B + n) * H;
        const float* hp = hs + (t * B + n) * H;
        float* u = dr + (t * B + n) * GH;
        for (index_t j = 0; j < H; ++j) {
          detail::gru_unit_backward(s.act, s.rec_act, g[j], g[H + j], g[2 * H + j], huh[j], hp[j], d[j],
                                    z[j], z[H + j], z[2 * H + j], carry[size_t(n * H + j)]);
          u[j] = z[j]; u[H + j] = z[H + j]; u[2 * H + j] = z[2 * H + j] * g[H + j];
        }
      }
      // dh_{t-1} = dr_t U^T (+ the GRU's direct path dh_t z_t)
      const float* u = dr + (t * B + n) * GH;
      for (index_t k = 0; k < H; ++k) {
        double a = gru ? carry[size_t(n * H + k)] : 0.0;
        for (index_t j = 0; j < GH; ++j) a += double(u[j]) * U[k * GH + j];
        d[k] = float(a);
      }
    }
  }
  if (dh0) std::memcpy(dh0, dh.data(), size_t(B * H) * sizeof(float));
  if (dc0 && s.cell == Cell::LSTM) std::memcpy(dc0, carry.data(), size_t(B * H) * sizeof(float));
  for (index_t t = 0; t < T; ++t)
    for (index_t n = 0; n < B; ++n) {
      const float* z = dz + (t * B + n) * GH;
      const float* u = dr + (t * B + n) * GH;
      const float* xr = xs + (t * B + n) * I;
      const float* hp = hs + (t * B + n) * H;
      if (dW) for (index_t i = 0; i < I; ++i) for (index_t j = 0; j < GH; ++j) dW[i * GH + j] += xr[i] * z[j];
      if (dU) for (index_t k = 0; k < H; ++k) for (index_t j = 0; j < GH; ++j) dU[k * GH + j] += hp[k] * u[j];
      if (db) for (index_t j = 0; j < GH; ++j) db[j] += z[j];
      if (db && gru) for (index_t j = 0; j < GH; ++j) db[GH + j] += u[j];
    }
  if (dx)
    for (index_t n = 0; n < B; ++n)
      for (index_t t = 0; t < T; ++t) {
        const float* z = dz + (t * B + n) * GH;
        float* d = dx + (n * T + (s.go_backwards ? T - 1 - t : t)) * I;
        for (index_t i = 0; i < I; ++i) {
          double a = 0.0;
          for (index_t j = 0; j < GH; ++j) a += double(z[j]) * W[i * GH + j];
          d[i] = float(a);
        }
      }
}

// ================================================================================ portable steps
namespace {
using rnn_detail::MR;
using rnn_detail::NR;

void gemm_rows_portable(index_t m, index_t n, index_t k, const float* A, index_t lda, index_t k2,
                        const float* A2, index_t lda2, const float* Bp, index_t kp, const float* Cinit,
                        index_t ldci, float* C, index_t ldc) {
  for (index_t r = 0; r < m; ++r)
    for (index_t p = 0; p * NR < n; ++p) {
      const index_t j0 = p * NR, nn = std::min<index_t>(NR, n - j0);
      float acc[NR] = {};
      if (Cinit) for (index_t j = 0; j < nn; ++j) acc[j] = Cinit[r * ldci + j0 + j];
      const float* bp = Bp + p * kp * NR;
      for (index_t q = 0; q < k + k2; ++q) {
        const float a = q < k ? A[r * lda + q] : A2[r * lda2 + q - k];
        for (int j = 0; j < NR; ++j) acc[j] += a * bp[q * NR + j];
      }
      for (index_t j = 0; j < nn; ++j) C[r * ldc + j0 + j] = acc[j];
    }
}

void rnn_fwd_portable(index_t m, index_t H, Act a, float* h) {
  for (index_t i = 0; i < m * H; ++i) h[i] = act_forward(a, h[i]);
}

void lstm_fwd_portable(index_t m, index_t H, Act a, Act s, float* g, const float* cp, float* c, float* tc,
                       float* h) {
  for (index_t r = 0; r < m; ++r, g += 4 * H, cp += H, c += H, tc += H, h += H)
    for (index_t j = 0; j < H; ++j)
      detail::lstm_unit_forward(a, s, g[j], g[H + j], g[2 * H + j], g[3 * H + j], cp[j], c[j], tc[j], h[j]);
}

void gru_fwd_portable(index_t m, index_t H, Act a, Act s, float* g, const float* hu, const float* hp,
                      float* huh, float* h) {
  for (index_t r = 0; r < m; ++r, g += 3 * H, hu += 3 * H, hp += H, huh += H, h += H)
    for (index_t j = 0; j < H; ++j) {
      float z = g[j] + hu[j], rr = g[H + j] + hu[H + j], hh;
      huh[j] = hu[2 * H + j];
      detail::gru_unit_forward(a, s, z, rr, g[2 * H + j], huh[j], hp[j], hh, h[j]);
      g[j] = z; g[H + j] = rr; g[2 * H + j] = hh;
    }
}

inline float grad_in(const float* dh, const float* dy, index_t j) {
  return (dh ? dh[j] : 0.f) + (dy ? dy[j] : 0.f);
}

void rnn_bwd_portable(index_t m, index_t H, Act a, const float* dh, const float* dy, index_t ldy,
                      const float* h, float* dz) {
  for (index_t r = 0; r < m; ++r, h += H, dz += H) {
    for (index_t j = 0; j < H; ++j) dz[j] = act_backward(a, h[j], grad_in(dh, dy, j));
    if (dh) dh += H;
    if (dy) dy += ldy;
  }
}

void lstm_bwd_portable(index_t m, index_t H, Act a, Act s, const float* dh, const float* dy, index_t ldy,
                       const float* g, const float* cp, const float* tc, float* dc, float* dz) {
  for (index_t r = 0; r < m; ++r, g += 4 * H, cp += H, tc += H, dc += H, dz += 4 * H) {
    for (index_t j = 0; j < H; ++j)
      detail::lstm_unit_backward(a, s, g[j], g[H + j], g[2 * H + j], g[3 * H + j], cp[j], tc[j],
                                 grad_in(dh, dy, j), dc[j], dz[j], dz[H + j], dz[2 * H + j], dz[3 * H + j]);
    if (dh) dh += H;
    if (dy) dy += ldy;
  }
}

void gru_bwd_portable(index_t m, index_t H, Act a, Act s, const float* dh, const float* dy, index_t ldy,
                      const float* g, const float* huh, const float* hp, float* carry, float* dz, float* dhu) {
  for (index_t r = 0; r < m; ++r, g += 3 * H, huh += H, hp += H, carry += H, dz += 3 * H, dhu += 3 * H) {
    for (index_t j = 0; j < H; ++j) {
      detail::gru_unit_backward(a, s, g[j], g[H + j], g[2 * H + j], huh[j], hp[j],
                                grad_in(dh, dy, j) + carry[j], dz[j], dz[H + j], dz[2 * H + j], carry[j]);
      dhu[j] = dz[j]; dhu[H + j] = dz[H + j]; dhu[2 * H + j] = dz[2 * H + j] * g[H + j];
    }
    if (dh) dh += H;
    if (dy) dy += ldy;
  }
}

const rnn_detail::StepKernels kPortable = {gemm_rows_portable, rnn_fwd_portable, lstm_fwd_portable,
                                           gru_fwd_portable,   rnn_bwd_portable, lstm_bwd_portable,
                                           gru_bwd_portable,   false};

const rnn_detail::StepKernels& step_kernels() {
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512()) return rnn_detail::avx512_step_kernels();
#endif
#if defined(KILNET_HAVE_AVX2_BUILD)
  if (use_avx2()) return rnn_detail::avx2_step_kernels();
#endif
  return kPortable;
}

// op(M) (K x N; M is K x N with row stride ld, or N x K when trans) into NR-column panels of
// Kp rows (default K), as their rows [k0, k0 + K): two calls stack two matrices. Called inside
// a parallel region, the team shares the panels (and waits for all of them at the end).
void pack_panels(index_t K, index_t N, const float* M, index_t ld, bool trans, float* dst, index_t Kp = 0,
                 index_t k0 = 0) {
  if (Kp == 0) Kp = K;
  const index_t np = (N + NR - 1) / NR;
#pragma omp for schedule(static)
  for (index_t p = 0; p < np; ++p) {
    float* d = dst + (p * Kp + k0) * NR;
    const index_t j0 = p * NR, nn = std::min<index_t>(NR, N - j0);
    for (index_t k = 0; k < K; ++k) {
      for (index_t j = 0; j < nn; ++j) d[k * NR + j] = trans ? M[(j0 + j) * ld + k] : M[k * ld + j0 + j];
      for (index_t j = nn; j < NR; ++j) d[k * NR + j] = 0.f;
    }
  }
}

index_t packed_floats(index_t K, index_t N) { return (N + NR - 1) / NR * K * NR; }

// Threads for the recurrence: each owns >= 4 batch rows and >= 2^20 multiply-adds (~20 us), so
// that waking the team pays off; small problems stay on one thread.
int recurrence_threads(const RnnShape& s) {
  const index_t GH = rnn_gates(s.cell) * s.H;
  int nt = threads_for(s.T * s.B * (s.I + s.H) * GH, index_t(1) << 20);
  return int(std::max<index_t>(1, std::min<index_t>(nt, s.B / 4)));
}

// Asks for rows x n floats (row i at p + i*ld) to be brought toward the cache, without waiting.
void prefetch_rows(const float* p, index_t rows, index_t n, index_t ld) {
  for (index_t i = 0; i < rows; ++i)
    for (index_t j = 0; j < n; j += 16) __builtin_prefetch(p + i * ld + j, 0, 2);
}

// Calls f(r, m) for the thread's rows [r0, r1) in blocks of <= MR, sizes balanced.
template <class F>
void for_row_blocks(index_t r0, index_t r1, F&& f) {
  const index_t rows = r1 - r0, nb = (rows + MR - 1) / MR;
  for (index_t c = 0; c < nb; ++c) {
    const index_t a = r0 + rows * c / nb, e = r0 + rows * (c + 1) / nb;
    f(a, e - a);
  }
}

// One block of columns of the weight-gradient GEMM's left operand: n columns copied from src
// (row r at src + r*ld), accumulated into out (n x GH). n == 0: the block is skipped.
struct GradPart {
  const float* src;
  index_t ld, n;
  float* out;
};

// out_p += part_p^T dz for every part, as one GEMM over the parts side by side ([rows, sum n]),
// and db += colsum(dz) (db may be null) from that GEMM's packing of dz. One GEMM packs dz once
// and has M = I + H rows, where separate ones had a small-M dW (I = 28 rows ran at half the
// speed of dU) and packed dz twice. (A column of ones for db made M = 157: a 27th row sliver
// of the 6-row kernel for one row.) gemm's result does not depend on the thread count, so
// neither do dW, dU and db.
void weight_grads(index_t rows, index_t GH, const float* dz, std::initializer_list<GradPart> parts, float* db) {
  index_t M = 0;
  for (const GradPart& p : parts) M += p.n;
  if (M == 0) {
    if (db) gemm(true, false, 0, GH, rows, 1.f, nullptr, 1, dz, GH, 0.f, nullptr, GH, nullptr, db);
    return;
  }
  thread_local std::vector<float> cat_buf, prod;
  cat_buf.resize(size_t(rows * M));
  prod.resize(size_t(M * GH));
  float* cat = cat_buf.data();   // this thread's buffer: inside the team, cat_buf is each thread's own
#pragma omp parallel for num_threads(threads_for(rows * M)) schedule(static)
  for (index_t r = 0; r < rows; ++r) {
    float* d = cat + r * M;
    for (const GradPart& p : parts) {
      std::memcpy(d, p.src + r * p.ld, size_t(p.n) * sizeof(float));
      d += p.n;
    }
  }
  gemm(true, false, M, GH, rows, 1.f, cat, M, dz, GH, 0.f, prod.data(), GH, nullptr, db);
  const float* src = prod.data();
  for (const GradPart& p : parts) {
#pragma omp parallel for num_threads(threads_for(p.n * GH)) schedule(static)
    for (index_t i = 0; i < p.n * GH; ++i) p.out[i] += src[i];
    src += p.n * GH;
  }
}

}  // namespace

// ================================================================================ fast path
void rnn_forward(const RnnShape& s, const float* x, const float* W, const float* U, const float* b,
                 const float* h0, const float* c0, float* y, float* ws, const float* mask, float* h_last,
                 float* c_last) {
  const Layout L = layout(s);
  const index_t B = s.B, T = s.T, I = s.I, H = s.H, GH = rnn_gates(s.cell) * H, TB = T * B;
  const rnn_detail::StepKernels& K = step_kernels();
  float* xs = ws + L.xs;
  float* hs = ws + L.hs;
  float* gates = s.cell == Cell::SimpleRNN ? hs + B * H : ws + L.gates;   // pre-activations
  to_time_major(s, x, xs);
  init_state(hs, h0, B * H);
  if (s.cell == Cell::LSTM) init_state(ws + L.cs, c0, B * H);
  // SimpleRNN and LSTM: each step's pre-activations b + x_t W + h_{t-1} U are one product with
  // [W; U] packed, so x W never makes a round trip through memory. The GRU needs x W + b_in and
  // h U + b_rec apart (r multiplies the latter): x W + b_in for every step is one GEMM first.
  const bool gru = s.cell == Cell::GRU;
  const index_t KI = gru ? 0 : I;   // rows of W in the packed panels
  if (gru) gemm(false, false, TB, GH, I, 1.f, xs, I, W, GH, 0.f, gates, GH, b);
  const float* b_rec = (gru && b) ? b + GH : nullptr;

  thread_local std::vector<float> packed;
  packed.resize(size_t(packed_floats(KI + H, GH)));
  float* Up = packed.data();            // this thread's buffer, shared with the team below
  const bool zero_h0 = h0 == nullptr;   // then step 0 has no recurrent term

  const int nt = recurrence_threads(s);
#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num(), n_thr = omp_get_num_threads();
    const index_t r0 = B * tid / n_thr, r1 = B * (tid + 1) / n_thr;
    if (!gru) pack_panels(I, GH, W, GH, false, Up, I + H, 0);
    pack_panels(H, GH, U, GH, false, Up, KI + H, KI);
    thread_local std::vector<float> tmp;
    if (gru) tmp.resize(size_t(MR * GH));
    for (index_t t = 0; t < T; ++t) {
      const index_t kh = (t == 0 && zero_h0) ? 0 : H;   // h_{t-1}'s columns in the product
      for_row_blocks(r0, r1, [&](index_t r, index_t m) {
        const index_t row = t * B + r;
        const float* hp = hs + row * H;
        float* h = hs + (row + B) * H;
        if (s.cell == Cell::SimpleRNN) {
          K.gemm_rows(m, H, I, xs + row * I, I, kh, hp, H, Up, I + H, b, 0, h, H);
          K.rnn_fwd(m, H, s.act, h);
        } else if (s.cell == Cell::LSTM) {
          float* g = gates + row * GH;
          K.gemm_rows(m, GH, I, xs + row * I, I, kh, hp, H, Up, I + H, b, 0, g, GH);
          K.lstm_fwd(m, H, s.act, s.rec_act, g, ws + L.cs + row * H, ws + L.cs + (row + B) * H,
                     ws + L.tcs + row * H, h);
        } else {
          float* g = gates + row * GH;
          float* hu = tmp.data();
          if (kh) K.gemm_rows(m, GH, H, hp, H, 0, nullptr, 0, Up, H, b_rec, 0, hu, GH);
          else for (index_t i = 0; i < m; ++i)
            for (index_t j = 0; j < GH; ++j) hu[i * GH + j] = b_rec ? b_rec[j] : 0.f;
          K.gru_fwd(m, H, s.act, s.rec_act, g, hu, hp, ws + L.huh + row * H, h);
        }
        if (mask)   // masked rows carry their states (computed above and discarded: rows are few)
          for (index_t i = 0; i < m; ++i)
            if (!kept(s, mask, r + i, t)) {
              std::memcpy(h + i * H, hp + i * H, size_t(H) * sizeof(float));
              if (s.cell == Cell::LSTM)
                std::memcpy(ws + L.cs + (row + B + i) * H, ws + L.cs + (row + i) * H, size_t(H) * sizeof(float));
            }
      });
    }
    copy_outputs(s, hs, mask, r0, r1, y);
    copy_last_states(s, ws, r0, r1, h_last, c_last);
  }
}

void rnn_backward(const RnnShape& s, const float* dy, const float* W, const float* U,
                  const float* ws, float* scratch, float* dx, float* dW, float* dU, float* db,
                  float* dh0, float* dc0, const float* mask, const float* dh_last, const float* dc_last) {
  const Layout L = layout(s);
  const index_t B = s.B, T = s.T, I = s.I, H = s.H, GH = rnn_gates(s.cell) * H, TB = T * B;
  const bool gru = s.cell == Cell::GRU;
  const rnn_detail::StepKernels& K = step_kernels();
  const float* xs = ws + L.xs;
  const float* hs = ws + L.hs;
  float* dz = scratch + L.dz;
  float* dr = gru ? scratch + L.dhu : dz;   // gradient wrt h_{t-1} U (+ b_rec): what U^T multiplies
  float* carry = scratch + L.carry;
  // pass: the gradient wrt h_t that reached it around masked steps (and dh_last at the end); it
  // joins dz_{t+1} U^T. Without a mask or dh_last it stays zero and is not touched.
  float* pass = scratch + L.pass;
  const bool use_pass = mask || dh_last;

  thread_local std::vector<float> packed;
  packed.resize(size_t(packed_floats(GH, H)));
  float* UTp = packed.data();

  const int nt = recurrence_threads(s);
#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num(), n_thr = omp_get_num_threads();
    const index_t r0 = B * tid / n_thr, r1 = B * (tid + 1) / n_thr;
    pack_panels(GH, H, U, GH, true, UTp);   // U^T: GH x H
    thread_local std::vector<float> tmp, held;
    tmp.resize(size_t(MR * H));
    if (mask) held.resize(size_t(2 * MR * H));
    if (dc_last && s.cell == Cell::LSTM) std::memcpy(carry + r0 * H, dc_last + r0 * H, size_t((r1 - r0) * H) * sizeof(float));
    else std::fill(carry + r0 * H, carry + r1 * H, 0.f);
    if (use_pass) {
      if (dh_last) std::memcpy(pass + r0 * H, dh_last + r0 * H, size_t((r1 - r0) * H) * sizeof(float));
      else std::fill(pass + r0 * H, pass + r1 * H, 0.f);
    }
    for (index_t t = T - 1; t >= 0; --t) {
      for_row_blocks(r0, r1, [&](index_t r, index_t m) {
        const float* dyr = nullptr;
        index_t ldy = H;
        if (s.return_sequences) { dyr = dy + (r * T + t) * H; ldy = T * H; }
        else if (t == T - 1) dyr = dy + r * H;
        const index_t row = t * B + r;
        // The gate kernel's inputs were written long ago (forward) and sit in L3 or memory: they
        // arrive during the dh GEMM instead of stalling the gate math (~half its time on loads).
        if (!K.prefetches_ahead) {
          if (dyr) prefetch_rows(dyr, m, H, ldy);
          if (s.cell != Cell::SimpleRNN) prefetch_rows(ws + L.gates + row * GH, 1, m * GH, 0);
          if (s.cell == Cell::LSTM) {
            prefetch_rows(ws + L.cs + row * H, 1, m * H, 0);
            prefetch_rows(ws + L.tcs + row * H, 1, m * H, 0);
          }
        }
        const float* dh = nullptr;
        if (t < T - 1) {   // dh_t = dz_{t+1} U^T
          K.gemm_rows(m, H, GH, dr + ((t + 1) * B + r) * GH, GH, 0, nullptr, 0, UTp, GH, nullptr, 0, tmp.data(), H);
          dh = tmp.data();
        }
        float* ps = pass + r * H;
        if (use_pass) {
          if (dh) for (index_t i = 0; i < m * H; ++i) tmp[size_t(i)] += ps[i];
          else dh = ps;
        }
        // A masked row: the whole gradient wrt h_t (and its c_t) goes on to h_{t-1} (c_{t-1}); kept
        // in `held` while the gate kernel below computes (and the fix-up after it discards) the row.
        float* g_held = held.data();
        float* c_held = g_held + MR * H;
        if (mask)
          for (index_t i = 0; i < m; ++i) {
            if (kept(s, mask, r + i, t)) continue;
            float* g = g_held + i * H;
            for (index_t j = 0; j < H; ++j) g[j] = dh ? dh[i * H + j] : 0.f;
            if (dyr && !s.zero_output_for_mask) for (index_t j = 0; j < H; ++j) g[j] += dyr[i * ldy + j];
            if (gru) for (index_t j = 0; j < H; ++j) g[j] += carry[(r + i) * H + j];
            if (s.cell == Cell::LSTM) std::memcpy(c_held + i * H, carry + (r + i) * H, size_t(H) * sizeof(float));
          }
        if (s.cell == Cell::SimpleRNN)
          K.rnn_bwd(m, H, s.act, dh, dyr, ldy, hs + (row + B) * H, dz + row * GH);
        else if (s.cell == Cell::LSTM)
          K.lstm_bwd(m, H, s.act, s.rec_act, dh, dyr, ldy, ws + L.gates + row * GH, ws + L.cs + row * H,
                     ws + L.tcs + row * H, carry + r * H, dz + row * GH);
        else
          K.gru_bwd(m, H, s.act, s.rec_act, dh, dyr, ldy, ws + L.gates + row * GH, ws + L.huh + row * H,
                    hs + row * H, carry + r * H, dz + row * GH, dr + row * GH);
        if (use_pass)
          for (index_t i = 0; i < m; ++i) {
            float* p = ps + i * H;
            if (kept(s, mask, r + i, t)) { std::fill(p, p + H, 0.f); continue; }   // now inside dz
            std::memcpy(p, g_held + i * H, size_t(H) * sizeof(float));
            std::fill(dz + (row + i) * GH, dz + (row + i + 1) * GH, 0.f);
            if (gru) {
              std::fill(dr + (row + i) * GH, dr + (row + i + 1) * GH, 0.f);
              std::fill(carry + (r + i) * H, carry + (r + i + 1) * H, 0.f);
            }
            if (s.cell == Cell::LSTM) std::memcpy(carry + (r + i) * H, c_held + i * H, size_t(H) * sizeof(float));
          }
      });
    }
    if (dh0) {   // dh_{-1} = dz_0 U^T (+ dh_0 z_0 for the GRU) (+ what passed step 0)
      for_row_blocks(r0, r1, [&](index_t r, index_t m) {
        K.gemm_rows(m, H, GH, dr + r * GH, GH, 0, nullptr, 0, UTp, GH, gru ? carry + r * H : nullptr, H, dh0 + r * H, H);
      });
      if (use_pass)
        for (index_t i = r0 * H; i < r1 * H; ++i) dh0[i] += pass[i];
    }
    if (dc0 && s.cell == Cell::LSTM) std::memcpy(dc0 + r0 * H, carry + r0 * H, size_t((r1 - r0) * H) * sizeof(float));
  }

  // dW += xs^T dz, dU += hs[0:T]^T dr, db += colsum(dz) (and colsum(dr) for the GRU's b_rec).
  if (!gru) {   // dr == dz: all three from one GEMM over [x_t | h_{t-1} | 1]
    weight_grads(TB, GH, dz, {{xs, I, dW ? I : 0, dW}, {hs, H, dU ? H : 0, dU}}, db);
  } else {
    weight_grads(TB, GH, dz, {{xs, I, dW ? I : 0, dW}}, db);
    weight_grads(TB, GH, dr, {{hs, H, dU ? H : 0, dU}}, db ? db + GH : nullptr);
  }
  if (dx) {
    float* dxs = scratch + L.dxs;
    gemm(false, true, TB, I, GH, 1.f, dz, GH, W, GH, 0.f, dxs, I, nullptr);
    from_time_major(s, dxs, dx);
  }
}

}  // namespace kilnet::cpu
