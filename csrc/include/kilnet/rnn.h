// rnn.h — recurrent layers over whole sequences: SimpleRNN, LSTM and GRU, forward and
// backpropagation through time (BPTT).
//   B batch, T time steps, I input features, H units, G gates per cell (SimpleRNN 1, LSTM 4,
//   GRU 3), GH = G*H.
//   x  (B, T, I)   batch-major, as Keras feeds it
//   y  (B, T, H)   every step's h_t when return_sequences, else (B, H): the last h
//   W  (I, GH)     Keras "kernel";  U (H, GH) "recurrent_kernel"
//   b  (GH)        Keras "bias"; GRU: (2, GH) = [input bias; recurrent bias]; nullptr = no bias
//   h0, c0 (B, H)  initial states (c0: LSTM only); nullptr = zeros
// Gate blocks along GH in Keras's order: LSTM i, f, c, o; GRU z, r, h (reset_after=True).
// The cells, with a = activation and s = recurrent_activation:
//   SimpleRNN  h_t = a(x_t W + h_{t-1} U + b)
//   LSTM       [i f g o] = [s a s s](x_t W + h_{t-1} U + b);  c_t = f c_{t-1} + i g;  h_t = o a(c_t)
//   GRU        xw = x_t W + b_in,  hu = h_{t-1} U + b_rec;  z = s(xw_z + hu_z),  r = s(xw_r + hu_r),
//              hh = a(xw_h + r hu_h);  h_t = z h_{t-1} + (1 - z) hh
// go_backwards: step t reads x[:, T-1-t]; y stays in processing order (as Keras returns it).
// Activations: Linear, Relu, Sigmoid, Tanh (derivatives are taken from the outputs).
//
// Masking (Keras 3's semantics, keras/src/backend/jax/rnn.py): mask (B, T) float32 in x's time
// order, 0 = skip. At a skipped step the states are carried (h_t = h_{t-1}, c_t = c_{t-1}) and
// the output is h_{t-1}, or 0 with s.zero_output_for_mask; without return_sequences y is the
// output of the last processed step (so the last kept h, or 0 when zero_output_for_mask and that
// step is masked). Backward: a skipped step passes the gradient of h_t (and c_t) straight to
// h_{t-1} (c_{t-1}) and contributes nothing to the weight or input gradients.
// h_last, c_last (B, H): the final states (what Keras's return_state returns); dh_last, dc_last:
// their gradients, added in backward. All of these may be nullptr.
//
// Forward keeps what backward needs in a workspace `ws` of rnn_workspace_floats(s) floats, laid
// out time-major so that step t's rows are contiguous and the weight gradients of all steps are
// single GEMMs (each block starts on a 16-float boundary):
//   xs    (T, B, I)     the input, time-major (time-reversed for go_backwards)
//   hs    (T+1, B, H)   hs[0] = h0, hs[t+1] = h_t
//   LSTM: gates (T, B, 4H) activated i f g o;   cs (T+1, B, H), cs[0] = c0;  tcs (T, B, H) = a(c_t)
//   GRU:  gates (T, B, 3H) activated z r hh;    hu_h (T, B, H) = h_{t-1} U_h + b_rec_h
// Backward uses `scratch` of rnn_scratch_floats(s) floats:
//   dz (T, B, GH) gradient wrt x_t W + b (GRU: also dhu (T, B, GH), wrt h_{t-1} U + b_rec),
//   dxs (T, B, I), carry (B, H) (LSTM: dc; GRU: dh z), pass (B, H) (the gradient wrt h that
//   crossed masked steps, and dh_last).
// Weight gradients: dW += xs^T dz and dU += hs[0:T]^T dz (GRU: dhu) are one GEMM each over all
// T*B rows, db += their column sums, dx = dz W^T one GEMM too. The per-step work is the recurrence:
// forward h_{t-1} U fused with the gate math, backward dz_{t+1} U^T fused with the gate
// derivatives, parallel over batch rows (rows are independent through time: no barriers).
#pragma once
#include "kilnet/common.h"

