// bind_conv2d.cpp — Python bindings of conv2d: the checks of args_conv2d.h, then the kernel
// without the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <array>
#include <string>
#include "args_conv2d.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_conv2d(py::module_& m, bool ref) {
  using FwdFn = void (*)(const Conv2dShape&, const float*, const float*, const float*, float*, Act);
  using BwdFn = void (*)(const Conv2dShape&, const float*, const float*, const float*, float*, float*,
                         float*, Act, const float*);
  const FwdFn conv_fwd = ref ? &cpu::conv2d_forward_ref : &cpu::conv2d_forward;
  const BwdFn conv_bwd = ref ? &cpu::conv2d_backward_ref : &cpu::conv2d_backward;
  using BwdInFn = void (*)(const Conv2dShape&, const float*, const float*, float*, Act, const float*);
  const BwdInFn conv_bwd_in = ref ? &cpu::conv2d_backward_input_ref : &cpu::conv2d_backward_input;
  m.def("conv2d_forward", [=](py::object x_, py::object w_, py::object b_, py::object y_,
                              Pair stride, Pair padding, Pair dilation, const std::string& act) {
    auto a = conv2d_forward_args(host_arrays, x_, w_, b_, y_, stride, padding, dilation, act);
    KernelCall nogil;
    conv_fwd(a.s, a.x.f(), a.w.f(), a.bp, a.y.f(), a.act);
  }, arg("x"), arg("w"), arg("b"), arg("y"), arg("stride") = Pair{1, 1},
     arg("padding") = Pair{0, 0}, arg("dilation") = Pair{1, 1}, arg("act") = "linear",
     "y = act(conv2d(x NHWC, w RSCK) + b), act one of linear, relu, sigmoid, tanh applied as y is "
     "stored; padding is (top, left); y's shape gives P, Q");

  m.def("conv2d_backward", [=](py::object dy_, py::object x_, py::object w_, py::object dx_,
                               py::object dw_, py::object db_, Pair stride, Pair padding, Pair dilation,
                               const std::string& act, py::object y_) {
    auto a = conv2d_backward_args(host_arrays, dy_, x_, w_, dx_, dw_, db_, stride, padding, dilation, act, y_);
    KernelCall nogil;
    conv_bwd(a.s, a.dy.f(), a.x.f(), a.w.f(), a.dxp, a.dw.f(), a.dbp, a.act, a.yp);
  }, arg("dy"), arg("x"), arg("w"), arg("dx"), arg("dw"), arg("db"), arg("stride") = Pair{1, 1},
     arg("padding") = Pair{0, 0}, arg("dilation") = Pair{1, 1}, arg("act") = "linear",
     arg("y") = py::none(),
     "gradients of y = act(conv2d(x, w) + b) given dy, using dz = act'(y) * dy on the fly (y, the "
     "forward output, is required unless act is linear): dx = grad wrt x (overwritten, None to "
     "skip); dw += grad wrt w; db += grad wrt b (None to skip)");

  const auto per_ex = ref ? &cpu::conv2d_backward_per_example_ref : &cpu::conv2d_backward_per_example;
  m.def("conv2d_backward_per_example", [=](py::object dy_, py::object x_, py::object w_, py::object per_,
                                           Pair stride, Pair padding, Pair dilation, const std::string& act,
                                           py::object y_) {
    const char* fn = "conv2d_backward_per_example";
    const Act a = parse_act(act);
    Arr dy = in_f32(fn, "dy", dy_, 4), x = in_f32(fn, "x", x_, 4), w = in_f32(fn, "w", w_, 4);
    Arr per = out_f32(fn, "per", per_, 2);
    const Conv2dShape s = conv_shape(fn, x, w, dy, stride, padding, dilation);
    const index_t kel = s.R * s.S * s.C * s.K;
    if (per.dim(0) != s.N || (per.dim(1) != kel && per.dim(1) != kel + s.K))
      fail_value(std::string(fn) + ": per must have shape (" + std::to_string(s.N) + ", " + std::to_string(kel) +
                 ") or (" + std::to_string(s.N) + ", " + std::to_string(kel + s.K) + ") (with the bias), got " +
                 shape_str(per.shape));
    Arr y;
    if (!y_.is_none()) {
      y = in_f32(fn, "y", y_, 4);
      expect_shape(fn, "y", y, dy.shape);
    } else if (a != Act::Linear) {
      fail_value(std::string(fn) + ": act='" + act + "' needs 'y', the forward output (shape " + shape_str(dy.shape) + ")");
    }
    for (const Arr* in : {&dy, &x, &w}) no_alias(fn, "per", per, "an input", *in);
    if (!y_.is_none()) no_alias(fn, "per", per, "an input", y);
    KernelCall nogil;
    per_ex(s, dy.f(), x.f(), w.f(), per.f(), per.dim(1) != kel, a, y_.is_none() ? nullptr : y.f());
  }, arg("dy"), arg("x"), arg("w"), arg("per"), arg("stride") = Pair{1, 1}, arg("padding") = Pair{0, 0},
     arg("dilation") = Pair{1, 1}, arg("act") = "linear", arg("y") = py::none(),
     "each example's own weight gradient: per[i] (N rows of R*S*C*K values, then K for the bias "
     "when per has them) += conv2d_backward's dw (| db) of example i alone (DP-SGD's per-example "
     "norms); y as for conv2d_backward");

  // The geometry rules alone, on shapes: layers check their arguments at build with exactly the
  // rules the kernels' calls are checked with (kilnet/detail/geometry.h).
  m.def("conv2d_check_geometry", [](std::array<index_t, 4> x, std::array<index_t, 4> w, std::array<index_t, 4> y,
                                    Pair stride, Pair padding, Pair dilation) {
    Arr xa, wa, ya;
    xa.shape.assign(x.begin(), x.end()); wa.shape.assign(w.begin(), w.end()); ya.shape.assign(y.begin(), y.end());
    conv_shape("conv2d", xa, wa, ya, stride, padding, dilation);
  }, arg("x_shape"), arg("w_shape"), arg("y_shape"), arg("stride"), arg("padding"), arg("dilation"),
     "Raises ValueError when conv2d_forward would refuse these shapes and this geometry (x NHWC, "
     "w RSCK, y NPQK; depthwise: w RSCM with y's last axis M)");

  m.def("conv2d_backward_input", [=](py::object dy_, py::object w_, py::object dx_, Pair stride,
                                     Pair padding, Pair dilation, const std::string& act, py::object y_) {
    auto a = conv2d_backward_input_args(host_arrays, dy_, w_, dx_, stride, padding, dilation, act, y_);
    KernelCall nogil;
    conv_bwd_in(a.s, a.dy.f(), a.w.f(), a.dx.f(), a.act, a.yp);
  }, arg("dy"), arg("w"), arg("dx"), arg("stride") = Pair{1, 1}, arg("padding") = Pair{0, 0},
     arg("dilation") = Pair{1, 1}, arg("act") = "linear", arg("y") = py::none(),
     "dx = the input gradient of y = act(conv2d(x, w) + b) given dy (overwritten; its shape gives "
     "x's): conv2d_backward without the weight gradient. Also the forward of a transposed "
     "convolution (its input as dy, its output as dx)");
}
