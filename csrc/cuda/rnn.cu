// rnn.cu — SimpleRNN, LSTM and GRU over whole sequences on the GPU, forward and BPTT (see
// kilnet/rnn.h; ws and scratch have the CPU's layout, kilnet/detail/rnn_layout.h).
//
//   forward   xs = x time-major; [hs[1:] | gates] = xs W + b        one GEMM for all T steps
//             per step t: pre-activations += h_{t-1} U               GEMM (beta = 1)
//                         gate math                                  one elementwise kernel
//             (GRU: hu = h_{t-1} U + b_rec into a B x 3H buffer, read by the gate kernel)
//             (mask: then masked rows copy h_{t-1} and c_{t-1}: the states are carried)
//   backward  per step t from the last: dh = dr_{t+1} U^T            GEMM
//             (mask / dh_last: + pass, the gradient that crossed masked steps; masked rows are
//             held before the gate kernel and fixed after it: dz = 0, states passed through)
//                         gate derivatives -> dz_t (GRU: also dr_t)  one elementwise kernel
//             dh0 = dr_0 U^T (+ carry), dU += hs[0:T]^T dr, dW += xs^T dz, db += colsums,
//             dx = dz W^T then back to batch-major                  one GEMM each
// The per-element gate math is kilnet/detail/elementwise.h's, the same functions the CPU runs.
// Every GEMM is kilnet::cuda::gemm on the caller's stream; the steps are ordered by the stream.
#include "kilnet/detail/elementwise.h"
#include "kilnet/detail/rnn_layout.h"
#include "kilnet/gemm.h"
#include "kilnet/rnn.h"
#include "launch.cuh"
#include "stream_buffer.cuh"

namespace kilnet::cuda {

using detail::act_backward;
using detail::act_forward;

namespace {

constexpr int kBlock = 256;

#define KILNET_GRID_STRIDE(i, n) \
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); i += index_t(gridDim.x) * blockDim.x)

// xs[t, b, :] = x[b, tt, :], tt = t (or T-1-t for go_backwards).
__global__ void to_time_major_kernel(index_t B, index_t T, index_t I, bool back,
                                     const float* __restrict__ x, float* __restrict__ xs) {
  KILNET_GRID_STRIDE(i, T * B * I) {
    const index_t k = i % I, r = i / I, b = r % B, t = r / B;
    const index_t tt = back ? T - 1 - t : t;
    xs[i] = x[(b * T + tt) * I + k];
  }
}

// The inverse: x[b, tt, :] = xs[t, b, :].
__global__ void from_time_major_kernel(index_t B, index_t T, index_t I, bool back,
                                       const float* __restrict__ xs, float* __restrict__ x) {
  KILNET_GRID_STRIDE(i, B * T * I) {
    const index_t k = i % I, r = i / I, tt = r % T, b = r / T;
    const index_t t = back ? T - 1 - tt : tt;
    x[i] = xs[(t * B + b) * I + k];
  }
}

// Whether row n takes part in processing step t (mask (B, T) in x's time order; nullptr: all).
__device__ __forceinline__ bool kept(const float* mask, index_t T, bool back, index_t n, index_t t) {
  return !mask || mask[n * T + (back ? T - 1 - t : t)] != 0.f;
}

// y (B, T, H) = every h_t, or y (B, H) = the last one; hs[t+1] = h_t (a masked step's h_t is
// h_{t-1}, carried); zero: masked steps output 0 (zero_output_for_mask).
__global__ void copy_outputs_kernel(index_t B, index_t T, index_t H, bool seq, bool back, bool zero,
                                    const float* __restrict__ mask, const float* __restrict__ hs,
                                    float* __restrict__ y) {
  if (seq) {
    KILNET_GRID_STRIDE(i, B * T * H) {
      const index_t j = i % H, r = i / H, t = r % T, n = r / T;
      y[i] = (zero && !kept(mask, T, back, n, t)) ? 0.f : hs[((t + 1) * B + n) * H + j];
    }
  } else {
    KILNET_GRID_STRIDE(i, B * H) y[i] = (zero && !kept(mask, T, back, i / H, T - 1)) ? 0.f : hs[T * B * H + i];
  }
}

