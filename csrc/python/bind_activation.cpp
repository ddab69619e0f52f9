// bind_activation.cpp — Python bindings of the activations and softmax.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "checks.h"
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
    const char* fn = "activation_forward";
    Act a = parse_act(act);
    Arr x = in_f32(fn, "x", x_), y = out_f32(fn, "y", y_);
    expect_shape(fn, "y", y, x.shape);
    if (y.data != x.data) no_alias(fn, "y", y, "x", x);   // exactly in place is fine
    py::gil_scoped_release nogil;
    act_fwd(a, x.size, x.f(), y.f());
  }, arg("act"), arg("x"), arg("y"), "y = act(x); y may be x itself");

  m.def("activation_backward", [=](const std::string& act, py::object y_, py::object dy_, py::object dx_) {
    const char* fn = "activation_backward";
    Act a = parse_act(act);
    Arr y = in_f32(fn, "y", y_), dy = in_f32(fn, "dy", dy_), dx = out_f32(fn, "dx", dx_);
    expect_shape(fn, "dy", dy, y.shape); expect_shape(fn, "dx", dx, y.shape);
    no_alias(fn, "dx", dx, "y", y);
    if (dx.data != dy.data) no_alias(fn, "dx", dx, "dy", dy);
    py::gil_scoped_release nogil;
    act_bwd(a, y.size, y.f(), dy.f(), dx.f());
  }, arg("act"), arg("y"), arg("dy"), arg("dx"), "dx = act'(.) * dy from the forward output y; dx may be dy");

  m.def("softmax_forward", [=](py::object x_, py::object y_) {
    const char* fn = "softmax_forward";
    Arr x = in_f32(fn, "x", x_), y = out_f32(fn, "y", y_);
    expect_shape(fn, "y", y, x.shape);
    if (y.data != x.data) no_alias(fn, "y", y, "x", x);
    auto [rows, cols] = rows_cols(fn, x);
    py::gil_scoped_release nogil;
    sm_fwd(rows, cols, x.f(), y.f());
  }, arg("x"), arg("y"), "softmax along the last axis");

  m.def("softmax_backward", [=](py::object y_, py::object dy_, py::object dx_) {
    const char* fn = "softmax_backward";
    Arr y = in_f32(fn, "y", y_), dy = in_f32(fn, "dy", dy_), dx = out_f32(fn, "dx", dx_);
    expect_shape(fn, "dy", dy, y.shape); expect_shape(fn, "dx", dx, y.shape);
    no_alias(fn, "dx", dx, "y", y);
    if (dx.data != dy.data) no_alias(fn, "dx", dx, "dy", dy);
    auto [rows, cols] = rows_cols(fn, y);
    py::gil_scoped_release nogil;
    sm_bwd(rows, cols, y.f(), dy.f(), dx.f());
  }, arg("y"), arg("dy"), arg("dx"));
}
