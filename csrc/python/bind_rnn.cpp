// bind_rnn.cpp — Python bindings of the recurrent kernels (SimpleRNN, LSTM, GRU): the checks of
// args_rnn.h, then the kernel without the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "args_rnn.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_rnn(py::module_& m, bool ref) {
  const auto fwd = ref ? &cpu::rnn_forward_ref : &cpu::rnn_forward;
  const auto bwd = ref ? &cpu::rnn_backward_ref : &cpu::rnn_backward;

  m.def("rnn_workspace_size", &rnn_workspace_sizes, arg("cell"), arg("batch"), arg("steps"), arg("features"),
        arg("units"), "(forward workspace, backward scratch) sizes in float32 values");

  m.def("rnn_forward", [=](const std::string& cell_name, py::object x_, py::object w_, py::object u_,
                           py::object b_, py::object y_, py::object ws_, py::object h0_, py::object c0_,
                           const std::string& activation, const std::string& recurrent_activation,
                           bool go_backwards, py::object mask_, bool zero_output_for_mask, py::object h_last_,
                           py::object c_last_) {
    auto a = rnn_forward_args(host_arrays, cell_name, x_, w_, u_, b_, y_, ws_, h0_, c0_, activation, recurrent_activation,
                              go_backwards, mask_, zero_output_for_mask, h_last_, c_last_);
    KernelCall nogil;
    fwd(a.s, a.x.f(), a.w.f(), a.u.f(), a.bp, a.h0p, a.c0p, a.y.f(), a.ws.f(), a.maskp, a.h_lastp, a.c_lastp);
  }, arg("cell"), arg("x"), arg("w"), arg("u"), arg("b"), arg("y"), arg("ws"), arg("h0") = py::none(),
     arg("c0") = py::none(), arg("activation") = "tanh", arg("recurrent_activation") = "sigmoid",
     arg("go_backwards") = false, arg("mask") = py::none(), arg("zero_output_for_mask") = false,
     arg("h_last") = py::none(), arg("c_last") = py::none(),
     "Run the cell over x (B, T, I): y = every h_t (B, T, H) or the last (B, H), by y's rank. ws keeps "
     "what rnn_backward needs (size from rnn_workspace_size). b, h0, c0 may be None. mask (B, T) "
     "float32, 0 = skip the step (Keras's masking: states carried; the output is h_{t-1}, or 0 with "
     "zero_output_for_mask). h_last, c_last (B, H): filled with the final states when given.");

  m.def("rnn_backward", [=](const std::string& cell_name, py::object dy_, py::object x_, py::object w_,
                            py::object u_, py::object ws_, py::object scratch_, py::object dx_,
                            py::object dw_, py::object du_, py::object db_, py::object dh0_,
                            py::object dc0_, const std::string& activation,
                            const std::string& recurrent_activation, bool go_backwards, py::object mask_,
                            bool zero_output_for_mask, py::object dh_last_, py::object dc_last_) {
    auto a = rnn_backward_args(host_arrays, cell_name, dy_, x_, w_, u_, ws_, scratch_, dx_, dw_, du_, db_, dh0_, dc0_,
                               activation, recurrent_activation, go_backwards, mask_, zero_output_for_mask, dh_last_,
                               dc_last_);
    KernelCall nogil;
    bwd(a.s, a.dy.f(), a.w.f(), a.u.f(), a.ws.f(), a.scratch.f(), a.dxp, a.dwp, a.dup, a.dbp, a.dh0p, a.dc0p,
        a.maskp, a.dh_lastp, a.dc_lastp);
  }, arg("cell"), arg("dy"), arg("x"), arg("w"), arg("u"), arg("ws"), arg("scratch"), arg("dx"),
     arg("dw"), arg("du"), arg("db"), arg("dh0") = py::none(), arg("dc0") = py::none(),
     arg("activation") = "tanh", arg("recurrent_activation") = "sigmoid", arg("go_backwards") = false,
     arg("mask") = py::none(), arg("zero_output_for_mask") = false, arg("dh_last") = py::none(),
     arg("dc_last") = py::none(),
     "Backpropagation through time after rnn_forward (same x, weights, ws, options, mask). dx, dh0, dc0 "
     "are overwritten; dw, du, db accumulate (+=). Any of them may be None; x gives the shapes. dh_last, "
     "dc_last: gradients wrt the final states (rnn_forward's h_last, c_last), None = zero.");
}