// Masked rows of step t carry their states: h = h_prev (and c = c_prev for the LSTM).
__global__ void mask_carry_kernel(index_t B, index_t T, index_t H, index_t t, bool back,
                                  const float* __restrict__ mask, const float* __restrict__ h_prev,
                                  float* __restrict__ h, const float* __restrict__ c_prev,
                                  float* __restrict__ c) {
  KILNET_GRID_STRIDE(i, B * H) {
    if (kept(mask, T, back, i / H, t)) continue;
    h[i] = h_prev[i];
    if (c) c[i] = c_prev[i];
  }
}

// Backward, before step t's gate kernel: for masked rows, the whole gradient wrt h_t (dh, the
// output's dy unless zero, the GRU's carry) into held, and the LSTM's dc into c_held; they go
// on to h_{t-1} / c_{t-1} unchanged. Also adds pass (what crossed later masked steps) into dh.
__global__ void mask_hold_kernel(index_t B, index_t T, index_t H, index_t t, bool back, bool zero,
                                 const float* __restrict__ mask, float* __restrict__ dh,
                                 const float* __restrict__ pass, const float* __restrict__ dy, index_t ldy,
                                 const float* __restrict__ carry, bool gru, bool lstm,
                                 float* __restrict__ held, float* __restrict__ c_held) {
  KILNET_GRID_STRIDE(i, B * H) {
    const index_t r = i / H, j = i % H;
    if (dh && pass) dh[i] += pass[i];
    if (kept(mask, T, back, r, t)) continue;
    float g = dh ? dh[i] : (pass ? pass[i] : 0.f);
    if (dy && !zero) g += dy[r * ldy + j];
    if (gru) g += carry[i];
    held[i] = g;
    if (lstm) c_held[i] = carry[i];
  }
}

// After step t's gate kernel: kept rows' pass is now inside dz (pass = 0); masked rows get
// dz = 0 (and the GRU's dr = 0, carry = 0; the LSTM's dc restored) and pass = held.
__global__ void mask_fix_kernel(index_t B, index_t T, index_t H, index_t G, index_t t, bool back,
                                const float* __restrict__ mask, float* __restrict__ pass,
                                const float* __restrict__ held, const float* __restrict__ c_held,
                                float* __restrict__ dz, float* __restrict__ dr, float* __restrict__ carry,
                                bool gru, bool lstm) {
  KILNET_GRID_STRIDE(i, B * H) {
    const index_t r = i / H, j = i % H;
    if (kept(mask, T, back, r, t)) { pass[i] = 0.f; continue; }
    pass[i] = held[i];
    for (index_t k = 0; k < G; ++k) {
      dz[r * G * H + k * H + j] = 0.f;
      if (gru) dr[r * G * H + k * H + j] = 0.f;
    }
    if (gru) carry[i] = 0.f;
    if (lstm) carry[i] = c_held[i];
  }
}

__global__ void add_kernel(index_t n, const float* __restrict__ a, float* __restrict__ y) {
  KILNET_GRID_STRIDE(i, n) y[i] += a[i];
}

// ---- forward steps: one thread per (row r, unit j) of the step, i = r*H + j ------------------
// SimpleRNN: h holds x W + b + h_{t-1} U, becomes h_t.
__global__ void rnn_fwd_step_kernel(index_t n, Act a, float* __restrict__ h) {
  KILNET_GRID_STRIDE(i, n) h[i] = act_forward(a, h[i]);
}

// LSTM: g (B, 4H) holds the pre-activations, becomes the activated i f g o.
__global__ void lstm_fwd_step_kernel(index_t B, index_t H, Act a, Act s, float* __restrict__ g,
                                     const float* __restrict__ c_prev, float* __restrict__ c,
                                     float* __restrict__ tc, float* __restrict__ h) {
  KILNET_GRID_STRIDE(i, B * H) {
    const index_t r = i / H, j = i % H;
    float* gr = g + r * 4 * H;
    float gi = gr[j], gf = gr[H + j], gg = gr[2 * H + j], go = gr[3 * H + j];
    float cv, tcv, hv;
    detail::lstm_unit_forward(a, s, gi, gf, gg, go, c_prev[i], cv, tcv, hv);
    gr[j] = gi; gr[H + j] = gf; gr[2 * H + j] = gg; gr[3 * H + j] = go;
    c[i] = cv; tc[i] = tcv; h[i] = hv;
  }
}

