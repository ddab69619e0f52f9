// bind_conv_dense.cpp — Python bindings of the fused Conv2D -> Flatten -> Dense kernels
// (kilnet/conv_dense.h): the convolution's geometry through args_conv2d.h's checks, the Dense
// shapes and the aliasing here, then the kernel without the GIL. CPU only.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "args_conv2d.h"
#include "kilnet/conv_dense.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

namespace {

struct ConvDenseArgs {
  Conv2dShape s;
  Act act;
  index_t U = 0;
  Arr x, wc, bc, wd, bd;
  const float* bcp = nullptr;
  const float* bdp = nullptr;
};

// x NHWC, wc RSCK, out_hw the convolution's output (P, Q), wd (P*Q*K, U); biases optional.
ConvDenseArgs common_args(const char* fn, const py::object& x_, const py::object& wc_, const py::object& bc_,
                          const py::object& wd_, const py::object& bd_, Pair stride, Pair padding,
                          Pair dilation, Pair out_hw, const std::string& act) {
  ConvDenseArgs a;
  a.act = parse_act(act);
  a.x = in_f32(fn, "x", x_, 4);
  a.wc = in_f32(fn, "wc", wc_, 4);
  a.wd = in_f32(fn, "wd", wd_, 2);
  Arr y;   // the convolution's output exists only in blocks: its shape for the geometry checks
  y.shape = {a.x.dim(0), out_hw[0], out_hw[1], a.wc.dim(3)};
  a.s = conv_shape(fn, a.x, a.wc, y, stride, padding, dilation);
  a.U = a.wd.dim(1);
  expect_shape(fn, "wd", a.wd, {a.s.P * a.s.Q * a.s.K, a.U});
  if (a.U < 1) fail_value(std::string(fn) + ": wd must have at least one column (units)");
  if (!bc_.is_none()) {
    a.bc = in_f32(fn, "bc", bc_, 1);
    expect_shape(fn, "bc", a.bc, {a.s.K});
    a.bcp = a.bc.f();
  }
  if (!bd_.is_none()) {
    a.bd = in_f32(fn, "bd", bd_, 1);
    expect_shape(fn, "bd", a.bd, {a.U});
    a.bdp = a.bd.f();
  }
  return a;
}

}  // namespace

