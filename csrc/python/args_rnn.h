// args_rnn.h — the argument checks of rnn_forward / rnn_backward / rnn_workspace_size, shared by
// kilnet._cpu (bind_rnn.cpp) and kilnet._cuda (cuda_bind_rnn.cpp). Shapes (kilnet/rnn.h):
// x (B, T, I), W (I, G*H), U (H, G*H), b (G*H) or GRU (2, G*H), y (B, T, H) when it is 3-D
// (return_sequences) else (B, H). Workspace sizes come from kilnet/detail/rnn_layout.h, which
// both devices share.
#pragma once
#include <string>
#include <utility>
#include <vector>
#include "checks.h"
#include "kilnet/detail/rnn_layout.h"
#include "kilnet/rnn.h"

namespace kilnet::bind {

inline Cell parse_cell(const std::string& name) {
  if (name == "simple_rnn") return Cell::SimpleRNN;
  if (name == "lstm") return Cell::LSTM;
  if (name == "gru") return Cell::GRU;
  fail_value("unknown recurrent cell '" + name + "'; valid: simple_rnn, lstm, gru");
}

inline Act parse_act(const char* fn, const char* what, const std::string& name) {
  if (name == "linear") return Act::Linear;
  if (name == "relu") return Act::Relu;
  if (name == "sigmoid") return Act::Sigmoid;
  if (name == "tanh") return Act::Tanh;
  fail_value(std::string(fn) + ": unknown " + what + " '" + name + "'; valid: linear, relu, sigmoid, tanh");
}

inline std::string num(index_t v) { return std::to_string(v); }

// Shape facts shared by forward and backward: B, T, I from x; H from u; the weights' shapes.
inline RnnShape rnn_shape(const char* fn, Cell cell, const Arr& x, const Arr& w, const Arr& u,
                   const std::string& act, const std::string& rec_act, bool go_backwards) {
  RnnShape s;
  s.cell = cell;
  s.act = parse_act(fn, "activation", act);
  s.rec_act = parse_act(fn, "recurrent_activation", rec_act);
  s.go_backwards = go_backwards;
  s.B = x.dim(0); s.T = x.dim(1); s.I = x.dim(2);
  if (s.B < 1) fail_value(std::string(fn) + ": the batch is empty (x has shape " + shape_str(x.shape) + ")");
  if (s.T < 1)
    fail_value(std::string(fn) + ": the sequence length must be >= 1, got 0 (x has shape " + shape_str(x.shape) + ")");
  if (s.I < 1) fail_value(std::string(fn) + ": x has no features (shape " + shape_str(x.shape) + ")");
  s.H = u.dim(0);
  const index_t G = detail::rnn_gate_count(cell), GH = G * s.H;
  if (s.H < 1 || u.dim(1) != GH)
    fail_value(std::string(fn) + ": argument 'u' must have shape (units, " + num(G) + " * units), got " +
               shape_str(u.shape));
  expect_shape(fn, "w", w, {s.I, GH});
  return s;
}

inline std::vector<index_t> bias_shape(const RnnShape& s) {
  const index_t GH = detail::rnn_gate_count(s.cell) * s.H;
  return s.cell == Cell::GRU ? std::vector<index_t>{2, GH} : std::vector<index_t>{GH};
}

// An optional float32 argument of a fixed shape; returns its pointer or nullptr for None.
inline float* optional_arg(const Arrays& A, const char* fn, const char* name, const py::object& o, Arr& a,
                           const std::vector<index_t>& shape, bool out) {
  if (o.is_none()) return nullptr;
  a = out ? A.out_f32(fn, name, o, int(shape.size())) : A.in_f32(fn, name, o, int(shape.size()));
  expect_shape(fn, name, a, shape);
  return a.f();
}

inline void expect_floats(const char* fn, const char* name, const Arr& a, index_t need) {
  if (a.size < need)
    fail_value(std::string(fn) + ": argument '" + name + "' must hold at least " + num(need) +
               " float32 values (see rnn_workspace_size), got " + num(a.size));
}

// No output may overlap an input or another output.
inline void check_aliasing(const char* fn, const std::vector<Named>& outs, const std::vector<Named>& ins) {
  for (size_t i = 0; i < outs.size(); ++i) {
    if (!outs[i].second->data) continue;
    for (const auto& in : ins)
      if (in.second->data) no_alias(fn, outs[i].first, *outs[i].second, in.first, *in.second);
    for (size_t j = i + 1; j < outs.size(); ++j)
      if (outs[j].second->data) no_alias(fn, outs[i].first, *outs[i].second, outs[j].first, *outs[j].second);
  }
}

// rnn_workspace_size: (forward workspace, backward scratch) in float32 values.
inline std::pair<index_t, index_t> rnn_workspace_sizes(const std::string& cell, index_t batch, index_t steps,
                                                       index_t features, index_t units) {
  if (batch < 1 || steps < 1 || features < 1 || units < 1)
    fail_value("rnn_workspace_size: batch, steps, features and units must be >= 1");
  // Every block of the layout is at most (steps + 1) * batch * (features + 4 * units) floats,
  // rounded up to 16, and there are fewer than 8: refuse sizes whose sum would overflow int64.
  const index_t cap = (index_t(1) << 31) - 1;
  const index_t per = features <= cap && units <= cap ? features + 4 * units + 16 : -1;
  index_t total = 1;
  for (index_t v : {steps <= cap ? steps + 1 : -1, batch, per, index_t(8 * 16)})
    if (v < 0 || __builtin_mul_overflow(total, v, &total)) { total = -1; break; }
  if (total < 0 || total > (index_t(1) << 60))
    fail_value("rnn_workspace_size: batch " + std::to_string(batch) + " x steps " + std::to_string(steps) +
               " x (features " + std::to_string(features) + " + units " + std::to_string(units) +
               ") overflows the workspace size");
  RnnShape s;
  s.cell = parse_cell(cell);
  s.B = batch; s.T = steps; s.I = features; s.H = units;
  const detail::RnnLayout l = detail::rnn_layout(s);
  return {l.ws_total, l.scratch_total};
}

struct RnnForwardArgs {
  RnnShape s;
  Arr x, w, u, y, ws, b, h0, c0, mask, h_last, c_last;
  const float* bp = nullptr;    // the optional inputs, nullptr for None
  const float* h0p = nullptr;
  const float* c0p = nullptr;
  const float* maskp = nullptr;
  float* h_lastp = nullptr;     // the optional outputs
  float* c_lastp = nullptr;
};

// The optional mask: float32 (B, T), 0 = skip the step.
inline const float* mask_arg(const Arrays& A, const char* fn, const py::object& o, Arr& a, const RnnShape& s) {
  if (o.is_none()) return nullptr;
  a = A.in_f32(fn, "mask", o, -1);
  if (a.shape != std::vector<index_t>{s.B, s.T})
    fail_value(std::string(fn) + ": argument 'mask' must have shape (batch, timesteps) = " +
               shape_str({s.B, s.T}) + ", got " + shape_str(a.shape));
  return a.f();
}

inline void lstm_only(const char* fn, const char* what, const py::object& o, Cell cell, const std::string& name) {
  if (!o.is_none() && cell != Cell::LSTM)
    fail_value(std::string(fn) + ": " + what + " is an LSTM state; pass None for " + name);
}

inline RnnForwardArgs rnn_forward_args(const Arrays& A, const std::string& cell_name, const py::object& x_,
                                       const py::object& w_, const py::object& u_, const py::object& b_,
                                       const py::object& y_, const py::object& ws_, const py::object& h0_,
                                       const py::object& c0_, const std::string& activation,
                                       const std::string& recurrent_activation, bool go_backwards,
                                       const py::object& mask_ = py::none(), bool zero_output_for_mask = false,
                                       const py::object& h_last_ = py::none(),
                                       const py::object& c_last_ = py::none()) {
  const char* fn = "rnn_forward";
  const Cell cell = parse_cell(cell_name);
  RnnForwardArgs a;
  a.x = A.in_f32(fn, "x", x_, 3); a.w = A.in_f32(fn, "w", w_, 2); a.u = A.in_f32(fn, "u", u_, 2);
  a.s = rnn_shape(fn, cell, a.x, a.w, a.u, activation, recurrent_activation, go_backwards);
  RnnShape& s = a.s;
  a.y = A.out_f32(fn, "y", y_, -1); a.ws = A.out_f32(fn, "ws", ws_, 1);
  s.return_sequences = a.y.ndim() == 3;
  expect_shape(fn, "y", a.y, s.return_sequences ? std::vector<index_t>{s.B, s.T, s.H} : std::vector<index_t>{s.B, s.H});
  expect_floats(fn, "ws", a.ws, detail::rnn_layout(s).ws_total);
  a.bp = optional_arg(A, fn, "b", b_, a.b, bias_shape(s), false);
  a.h0p = optional_arg(A, fn, "h0", h0_, a.h0, {s.B, s.H}, false);
  if (!c0_.is_none() && cell != Cell::LSTM) fail_value(std::string(fn) + ": c0 is an LSTM state; pass None for " + cell_name);
  a.c0p = optional_arg(A, fn, "c0", c0_, a.c0, {s.B, s.H}, false);
  s.zero_output_for_mask = zero_output_for_mask;
  a.maskp = mask_arg(A, fn, mask_, a.mask, s);
  a.h_lastp = optional_arg(A, fn, "h_last", h_last_, a.h_last, {s.B, s.H}, true);
  lstm_only(fn, "c_last", c_last_, cell, cell_name);
  a.c_lastp = optional_arg(A, fn, "c_last", c_last_, a.c_last, {s.B, s.H}, true);
  check_aliasing(fn, {{"y", &a.y}, {"ws", &a.ws}, {"h_last", &a.h_last}, {"c_last", &a.c_last}},
                 {{"x", &a.x}, {"w", &a.w}, {"u", &a.u}, {"b", &a.b}, {"h0", &a.h0}, {"c0", &a.c0},
                  {"mask", &a.mask}});
  return a;
}

struct RnnBackwardArgs {
  RnnShape s;
  Arr dy, x, w, u, ws, scratch, dx, dw, du, db, dh0, dc0, mask, dh_last, dc_last;
  const float* maskp = nullptr;
  const float* dh_lastp = nullptr;
  const float* dc_lastp = nullptr;
  float* dxp = nullptr;         // the optional outputs, nullptr for None
  float* dwp = nullptr;
  float* dup = nullptr;
  float* dbp = nullptr;
  float* dh0p = nullptr;
  float* dc0p = nullptr;
};

inline RnnBackwardArgs rnn_backward_args(const Arrays& A, const std::string& cell_name, const py::object& dy_,
                                         const py::object& x_, const py::object& w_, const py::object& u_,
                                         const py::object& ws_, const py::object& scratch_, const py::object& dx_,
                                         const py::object& dw_, const py::object& du_, const py::object& db_,
                                         const py::object& dh0_, const py::object& dc0_,
                                         const std::string& activation, const std::string& recurrent_activation,
                                         bool go_backwards, const py::object& mask_ = py::none(),
                                         bool zero_output_for_mask = false,
                                         const py::object& dh_last_ = py::none(),
                                         const py::object& dc_last_ = py::none()) {
  const char* fn = "rnn_backward";
  const Cell cell = parse_cell(cell_name);
  RnnBackwardArgs a;
  a.x = A.in_f32(fn, "x", x_, 3); a.w = A.in_f32(fn, "w", w_, 2); a.u = A.in_f32(fn, "u", u_, 2);
  a.s = rnn_shape(fn, cell, a.x, a.w, a.u, activation, recurrent_activation, go_backwards);
  RnnShape& s = a.s;
  a.dy = A.in_f32(fn, "dy", dy_, -1); a.ws = A.in_f32(fn, "ws", ws_, 1);
  a.scratch = A.out_f32(fn, "scratch", scratch_, 1);
  s.return_sequences = a.dy.ndim() == 3;
  expect_shape(fn, "dy", a.dy, s.return_sequences ? std::vector<index_t>{s.B, s.T, s.H} : std::vector<index_t>{s.B, s.H});
  const detail::RnnLayout layout = detail::rnn_layout(s);
  expect_floats(fn, "ws", a.ws, layout.ws_total);
  expect_floats(fn, "scratch", a.scratch, layout.scratch_total);
  const index_t GH = detail::rnn_gate_count(cell) * s.H;
  a.dxp = optional_arg(A, fn, "dx", dx_, a.dx, {s.B, s.T, s.I}, true);
  a.dwp = optional_arg(A, fn, "dw", dw_, a.dw, {s.I, GH}, true);
  a.dup = optional_arg(A, fn, "du", du_, a.du, {s.H, GH}, true);
  a.dbp = optional_arg(A, fn, "db", db_, a.db, bias_shape(s), true);
  a.dh0p = optional_arg(A, fn, "dh0", dh0_, a.dh0, {s.B, s.H}, true);
  if (!dc0_.is_none() && cell != Cell::LSTM) fail_value(std::string(fn) + ": dc0 is an LSTM state; pass None for " + cell_name);
  a.dc0p = optional_arg(A, fn, "dc0", dc0_, a.dc0, {s.B, s.H}, true);
  s.zero_output_for_mask = zero_output_for_mask;
  a.maskp = mask_arg(A, fn, mask_, a.mask, s);
  a.dh_lastp = optional_arg(A, fn, "dh_last", dh_last_, a.dh_last, {s.B, s.H}, false);
  lstm_only(fn, "dc_last", dc_last_, cell, cell_name);
  a.dc_lastp = optional_arg(A, fn, "dc_last", dc_last_, a.dc_last, {s.B, s.H}, false);
  check_aliasing(fn, {{"scratch", &a.scratch}, {"dx", &a.dx}, {"dw", &a.dw}, {"du", &a.du}, {"db", &a.db},
                      {"dh0", &a.dh0}, {"dc0", &a.dc0}},
                 {{"dy", &a.dy}, {"x", &a.x}, {"w", &a.w}, {"u", &a.u}, {"ws", &a.ws}, {"mask", &a.mask},
                  {"dh_last", &a.dh_last}, {"dc_last", &a.dc_last}});
  return a;
}

}  // namespace kilnet::bind
