// bind_activation.cpp — Python bindings of the activations and softmax.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "args_elementwise.h"
#include "kilnet/activation.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_activation(py::module_& m, bool ref) {
  const auto act_fwd = ref ? &cpu::activation_forward_ref : &cpu::activation_forward;
  const auto act_bwd = ref ? &cpu::activation_backward_ref : &cpu::activation_backward;
  const auto sm_fwd = ref ? &cpu::softmax_forward_ref : &cpu::softmax_forward;
  const auto sm_bwd = ref ? &cpu::softmax_backward_ref : &cpu::softmax_backward;
  m.def("activation_forward", [=](const std::string& act, py::object x_, py::object y_) {
    const Act act_ = parse_act(act);
    auto a = map_args(host_arrays, "activation_forward", x_, y_);
    KernelCall nogil;
    act_fwd(act_, a.x.size, a.x.f(), a.y.f());
  }, arg("act"), arg("x"), arg("y"), "y = act(x); y may be x itself");

  m.def("activation_backward", [=](const std::string& act, py::object y_, py::object dy_, py::object dx_) {
    const Act act_ = parse_act(act);
    auto a = grad_args(host_arrays, "activation_backward", "y", y_, dy_, dx_);
    KernelCall nogil;
    act_bwd(act_, a.saved.size, a.saved.f(), a.dy.f(), a.dx.f());
  }, arg("act"), arg("y"), arg("dy"), arg("dx"), "dx = act'(.) * dy from the forward output y; dx may be dy");

  m.def("softmax_forward", [=](py::object x_, py::object y_) {
    auto a = map_args(host_arrays, "softmax_forward", x_, y_);
    auto [rows, cols] = rows_cols("softmax_forward", a.x);
    KernelCall nogil;
    sm_fwd(rows, cols, a.x.f(), a.y.f());
  }, arg("x"), arg("y"), "softmax along the last axis");

  m.def("softmax_backward", [=](py::object y_, py::object dy_, py::object dx_) {
    auto a = grad_args(host_arrays, "softmax_backward", "y", y_, dy_, dx_);
    auto [rows, cols] = rows_cols("softmax_backward", a.saved);
    KernelCall nogil;
    sm_bwd(rows, cols, a.saved.f(), a.dy.f(), a.dx.f());
  }, arg("y"), arg("dy"), arg("dx"));
}
