// cuda_bind_conv2d.cpp — kilnet._cuda conv2d_forward / conv2d_backward: the CPU binding's
// names, arguments, defaults and checks (bind_conv2d.cpp) on CuPy arrays, plus stream=None.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <algorithm>
#include <array>
#include <string>
#include <vector>
#include "cuda_checks.h"
#include "kilnet/conv2d.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

namespace {

using Pair = std::array<index_t, 2>;

// The same shape rules as the CPU binding (a copy of its conv_shape, which is file-local there).
Conv2dShape cuda_conv_shape(const char* fn, const Arr& x, const Arr& w, const Arr& y, Pair stride,
                            Pair pad, Pair dil) {
  for (int i = 0; i < 2; ++i) {
    if (stride[i] < 1) fail_value(std::string(fn) + ": strides must be >= 1");
    if (dil[i] < 1) fail_value(std::string(fn) + ": dilation must be >= 1");
    if (pad[i] < 0) fail_value(std::string(fn) + ": padding must be >= 0");
  }
  Conv2dShape s;
  s.N = x.dim(0); s.H = x.dim(1); s.W = x.dim(2); s.C = x.dim(3);
  s.R = w.dim(0); s.S = w.dim(1); s.K = w.dim(3);
  if (s.R < 1 || s.S < 1)
    fail_value(std::string(fn) + ": the kernel must be at least 1x1, got 'w' of shape " + shape_str(w.shape));
  if (w.dim(2) != s.C)
    fail_value(std::string(fn) + ": weight 'w' has " + std::to_string(w.dim(2)) +
               " input channels but 'x' has " + std::to_string(s.C));
  s.stride_h = stride[0]; s.stride_w = stride[1];
  s.pad_h = pad[0]; s.pad_w = pad[1];
  s.dilation_h = dil[0]; s.dilation_w = dil[1];
  s.P = y.dim(1); s.Q = y.dim(2);
  const index_t eff_r = (s.R - 1) * s.dilation_h + 1, eff_s = (s.S - 1) * s.dilation_w + 1;
  const index_t max_p = (s.H + s.pad_h + std::max(s.pad_h, eff_r - 1) - eff_r) / s.stride_h + 1;
  const index_t max_q = (s.W + s.pad_w + std::max(s.pad_w, eff_s - 1) - eff_s) / s.stride_w + 1;
  if (y.dim(0) != s.N || y.dim(3) != s.K || s.P < 1 || s.Q < 1 || s.P > max_p || s.Q > max_q)
    fail_value(std::string(fn) + ": output must have shape (" + std::to_string(s.N) + ", P<=" +
               std::to_string(max_p) + ", Q<=" + std::to_string(max_q) + ", " + std::to_string(s.K) +
               "), got " + shape_str(y.shape));
  return s;
}

}  // namespace

static void cuda_bind_conv2d(py::module_& m) {
  m.def("conv2d_forward", [](py::object x_, py::object w_, py::object b_, py::object y_,
                             Pair stride, Pair padding, Pair dilation, const std::string& act,
                             py::object stream) {
    const char* fn = "conv2d_forward";
    const Act a = parse_act(act);
    Arr x = din_f32(fn, "x", x_, 4), w = din_f32(fn, "w", w_, 4), y = dout_f32(fn, "y", y_, 4);
    Conv2dShape s = cuda_conv_shape(fn, x, w, y, stride, padding, dilation);
    no_alias(fn, "y", y, "x", x); no_alias(fn, "y", y, "w", w);
    const float* bp = nullptr;
    Arr b;
    if (!b_.is_none()) { b = din_f32(fn, "b", b_, 1); expect_shape(fn, "b", b, {s.K}); no_alias(fn, "y", y, "b", b); bp = b.f(); }
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::conv2d_forward(s, x.f(), w.f(), bp, y.f(), a, st);
  }, arg("x"), arg("w"), arg("b"), arg("y"), arg("stride") = Pair{1, 1},
     arg("padding") = Pair{0, 0}, arg("dilation") = Pair{1, 1}, arg("act") = "linear",
     arg("stream") = py::none(),
     "y = act(conv2d(x NHWC, w RSCK) + b) on the GPU (implicit GEMM), act one of linear, relu, "
     "sigmoid, tanh applied as y is stored; padding is (top, left); y's shape gives P, Q");

  m.def("conv2d_backward", [](py::object dy_, py::object x_, py::object w_, py::object dx_,
                              py::object dw_, py::object db_, Pair stride, Pair padding, Pair dilation,
                              const std::string& act, py::object y_, py::object stream) {
    const char* fn = "conv2d_backward";
    const Act a = parse_act(act);
    Arr dy = din_f32(fn, "dy", dy_, 4), x = din_f32(fn, "x", x_, 4), w = din_f32(fn, "w", w_, 4);
    Arr dw = dout_f32(fn, "dw", dw_, 4);
    Conv2dShape s = cuda_conv_shape(fn, x, w, dy, stride, padding, dilation);
    expect_shape(fn, "dw", dw, w.shape);
    Arr y;
    if (!y_.is_none()) {
      y = din_f32(fn, "y", y_, 4);
      expect_shape(fn, "y", y, dy.shape);
    } else if (a != Act::Linear) {
      fail_value(std::string(fn) + ": act='" + act + "' needs 'y', the forward output (shape " +
                 shape_str(dy.shape) + ")");
    }
    std::vector<Arr*> inputs{&dy, &x, &w};
    if (!y_.is_none()) inputs.push_back(&y);
    for (auto* in : inputs) no_alias(fn, "dw", dw, "an input", *in);
    float* dxp = nullptr; float* dbp = nullptr;
    Arr dx, db;
    if (!dx_.is_none()) {
      dx = dout_f32(fn, "dx", dx_, 4); expect_shape(fn, "dx", dx, x.shape);
      for (auto* in : inputs) no_alias(fn, "dx", dx, "another argument", *in);
      no_alias(fn, "dx", dx, "another argument", dw);
      dxp = dx.f();
    }
    if (!db_.is_none()) {
      db = dout_f32(fn, "db", db_, 1); expect_shape(fn, "db", db, {s.K});
      for (auto* in : inputs) no_alias(fn, "db", db, "another argument", *in);
      no_alias(fn, "db", db, "another argument", dw);
      dbp = db.f();
    }
    const float* yp = a == Act::Linear ? nullptr : y.f();
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::conv2d_backward(s, dy.f(), x.f(), w.f(), dxp, dw.f(), dbp, a, yp, st);
  }, arg("dy"), arg("x"), arg("w"), arg("dx"), arg("dw"), arg("db"), arg("stride") = Pair{1, 1},
     arg("padding") = Pair{0, 0}, arg("dilation") = Pair{1, 1}, arg("act") = "linear",
     arg("y") = py::none(), arg("stream") = py::none(),
     "gradients of y = act(conv2d(x, w) + b) on the GPU given dy, using dz = act'(y) * dy on the "
     "fly (y, the forward output, is required unless act is linear): dx = grad wrt x (overwritten, "
     "None to skip); dw += grad wrt w; db += grad wrt b (None to skip); deterministic");
}

static kilnet::bind::RegisterCudaFamily reg_conv2d(&cuda_bind_conv2d);
