// bind_depthwise.cpp — Python bindings of depthwise2d: the checks of args_depthwise.h, then the
// kernel without the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include "args_depthwise.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_depthwise(py::module_& m, bool ref) {
  using FwdFn = void (*)(const Depthwise2dShape&, const float*, const float*, const float*, float*);
  using BwdFn = void (*)(const Depthwise2dShape&, const float*, const float*, const float*, float*, float*, float*);
  const FwdFn fwd = ref ? &cpu::depthwise2d_forward_ref : &cpu::depthwise2d_forward;
  const BwdFn bwd = ref ? &cpu::depthwise2d_backward_ref : &cpu::depthwise2d_backward;
  m.def("depthwise2d_forward", [=](py::object x_, py::object w_, py::object b_, py::object y_, DwPair stride,
                                   DwPair padding, DwPair dilation) {
    auto a = depthwise2d_forward_args(host_arrays, x_, w_, b_, y_, stride, padding, dilation);
    KernelCall nogil;
    fwd(a.s, a.x.f(), a.w.f(), a.bp, a.y.f());
  }, arg("x"), arg("w"), arg("b"), arg("y"), arg("stride") = DwPair{1, 1}, arg("padding") = DwPair{0, 0},
     arg("dilation") = DwPair{1, 1},
     "y = depthwise_conv2d(x NHWC, w (R, S, C, M)) + b, output channel c*M + m; padding is (top, left); "
     "y's shape gives P, Q");
  m.def("depthwise2d_backward", [=](py::object dy_, py::object x_, py::object w_, py::object dx_, py::object dw_,
                                    py::object db_, DwPair stride, DwPair padding, DwPair dilation) {
    auto a = depthwise2d_backward_args(host_arrays, dy_, x_, w_, dx_, dw_, db_, stride, padding, dilation);
    KernelCall nogil;
    bwd(a.s, a.dy.f(), a.x.f(), a.w.f(), a.dxp, a.dw.f(), a.dbp);
  }, arg("dy"), arg("x"), arg("w"), arg("dx"), arg("dw"), arg("db"), arg("stride") = DwPair{1, 1},
     arg("padding") = DwPair{0, 0}, arg("dilation") = DwPair{1, 1},
     "gradients of depthwise2d given dy: dx overwritten (None to skip), dw += grad wrt w, db += grad wrt b "
     "(None to skip)");
}
