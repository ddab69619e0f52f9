// cuda_bind_rnn.cpp — kilnet._cuda bindings of the recurrent kernels (SimpleRNN, LSTM, GRU): the
// same names, arguments and checks as the CPU (args_rnn.h), on CuPy arrays, plus `stream` on the
// kernels (rnn_workspace_size is pure arithmetic and takes none).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "args_rnn.h"
#include "cuda_checks.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

static void cuda_bind_rnn(py::module_& m) {
  const auto fwd = &cuda::rnn_forward;
  const auto bwd = &cuda::rnn_backward;

  m.def("rnn_workspace_size", &rnn_workspace_sizes, arg("cell"), arg("batch"), arg("steps"), arg("features"),
        arg("units"), "(forward workspace, backward scratch) sizes in float32 values");

  m.def("rnn_forward", [=](const std::string& cell_name, py::object x_, py::object w_, py::object u_,
                           py::object b_, py::object y_, py::object ws_, py::object h0_, py::object c0_,
                           const std::string& activation, const std::string& recurrent_activation,
                           bool go_backwards, py::object mask_, bool zero_output_for_mask,
                           py::object h_last_, py::object c_last_, py::object stream) {
    auto a = rnn_forward_args(device_arrays, cell_name, x_, w_, u_, b_, y_, ws_, h0_, c0_, activation, recurrent_activation,
                              go_backwards, mask_, zero_output_for_mask, h_last_, c_last_);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    fwd(a.s, a.x.f(), a.w.f(), a.u.f(), a.bp, a.h0p, a.c0p, a.y.f(), a.ws.f(), st, a.maskp, a.h_lastp, a.c_lastp);
  }, arg("cell"), arg("x"), arg("w"), arg("u"), arg("b"), arg("y"), arg("ws"), arg("h0") = py::none(),
     arg("c0") = py::none(), arg("activation") = "tanh", arg("recurrent_activation") = "sigmoid",
     arg("go_backwards") = false, arg("mask") = py::none(), arg("zero_output_for_mask") = false,
     arg("h_last") = py::none(), arg("c_last") = py::none(), arg("stream") = py::none(),
     "Run the cell over x (B, T, I): y = every h_t (B, T, H) or the last (B, H), by y's rank. ws keeps "
     "what rnn_backward needs (size from rnn_workspace_size). b, h0, c0 may be None.");

  m.def("rnn_backward", [=](const std::string& cell_name, py::object dy_, py::object x_, py::object w_,
                            py::object u_, py::object ws_, py::object scratch_, py::object dx_,
                            py::object dw_, py::object du_, py::object db_, py::object dh0_,
                            py::object dc0_, const std::string& activation,
                            const std::string& recurrent_activation, bool go_backwards, py::object mask_,
                            bool zero_output_for_mask, py::object dh_last_, py::object dc_last_, py::object stream) {
    auto a = rnn_backward_args(device_arrays, cell_name, dy_, x_, w_, u_, ws_, scratch_, dx_, dw_, du_, db_, dh0_, dc0_,
                               activation, recurrent_activation, go_backwards, mask_, zero_output_for_mask, dh_last_,
                               dc_last_);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    bwd(a.s, a.dy.f(), a.w.f(), a.u.f(), a.ws.f(), a.scratch.f(), a.dxp, a.dwp, a.dup, a.dbp, a.dh0p, a.dc0p, st,
        a.maskp, a.dh_lastp, a.dc_lastp);
  }, arg("cell"), arg("dy"), arg("x"), arg("w"), arg("u"), arg("ws"), arg("scratch"), arg("dx"),
     arg("dw"), arg("du"), arg("db"), arg("dh0") = py::none(), arg("dc0") = py::none(),
     arg("activation") = "tanh", arg("recurrent_activation") = "sigmoid", arg("go_backwards") = false,
     arg("mask") = py::none(), arg("zero_output_for_mask") = false, arg("dh_last") = py::none(),
     arg("dc_last") = py::none(), arg("stream") = py::none(),
     "Backpropagation through time after rnn_forward (same x, weights, ws, options). dx, dh0, dc0 are "
     "overwritten; dw, du, db accumulate (+=). Any of them may be None; x gives the shapes.");
}

static kilnet::bind::RegisterCudaFamily reg_rnn(&cuda_bind_rnn);