void kilnet::bind::bind_conv_dense(py::module_& m, bool ref) {
  const auto fwd = ref ? &cpu::conv_dense_forward_ref : &cpu::conv_dense_forward;
  const auto bwd = ref ? &cpu::conv_dense_backward_ref : &cpu::conv_dense_backward;
  m.def("conv_dense_forward", [=](py::object x_, py::object wc_, py::object bc_, py::object wd_, py::object bd_,
                                  py::object z_, Pair stride, Pair padding, Pair dilation, Pair out_hw,
                                  const std::string& act) {
    const char* fn = "conv_dense_forward";
    auto a = common_args(fn, x_, wc_, bc_, wd_, bd_, stride, padding, dilation, out_hw, act);
    Arr z = out_f32(fn, "z", z_, 2);
    expect_shape(fn, "z", z, {a.s.N, a.U});
    outputs_apart(fn, {{"z", &z}}, {{"x", &a.x}, {"wc", &a.wc}, {"bc", a.bcp ? &a.bc : nullptr},
                                    {"wd", &a.wd}, {"bd", a.bdp ? &a.bd : nullptr}});
    KernelCall nogil;
    fwd(a.s, a.act, a.x.f(), a.wc.f(), a.bcp, a.U, a.wd.f(), a.bdp, z.f());
  }, arg("x"), arg("wc"), arg("bc"), arg("wd"), arg("bd"), arg("z"), arg("stride"), arg("padding"),
     arg("dilation"), arg("out_hw"), arg("act") = "linear",
     "z = flatten(act(conv2d(x, wc) + bc)) @ wd + bd without the convolution's output in memory: "
     "x NHWC, wc RSCK, out_hw its output (P, Q), wd (P*Q*K, U), z (N, U); bc, bd may be None");

  m.def("conv_dense_backward", [=](py::object x_, py::object wc_, py::object bc_, py::object wd_, py::object dz_,
                                   py::object dwc_, py::object dbc_, py::object dwd_, py::object dbd_,
                                   Pair stride, Pair padding, Pair dilation, Pair out_hw, const std::string& act,
                                   bool overwrite_dwd) {
    const char* fn = "conv_dense_backward";
    auto a = common_args(fn, x_, wc_, bc_, wd_, py::none(), stride, padding, dilation, out_hw, act);
    Arr dz = in_f32(fn, "dz", dz_, 2);
    expect_shape(fn, "dz", dz, {a.s.N, a.U});
    Arr dwc, dwd = out_f32(fn, "dwd", dwd_, 2), dbc, dbd;
    expect_shape(fn, "dwd", dwd, a.wd.shape);
    float* dwcp = nullptr;
    float* dbcp = nullptr;
    float* dbdp = nullptr;
    if (!dwc_.is_none()) {
      dwc = out_f32(fn, "dwc", dwc_, 4);
      expect_shape(fn, "dwc", dwc, a.wc.shape);
      dwcp = dwc.f();
    } else if (!dbc_.is_none()) {
      fail_value(std::string(fn) + ": dbc without dwc (dwc None computes the Dense's gradients only)");
    }
    if (!dbc_.is_none()) {
      dbc = out_f32(fn, "dbc", dbc_, 1);
      expect_shape(fn, "dbc", dbc, {a.s.K});
      dbcp = dbc.f();
    }
    if (!dbd_.is_none()) {
      dbd = out_f32(fn, "dbd", dbd_, 1);
      expect_shape(fn, "dbd", dbd, {a.U});
      dbdp = dbd.f();
    }
    outputs_apart(fn, {{"dwc", dwcp ? &dwc : nullptr}, {"dbc", dbcp ? &dbc : nullptr}, {"dwd", &dwd},
                       {"dbd", dbdp ? &dbd : nullptr}},
                  {{"x", &a.x}, {"wc", &a.wc}, {"bc", a.bcp ? &a.bc : nullptr}, {"wd", &a.wd}, {"dz", &dz}});
    KernelCall nogil;
    bwd(a.s, a.act, a.x.f(), a.wc.f(), a.bcp, a.U, a.wd.f(), dz.f(), dwcp, dbcp, dwd.f(), dbdp, overwrite_dwd);
  }, arg("x"), arg("wc"), arg("bc"), arg("wd"), arg("dz"), arg("dwc"), arg("dbc"), arg("dwd"), arg("dbd"),
     arg("stride"), arg("padding"), arg("dilation"), arg("out_hw"), arg("act") = "linear",
     arg("overwrite_dwd") = false,
     "the weight gradients of conv_dense_forward given dz (N, U), the convolution's output "
     "recomputed block by block: dwd = (or +=) h^T dz, dbd += colsum(dz), dwc += and dbc += the "
     "convolution's; dbc, dbd may be None; dwc None (and dbc None): the Dense's gradients only. "
     "No input gradient");

  const auto per_ex = ref ? &cpu::conv_dense_per_example_ref : &cpu::conv_dense_per_example;
  m.def("conv_dense_per_example", [=](py::object x_, py::object wc_, py::object bc_, py::object wd_, py::object dz_,
                                      py::object per_, py::object hsq_, Pair stride, Pair padding, Pair dilation,
                                      Pair out_hw, const std::string& act) {
    const char* fn = "conv_dense_per_example";
    auto a = common_args(fn, x_, wc_, bc_, wd_, py::none(), stride, padding, dilation, out_hw, act);
    Arr dz = in_f32(fn, "dz", dz_, 2);
    expect_shape(fn, "dz", dz, {a.s.N, a.U});
    Arr per = out_f32(fn, "per", per_, 2), hsq = out_f32(fn, "hsq", hsq_, 1);
    const index_t row = a.s.R * a.s.S * a.s.C * a.s.K + (a.bcp ? a.s.K : 0);
    expect_shape(fn, "per", per, {a.s.N, row});
    expect_shape(fn, "hsq", hsq, {a.s.N});
    outputs_apart(fn, {{"per", &per}, {"hsq", &hsq}},
                  {{"x", &a.x}, {"wc", &a.wc}, {"bc", a.bcp ? &a.bc : nullptr}, {"wd", &a.wd}, {"dz", &dz}});
    KernelCall nogil;
    per_ex(a.s, a.act, a.x.f(), a.wc.f(), a.bcp, a.U, a.wd.f(), dz.f(), per.f(), hsq.f());
  }, arg("x"), arg("wc"), arg("bc"), arg("wd"), arg("dz"), arg("per"), arg("hsq"), arg("stride"), arg("padding"),
     arg("dilation"), arg("out_hw"), arg("act") = "linear",
     "DP-SGD's per-example pass of conv_dense_forward given dz (N, U): per (N, R*S*C*K [+ K with bc]) := each "
     "example's own convolution weight (and bias) gradient, hsq (N,) := |h_n|^2 of its flattened convolution "
     "output (its Dense weight gradient's squared norm is hsq[n] * |dz_n|^2)");

  m.def("conv_dense_per_example_direct", [=](index_t taps, index_t units, const std::string& act) {
    if (taps < 1 || units < 1) fail_value("conv_dense_per_example_direct: taps and units must be >= 1");
    const Act a = parse_act(act);
    return ref ? false : cpu::conv_dense_per_example_direct(taps, a, units);
  }, arg("taps"), arg("units"), arg("act") = "linear",
     "whether conv_dense_per_example runs its one-pass kernel for a window of taps = kh*kw*cin values, "
     "units Dense units and act on this machine (else each example goes through the general kernels, "
     "several times slower); the reference module: False");
}
