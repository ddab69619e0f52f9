// rnn.cu — SimpleRNN, LSTM and GRU over whole sequences on the GPU, forward and BPTT (see
// kilnet/rnn.h; ws and scratch have the CPU's layout, kilnet/detail/rnn_layout.h).
//
//   forward   xs = x time-major; [hs[1:] | gates] = xs W + b        one GEMM for all T steps
//             per step t: pre-activations += h_{t-1} U               GEMM (beta = 1)
//                         gate math                                  one elementwise kernel
//             (GRU: hu = h_{t-1} U + b_rec into a B x 3H buffer, read by the gate kernel)
//   backward  per step t from the last: dh = dr_{t+1} U^T            GEMM
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

// y (B, T, H) = every h_t, or y (B, H) = the last one; hs[t+1] = h_t.
__global__ void copy_outputs_kernel(index_t B, index_t T, index_t H, bool seq,
                                    const float* __restrict__ hs, float* __restrict__ y) {
  if (seq) {
    KILNET_GRID_STRIDE(i, B * T * H) {
      const index_t j = i % H, r = i / H, t = r % T, n = r / T;
      y[i] = hs[((t + 1) * B + n) * H + j];
    }
  } else {
    KILNET_GRID_STRIDE(i, B * H) y[i] = hs[T * B * H + i];
  }
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
                 const float* h0, const float* c0, float* y, float* ws, void* stream) {
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
  }
  const index_t ny = s.return_sequences ? B * T * H : B * H;
  copy_outputs_kernel<<<grid_for(ny, kBlock), kBlock, 0, st>>>(B, T, H, s.return_sequences, hs, y);
  KILNET_CHECK_LAUNCH("copy_outputs_kernel");
}

void rnn_backward(const RnnShape& s, const float* dy, const float* W, const float* U,
                  const float* ws, float* scratch, float* dx, float* dW, float* dU, float* db,
                  float* dh0, float* dc0, void* stream) {
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

  StreamBuffer<float> dh_buf(size_t(B * H), st, "cudaMallocAsync (rnn_backward buffer)");
  float* dh = dh_buf.get();   // dh_t = dr_{t+1} U^T of one step
  check(cudaMemsetAsync(carry, 0, size_t(B * H) * sizeof(float), st), "rnn_backward: carry");
  const unsigned grid = grid_for(B * H, kBlock);
  for (index_t t = T - 1; t >= 0; --t) {
    const bool have_dh = t < T - 1;
    if (have_dh) gemm(false, true, B, H, GH, 1.f, dr + (t + 1) * B * GH, GH, U, GH, 0.f, dh, H, nullptr, stream);
    const float* dhp = have_dh ? dh : nullptr;
    const float* dyr = nullptr;
    index_t ldy = H;
    if (s.return_sequences) { dyr = dy + t * H; ldy = T * H; }   // row r at dy[(r*T + t)*H]
    else if (t == T - 1) dyr = dy;
    const index_t row = t * B;   // first row of step t in the time-major blocks
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
  }
  if (dh0) {   // dh_{-1} = dr_0 U^T (+ dh_0 z_0 for the GRU, the carry)
    if (gru)
      check(cudaMemcpyAsync(dh0, carry, size_t(B * H) * sizeof(float), cudaMemcpyDeviceToDevice, st), "rnn_backward: dh0");
    gemm(false, true, B, H, GH, 1.f, dr, GH, U, GH, gru ? 1.f : 0.f, dh0, H, nullptr, stream);
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