// GRU: g (B, 3H) holds x W + b_in, becomes the activated z r hh. hu (B, 3H) = h_{t-1} U + b_rec,
// or nullptr when h_{t-1} is zero (then hu = b_rec, or 0 without a bias). huh = hu's h block.
__global__ void gru_fwd_step_kernel(index_t B, index_t H, Act a, Act s, float* __restrict__ g,
                                    const float* __restrict__ hu, const float* __restrict__ b_rec,
                                    const float* __restrict__ h_prev, float* __restrict__ huh,
                                    float* __restrict__ h) {
  KILNET_GRID_STRIDE(i, B * H) {
    const index_t r = i / H, j = i % H;
    float* gr = g + r * 3 * H;
    float hz, hr, hh_u;
    if (hu) {
      const float* ur = hu + r * 3 * H;
      hz = ur[j]; hr = ur[H + j]; hh_u = ur[2 * H + j];
    } else {
      hz = b_rec ? b_rec[j] : 0.f; hr = b_rec ? b_rec[H + j] : 0.f; hh_u = b_rec ? b_rec[2 * H + j] : 0.f;
    }
    float z = gr[j] + hz, rr = gr[H + j] + hr, hh, hv;
    huh[i] = hh_u;
    detail::gru_unit_forward(a, s, z, rr, gr[2 * H + j], hh_u, h_prev[i], hh, hv);
    gr[j] = z; gr[H + j] = rr; gr[2 * H + j] = hh;
    h[i] = hv;
  }
}

// ---- backward steps ------------------------------------------------------------------------
// The gradient wrt h_t of row r, unit j: dh (B, H; dr_{t+1} U^T, nullptr at the last step) plus
// dy (row r at dy + r*ldy; nullptr when no output gradient reaches this step).
__device__ __forceinline__ float grad_in(const float* dh, const float* dy, index_t ldy, index_t r,
                                         index_t j, index_t H) {
  return (dh ? dh[r * H + j] : 0.f) + (dy ? dy[r * ldy + j] : 0.f);
}

__global__ void rnn_bwd_step_kernel(index_t B, index_t H, Act a, const float* __restrict__ dh,
                                    const float* __restrict__ dy, index_t ldy,
                                    const float* __restrict__ h, float* __restrict__ dz) {
  KILNET_GRID_STRIDE(i, B * H) {
    const index_t r = i / H, j = i % H;
    dz[i] = act_backward(a, h[i], grad_in(dh, dy, ldy, r, j, H));
  }
}

// dc (B, H) enters as the gradient wrt c_t and leaves as the one wrt c_{t-1}.
__global__ void lstm_bwd_step_kernel(index_t B, index_t H, Act a, Act s, const float* __restrict__ dh,
                                     const float* __restrict__ dy, index_t ldy,
                                     const float* __restrict__ g, const float* __restrict__ c_prev,
                                     const float* __restrict__ tc, float* __restrict__ dc,
                                     float* __restrict__ dz) {
  KILNET_GRID_STRIDE(i, B * H) {
    const index_t r = i / H, j = i % H;
    const float* gr = g + r * 4 * H;
    float* zr = dz + r * 4 * H;
    float dcv = dc[i], di, df, dg, d_o;
    detail::lstm_unit_backward(a, s, gr[j], gr[H + j], gr[2 * H + j], gr[3 * H + j], c_prev[i], tc[i],
                               grad_in(dh, dy, ldy, r, j, H), dcv, di, df, dg, d_o);
    dc[i] = dcv;
    zr[j] = di; zr[H + j] = df; zr[2 * H + j] = dg; zr[3 * H + j] = d_o;
  }
}

