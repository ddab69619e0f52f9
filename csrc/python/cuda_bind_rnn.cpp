// cuda_bind_rnn.cpp — kilnet._cuda bindings of the recurrent kernels (SimpleRNN, LSTM, GRU): the
// same names, arguments and checks as bind_rnn.cpp, on CuPy arrays, plus `stream` on the kernels
// (rnn_workspace_size is pure arithmetic and takes none). The sizes come from
// kilnet/detail/rnn_layout.h, shared with the CPU, since _cuda does not link the CPU library. Shapes (kilnet/rnn.h): x (B, T, I), W (I, G*H), U (H, G*H),
// b (G*H) or GRU (2, G*H), y (B, T, H) when it is 3-D (return_sequences) else (B, H).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include <utility>
#include <vector>
#include "cuda_checks.h"
#include "kilnet/detail/rnn_layout.h"
#include "kilnet/rnn.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

namespace {

Cell parse_cell(const std::string& name) {
  if (name == "simple_rnn") return Cell::SimpleRNN;
  if (name == "lstm") return Cell::LSTM;
  if (name == "gru") return Cell::GRU;
  fail_value("unknown recurrent cell '" + name + "'; valid: simple_rnn, lstm, gru");
}

Act parse_act(const char* fn, const char* what, const std::string& name) {
  if (name == "linear") return Act::Linear;
  if (name == "relu") return Act::Relu;
  if (name == "sigmoid") return Act::Sigmoid;
  if (name == "tanh") return Act::Tanh;
  fail_value(std::string(fn) + ": unknown " + what + " '" + name + "'; valid: linear, relu, sigmoid, tanh");
}

std::string str(index_t v) { return std::to_string(v); }

// Shape facts shared by forward and backward: B, T, I from x; H from u; the weights' shapes.
RnnShape rnn_shape(const char* fn, Cell cell, const Arr& x, const Arr& w, const Arr& u,
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
    fail_value(std::string(fn) + ": argument 'u' must have shape (units, " + str(G) + " * units), got " +
               shape_str(u.shape));
  expect_shape(fn, "w", w, {s.I, GH});
  return s;
}

std::vector<index_t> bias_shape(const RnnShape& s) {
  const index_t GH = detail::rnn_gate_count(s.cell) * s.H;
  return s.cell == Cell::GRU ? std::vector<index_t>{2, GH} : std::vector<index_t>{GH};
}

// An optional float32 argument of a fixed shape; returns its pointer or nullptr for None.
float* optional_arg(const char* fn, const char* name, const py::object& o, Arr& a,
                    const std::vector<index_t>& shape, bool out) {
  if (o.is_none()) return nullptr;
  a = out ? dout_f32(fn, name, o, int(shape.size())) : din_f32(fn, name, o, int(shape.size()));
  expect_shape(fn, name, a, shape);
  return a.f();
}

void expect_floats(const char* fn, const char* name, const Arr& a, index_t need) {
  if (a.size < need)
    fail_value(std::string(fn) + ": argument '" + name + "' must hold at least " + str(need) +
               " float32 values (see rnn_workspace_size), got " + str(a.size));
}

using Named = std::pair<const char*, const Arr*>;

// No output may overlap an input or another output.
void check_aliasing(const char* fn, const std::vector<Named>& outs, const std::vector<Named>& ins) {
  for (size_t i = 0; i < outs.size(); ++i) {
    if (!outs[i].second->data) continue;
    for (const auto& in : ins)
      if (in.second->data) no_alias(fn, outs[i].first, *outs[i].second, in.first, *in.second);
    for (size_t j = i + 1; j < outs.size(); ++j)
      if (outs[j].second->data) no_alias(fn, outs[i].first, *outs[i].second, outs[j].first, *outs[j].second);
  }
}

}  // namespace