namespace kilnet {

enum class Cell : int { SimpleRNN = 0, LSTM = 1, GRU = 2 };

struct RnnShape {
  index_t B = 0, T = 0, I = 0, H = 0;
  Cell cell = Cell::SimpleRNN;
  Act act = Act::Tanh;            // activation
  Act rec_act = Act::Sigmoid;     // recurrent_activation (LSTM, GRU)
  bool return_sequences = false;  // y is (B, T, H) instead of (B, H)
  bool go_backwards = false;
  bool zero_output_for_mask = false;  // masked steps output 0 instead of h_{t-1}
};

index_t rnn_gates(Cell cell);                      // G: 1, 4, 3
index_t rnn_workspace_floats(const RnnShape& s);   // size of ws
index_t rnn_scratch_floats(const RnnShape& s);     // size of scratch

}  // namespace kilnet

namespace kilnet::cpu {

// y (B,T,H) or (B,H) and ws are written. h0, c0, b, mask, h_last, c_last may be nullptr.
void rnn_forward(const RnnShape& s, const float* x, const float* W, const float* U, const float* b,
                 const float* h0, const float* c0, float* y, float* ws, const float* mask = nullptr,
                 float* h_last = nullptr, float* c_last = nullptr);
void rnn_forward_ref(const RnnShape& s, const float* x, const float* W, const float* U,
                     const float* b, const float* h0, const float* c0, float* y, float* ws,
                     const float* mask = nullptr, float* h_last = nullptr, float* c_last = nullptr);

// dy has y's shape; ws is what rnn_forward wrote; scratch is overwritten.
// dx (B,T,I), dh0 (B,H), dc0 (B,H; LSTM only, ignored otherwise) are overwritten; dW (I,GH), dU (H,GH), db (GH or 2*GH)
// accumulate (+=). Any of them may be nullptr to skip it (db must be nullptr when b was).
// mask: the forward's; dh_last, dc_last: gradients wrt the final states (nullptr = zero).
void rnn_backward(const RnnShape& s, const float* dy, const float* W, const float* U,
                  const float* ws, float* scratch, float* dx, float* dW, float* dU, float* db,
                  float* dh0, float* dc0, const float* mask = nullptr, const float* dh_last = nullptr,
                  const float* dc_last = nullptr);
void rnn_backward_ref(const RnnShape& s, const float* dy, const float* W, const float* U,
                      const float* ws, float* scratch, float* dx, float* dW, float* dU, float* db,
                      float* dh0, float* dc0, const float* mask = nullptr, const float* dh_last = nullptr,
                      const float* dc_last = nullptr);

}  // namespace kilnet::cpu

namespace kilnet::cuda {

// The same operations on device pointers (ws, scratch in the same layout), run on `stream`.
// The matrix products are kilnet::cuda::gemm calls: one for the input projection of all steps,
// one per step for h_{t-1} U (forward) and dz_{t+1} U^T (backward), one each for dU, dW, dx;
// the gate math is one elementwise kernel per step (kilnet/detail/elementwise.h).
// GRU forward and all backward passes take a small (B x 3H / B x H) scratch from cudaMallocAsync.
void rnn_forward(const RnnShape& s, const float* x, const float* W, const float* U, const float* b,
                 const float* h0, const float* c0, float* y, float* ws, void* stream,
                 const float* mask = nullptr, float* h_last = nullptr, float* c_last = nullptr);
void rnn_backward(const RnnShape& s, const float* dy, const float* W, const float* U,
                  const float* ws, float* scratch, float* dx, float* dW, float* dU, float* db,
                  float* dh0, float* dc0, void* stream, const float* mask = nullptr,
                  const float* dh_last = nullptr, const float* dc_last = nullptr);

}  // namespace kilnet::cuda