// carry (B, H) enters as dh_{t+1} z_{t+1} (part of dh_t) and leaves as dh_t z_t; dhu (B, 3H) is
// the gradient wrt h_{t-1} U + b_rec.
__global__ void gru_bwd_step_kernel(index_t B, index_t H, Act a, Act s, const float* __restrict__ dh,
                                    const float* __restrict__ dy, index_t ldy,
                                    const float* __restrict__ g, const float* __restrict__ huh,
                                    const float* __restrict__ h_prev, float* __restrict__ carry,
                                    float* __restrict__ dz, float* __restrict__ dhu) {
  KILNET_GRID_STRIDE(i, B * H) {
    const index_t r = i / H, j = i % H;
    const float* gr = g + r * 3 * H;
    float* zr = dz + r * 3 * H;
    float* ur = dhu + r * 3 * H;
    float dxz, dxr, dxh, direct;
    detail::gru_unit_backward(a, s, gr[j], gr[H + j], gr[2 * H + j], huh[i], h_prev[i],
                              grad_in(dh, dy, ldy, r, j, H) + carry[i], dxz, dxr, dxh, direct);
    carry[i] = direct;
    zr[j] = dxz; zr[H + j] = dxr; zr[2 * H + j] = dxh;
    ur[j] = dxz; ur[H + j] = dxr; ur[2 * H + j] = dxh * gr[H + j];
  }
}

void copy_or_zero(float* dst, const float* src, index_t n, cudaStream_t st, const char* what) {
  if (src) check(cudaMemcpyAsync(dst, src, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice, st), what);
  else check(cudaMemsetAsync(dst, 0, size_t(n) * sizeof(float), st), what);
}

}  // namespace

void rnn_forward(const RnnShape& s, const float* x, const float* W, const float* U, const float* b,
                 const float* h0, const float* c0, float* y, float* ws, void* stream, const float* mask,
                 float* h_last, float* c_last) {
  const detail::RnnLayout L = detail::rnn_layout(s);
  const index_t B = s.B, T = s.T, I = s.I, H = s.H, GH = detail::rnn_gate_count(s.cell) * H, TB = T * B;
  if (B <= 0 || T <= 0 || I <= 0 || H <= 0) return;
  const cudaStream_t st = as_stream(stream);
  float* xs = ws + L.xs;
  float* hs = ws + L.hs;
  float* gates = s.cell == Cell::SimpleRNN ? hs + B * H : ws + L.gates;   // pre-activations

  to_time_major_kernel<<<grid_for(TB * I, kBlock), kBlock, 0, st>>>(B, T, I, s.go_backwards, x, xs);
  KILNET_CHECK_LAUNCH("to_time_major_kernel");
  copy_or_zero(hs, h0, B * H, st, "rnn_forward: h0");
  if (s.cell == Cell::LSTM) copy_or_zero(ws + L.cs, c0, B * H, st, "rnn_forward: c0");
  gemm(false, false, TB, GH, I, 1.f, xs, I, W, GH, 0.f, gates, GH, b, stream);   // every step's x W + b

  const float* b_rec = (s.cell == Cell::GRU && b) ? b + GH : nullptr;
  // GRU: h_{t-1} U + b_rec of one step
  StreamBuffer<float> hu_buf(s.cell == Cell::GRU ? size_t(B * GH) : 0, st, "cudaMallocAsync (rnn_forward GRU buffer)");
  float* hu = hu_buf.get();
  const unsigned grid = grid_for(B * H, kBlock);
  for (index_t t = 0; t < T; ++t) {
    const bool rec = !(t == 0 && h0 == nullptr);   // h_{-1} = 0: no recurrent term
    const float* hp = hs + t * B * H;
    float* h = hs + (t + 1) * B * H;
    if (s.cell == Cell::SimpleRNN) {
      if (rec) gemm(false, false, B, H, H, 1.f, hp, H, U, H, 1.f, h, H, nullptr, stream);
      rnn_fwd_step_kernel<<<grid, kBlock, 0, st>>>(B * H, s.act, h);
      KILNET_CHECK_LAUNCH("rnn_fwd_step_kernel");
    } else if (s.cell == Cell::LSTM) {
      float* g = gates + t * B * GH;
      if (rec) gemm(false, false, B, GH, H, 1.f, hp, H, U, GH, 1.f, g, GH, nullptr, stream);
      lstm_fwd_step_kernel<<<grid, kBlock, 0, st>>>(B, H, s.act, s.rec_act, g, ws + L.cs + t * B * H,
                                                    ws + L.cs + (t + 1) * B * H, ws + L.tcs + t * B * H, h);
      KILNET_CHECK_LAUNCH("lstm_fwd_step_kernel");
    } else {
      float* g = gates + t * B * GH;
      if (rec) gemm(false, false, B, GH, H, 1.f, hp, H, U, GH, 0.f, hu, GH, b_rec, stream);
      gru_fwd_step_kernel<<<grid, kBlock, 0, st>>>(B, H, s.act, s.rec_act, g, rec ? hu : nullptr, b_rec, hp,
                                                   ws + L.huh + t * B * H, h);
      KILNET_CHECK_LAUNCH("gru_fwd_step_kernel");
    }
    if (mask) {
      const bool lstm = s.cell == Cell::LSTM;
      mask_carry_kernel<<<grid, kBlock, 0, st>>>(B, T, H, t, s.go_backwards, mask, hp, h,
                                                 lstm ? ws + L.cs + t * B * H : nullptr,
                                                 lstm ? ws + L.cs + (t + 1) * B * H : nullptr);
      KILNET_CHECK_LAUNCH("mask_carry_kernel");
    }
  }
  const index_t ny = s.return_sequences ? B * T * H : B * H;
  copy_outputs_kernel<<<grid_for(ny, kBlock), kBlock, 0, st>>>(B, T, H, s.return_sequences, s.go_backwards,
                                                               s.zero_output_for_mask && mask, mask, hs, y);
  KILNET_CHECK_LAUNCH("copy_outputs_kernel");
  if (h_last)
    check(cudaMemcpyAsync(h_last, hs + T * B * H, size_t(B * H) * sizeof(float), cudaMemcpyDeviceToDevice, st),
          "rnn_forward: h_last");
  if (c_last && s.cell == Cell::LSTM)
    check(cudaMemcpyAsync(c_last, ws + L.cs + T * B * H, size_t(B * H) * sizeof(float), cudaMemcpyDeviceToDevice, st),
          "rnn_forward: c_last");
}