static void cuda_bind_rnn(py::module_& m) {
  const auto fwd = &cuda::rnn_forward;
  const auto bwd = &cuda::rnn_backward;

  m.def("rnn_workspace_size", [](const std::string& cell, index_t batch, index_t steps, index_t features,
                                 index_t units) {
    if (batch < 1 || steps < 1 || features < 1 || units < 1)
      fail_value("rnn_workspace_size: batch, steps, features and units must be >= 1");
    RnnShape s;
    s.cell = parse_cell(cell);
    s.B = batch; s.T = steps; s.I = features; s.H = units;
    return std::make_pair(detail::rnn_layout(s).ws_total, detail::rnn_layout(s).scratch_total);
  }, arg("cell"), arg("batch"), arg("steps"), arg("features"), arg("units"),
     "(forward workspace, backward scratch) sizes in float32 values");

  m.def("rnn_forward", [=](const std::string& cell_name, py::object x_, py::object w_, py::object u_,
                           py::object b_, py::object y_, py::object ws_, py::object h0_, py::object c0_,
                           const std::string& activation, const std::string& recurrent_activation,
                           bool go_backwards, py::object stream) {
    const char* fn = "rnn_forward";
    const Cell cell = parse_cell(cell_name);
    Arr x = din_f32(fn, "x", x_, 3), w = din_f32(fn, "w", w_, 2), u = din_f32(fn, "u", u_, 2);
    RnnShape s = rnn_shape(fn, cell, x, w, u, activation, recurrent_activation, go_backwards);
    Arr y = dout_f32(fn, "y", y_), ws = dout_f32(fn, "ws", ws_, 1), b, h0, c0;
    s.return_sequences = y.ndim() == 3;
    expect_shape(fn, "y", y, s.return_sequences ? std::vector<index_t>{s.B, s.T, s.H} : std::vector<index_t>{s.B, s.H});
    expect_floats(fn, "ws", ws, detail::rnn_layout(s).ws_total);
    const float* bp = optional_arg(fn, "b", b_, b, bias_shape(s), false);
    const float* h0p = optional_arg(fn, "h0", h0_, h0, {s.B, s.H}, false);
    if (!c0_.is_none() && cell != Cell::LSTM) fail_value(std::string(fn) + ": c0 is an LSTM state; pass None for " + cell_name);
    const float* c0p = optional_arg(fn, "c0", c0_, c0, {s.B, s.H}, false);
    check_aliasing(fn, {{"y", &y}, {"ws", &ws}},
                   {{"x", &x}, {"w", &w}, {"u", &u}, {"b", &b}, {"h0", &h0}, {"c0", &c0}});
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    fwd(s, x.f(), w.f(), u.f(), bp, h0p, c0p, y.f(), ws.f(), st);
  }, arg("cell"), arg("x"), arg("w"), arg("u"), arg("b"), arg("y"), arg("ws"), arg("h0") = py::none(),
     arg("c0") = py::none(), arg("activation") = "tanh", arg("recurrent_activation") = "sigmoid",
     arg("go_backwards") = false, arg("stream") = py::none(),
     "Run the cell over x (B, T, I): y = every h_t (B, T, H) or the last (B, H), by y's rank. ws keeps "
     "what rnn_backward needs (size from rnn_workspace_size). b, h0, c0 may be None.");

  m.def("rnn_backward", [=](const std::string& cell_name, py::object dy_, py::object x_, py::object w_,
                            py::object u_, py::object ws_, py::object scratch_, py::object dx_,
                            py::object dw_, py::object du_, py::object db_, py::object dh0_,
                            py::object dc0_, const std::string& activation,
                            const std::string& recurrent_activation, bool go_backwards, py::object stream) {
    const char* fn = "rnn_backward";
    const Cell cell = parse_cell(cell_name);
    Arr x = din_f32(fn, "x", x_, 3), w = din_f32(fn, "w", w_, 2), u = din_f32(fn, "u", u_, 2);
    RnnShape s = rnn_shape(fn, cell, x, w, u, activation, recurrent_activation, go_backwards);
    Arr dy = din_f32(fn, "dy", dy_), ws = din_f32(fn, "ws", ws_, 1), scratch = dout_f32(fn, "scratch", scratch_, 1);
    s.return_sequences = dy.ndim() == 3;
    expect_shape(fn, "dy", dy, s.return_sequences ? std::vector<index_t>{s.B, s.T, s.H} : std::vector<index_t>{s.B, s.H});
    expect_floats(fn, "ws", ws, detail::rnn_layout(s).ws_total);
    expect_floats(fn, "scratch", scratch, detail::rnn_layout(s).scratch_total);
    const index_t GH = detail::rnn_gate_count(cell) * s.H;
    Arr dx, dw, du, db, dh0, dc0;
    float* dxp = optional_arg(fn, "dx", dx_, dx, {s.B, s.T, s.I}, true);
    float* dwp = optional_arg(fn, "dw", dw_, dw, {s.I, GH}, true);
    float* dup = optional_arg(fn, "du", du_, du, {s.H, GH}, true);
    float* dbp = optional_arg(fn, "db", db_, db, bias_shape(s), true);
    float* dh0p = optional_arg(fn, "dh0", dh0_, dh0, {s.B, s.H}, true);
    if (!dc0_.is_none() && cell != Cell::LSTM) fail_value(std::string(fn) + ": dc0 is an LSTM state; pass None for " + cell_name);
    float* dc0p = optional_arg(fn, "dc0", dc0_, dc0, {s.B, s.H}, true);
    check_aliasing(fn, {{"scratch", &scratch}, {"dx", &dx}, {"dw", &dw}, {"du", &du}, {"db", &db},
                        {"dh0", &dh0}, {"dc0", &dc0}},
                   {{"dy", &dy}, {"x", &x}, {"w", &w}, {"u", &u}, {"ws", &ws}});
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    bwd(s, dy.f(), w.f(), u.f(), ws.f(), scratch.f(), dxp, dwp, dup, dbp, dh0p, dc0p, st);
  }, arg("cell"), arg("dy"), arg("x"), arg("w"), arg("u"), arg("ws"), arg("scratch"), arg("dx"),
     arg("dw"), arg("du"), arg("db"), arg("dh0") = py::none(), arg("dc0") = py::none(),
     arg("activation") = "tanh", arg("recurrent_activation") = "sigmoid", arg("go_backwards") = false, arg("stream") = py::none(),
     "Backpropagation through time after rnn_forward (same x, weights, ws, options). dx, dh0, dc0 are "
     "overwritten; dw, du, db accumulate (+=). Any of them may be None; x gives the shapes.");
}

static kilnet::bind::RegisterCudaFamily reg_rnn(&cuda_bind_rnn);