void rnn_backward(const RnnShape& s, const float* dy, const float* W, const float* U,
                  const float* ws, float* scratch, float* dx, float* dW, float* dU, float* db,
                  float* dh0, float* dc0, void* stream, const float* mask, const float* dh_last,
                  const float* dc_last) {
  const detail::RnnLayout L = detail::rnn_layout(s);
  const index_t B = s.B, T = s.T, I = s.I, H = s.H, GH = detail::rnn_gate_count(s.cell) * H, TB = T * B;
  if (B <= 0 || T <= 0 || I <= 0 || H <= 0) return;
  const bool gru = s.cell == Cell::GRU;
  const cudaStream_t st = as_stream(stream);
  const float* xs = ws + L.xs;
  const float* hs = ws + L.hs;
  float* dz = scratch + L.dz;
  float* dr = gru ? scratch + L.dhu : dz;   // gradient wrt h_{t-1} U (+ b_rec): what U^T multiplies
  float* carry = scratch + L.carry;         // LSTM: dc; GRU: dh z
  // pass: the gradient wrt h_t that reached it around masked steps (and dh_last at the end).
  float* pass = (mask || dh_last) ? scratch + L.pass : nullptr;
  const bool lstm = s.cell == Cell::LSTM;

  StreamBuffer<float> dh_buf(size_t(B * H), st, "cudaMallocAsync (rnn_backward buffer)");
  float* dh = dh_buf.get();   // dh_t = dr_{t+1} U^T of one step
  StreamBuffer<float> held_buf(mask ? size_t(2 * B * H) : 0, st, "cudaMallocAsync (rnn_backward mask buffer)");
  float* held = held_buf.get();
  copy_or_zero(carry, lstm ? dc_last : nullptr, B * H, st, "rnn_backward: carry");
  if (pass) copy_or_zero(pass, dh_last, B * H, st, "rnn_backward: pass");
  const unsigned grid = grid_for(B * H, kBlock);
  for (index_t t = T - 1; t >= 0; --t) {
    const bool have_dh = t < T - 1;
    if (have_dh) gemm(false, true, B, H, GH, 1.f, dr + (t + 1) * B * GH, GH, U, GH, 0.f, dh, H, nullptr, stream);
    const float* dhp = have_dh ? dh : pass;
    const float* dyr = nullptr;
    index_t ldy = H;
    if (s.return_sequences) { dyr = dy + t * H; ldy = T * H; }   // row r at dy[(r*T + t)*H]
    else if (t == T - 1) dyr = dy;
    const index_t row = t * B;   // first row of step t in the time-major blocks
    if (pass && (mask || have_dh)) {
      mask_hold_kernel<<<grid, kBlock, 0, st>>>(B, T, H, t, s.go_backwards, s.zero_output_for_mask,
                                                mask, have_dh ? dh : nullptr, pass, dyr, ldy, carry, gru, lstm,
                                                held, held ? held + B * H : nullptr);
      KILNET_CHECK_LAUNCH("mask_hold_kernel");
    }
    if (s.cell == Cell::SimpleRNN) {
      rnn_bwd_step_kernel<<<grid, kBlock, 0, st>>>(B, H, s.act, dhp, dyr, ldy, hs + (row + B) * H, dz + row * GH);
      KILNET_CHECK_LAUNCH("rnn_bwd_step_kernel");
    } else if (s.cell == Cell::LSTM) {
      lstm_bwd_step_kernel<<<grid, kBlock, 0, st>>>(B, H, s.act, s.rec_act, dhp, dyr, ldy, ws + L.gates + row * GH,
                                                    ws + L.cs + row * H, ws + L.tcs + row * H, carry, dz + row * GH);
      KILNET_CHECK_LAUNCH("lstm_bwd_step_kernel");
    } else {
      gru_bwd_step_kernel<<<grid, kBlock, 0, st>>>(B, H, s.act, s.rec_act, dhp, dyr, ldy, ws + L.gates + row * GH,
                                                   ws + L.huh + row * H, hs + row * H, carry, dz + row * GH,
                                                   dr + row * GH);
      KILNET_CHECK_LAUNCH("gru_bwd_step_kernel");
    }
    if (pass) {
      mask_fix_kernel<<<grid, kBlock, 0, st>>>(B, T, H, GH / H, t, s.go_backwards, mask, pass,
                                               held, held ? held + B * H : nullptr, dz + row * GH,
                                               gru ? dr + row * GH : nullptr, carry, gru, lstm);
      KILNET_CHECK_LAUNCH("mask_fix_kernel");
    }
  }
  if (dh0) {   // dh_{-1} = dr_0 U^T (+ dh_0 z_0 for the GRU, the carry) (+ what passed step 0)
    if (gru)
      check(cudaMemcpyAsync(dh0, carry, size_t(B * H) * sizeof(float), cudaMemcpyDeviceToDevice, st), "rnn_backward: dh0");
    gemm(false, true, B, H, GH, 1.f, dr, GH, U, GH, gru ? 1.f : 0.f, dh0, H, nullptr, stream);
    if (pass) {
      add_kernel<<<grid, kBlock, 0, st>>>(B * H, pass, dh0);
      KILNET_CHECK_LAUNCH("add_kernel");
    }
  }
  if (dc0 && s.cell == Cell::LSTM)
    check(cudaMemcpyAsync(dc0, carry, size_t(B * H) * sizeof(float), cudaMemcpyDeviceToDevice, st), "rnn_backward: dc0");
  // Step 0's h_{-1} may be zero (no h0); it then adds exact zeros, so all T steps go in one GEMM.
  if (dU) gemm(true, false, H, GH, TB, 1.f, hs, H, dr, GH, 1.f, dU, GH, nullptr, stream);
  if (dW) gemm(true, false, I, GH, TB, 1.f, xs, I, dz, GH, 1.f, dW, GH, nullptr, stream);
  if (db) {
    bias_backward(TB, GH, dz, db, stream);
    if (gru) bias_backward(TB, GH, dr, db + GH, stream);
  }
  if (dx) {
    float* dxs = scratch + L.dxs;
    gemm(false, true, TB, I, GH, 1.f, dz, GH, W, GH, 0.f, dxs, I, nullptr, stream);
    from_time_major_kernel<<<grid_for(TB * I, kBlock), kBlock, 0, st>>>(B, T, I, s.go_backwards, dxs, dx);
    KILNET_CHECK_LAUNCH("from_time_major_kernel");
  }
}

}  // namespace kilnet::cuda
