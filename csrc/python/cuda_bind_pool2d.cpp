// cuda_bind_pool2d.cpp — kilnet._cuda bindings of max / average / global average pooling: the
// same names, arguments and checks as bind_pool2d.cpp, on CuPy arrays, plus `stream`.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <array>
#include <string>
#include "cuda_checks.h"
#include "kilnet/pool2d.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

namespace {

using Pair = std::array<index_t, 2>;

// Shape of a pooling call from x (N, H, W, C) and y (N, P, Q, C). Every window must overlap the
// input: pad < window (the first window) and P <= (H + pad_h - 1)/stride_h + 1 (the last one).
Pool2dShape pool_shape(const char* fn, const Arr& x, const Arr& y, Pair pool, Pair stride, Pair pad) {
  for (int i = 0; i < 2; ++i) {
    if (pool[i] < 1) fail_value(std::string(fn) + ": pool_size must be >= 1");
    if (stride[i] < 1) fail_value(std::string(fn) + ": strides must be >= 1");
    if (pad[i] < 0 || pad[i] >= pool[i])
      fail_value(std::string(fn) + ": padding must be >= 0 and smaller than the pool window, got (" +
                 std::to_string(pad[0]) + ", " + std::to_string(pad[1]) + ") for pool_size (" +
                 std::to_string(pool[0]) + ", " + std::to_string(pool[1]) + ")");
  }
  Pool2dShape s;
  s.N = x.dim(0); s.H = x.dim(1); s.W = x.dim(2); s.C = x.dim(3);
  s.R = pool[0]; s.S = pool[1];
  s.stride_h = stride[0]; s.stride_w = stride[1];
  s.pad_h = pad[0]; s.pad_w = pad[1];
  s.P = y.dim(1); s.Q = y.dim(2);
  if (s.N < 1 || s.H < 1 || s.W < 1 || s.C < 1)
    fail_value(std::string(fn) + ": empty input " + shape_str(x.shape));
  const index_t max_p = (s.H + s.pad_h - 1) / s.stride_h + 1;
  const index_t max_q = (s.W + s.pad_w - 1) / s.stride_w + 1;
  if (y.dim(0) != s.N || y.dim(3) != s.C || s.P < 1 || s.Q < 1 || s.P > max_p || s.Q > max_q)
    fail_value(std::string(fn) + ": output must have shape (" + std::to_string(s.N) + ", P<=" +
               std::to_string(max_p) + ", Q<=" + std::to_string(max_q) + ", " + std::to_string(s.C) +
               "), got " + shape_str(y.shape));
  return s;
}

}  // namespace

static void cuda_bind_pool2d(py::module_& m) {
  const auto max_fwd = &cuda::maxpool2d_forward;
  const auto max_bwd = &cuda::maxpool2d_backward;
  const auto avg_fwd = &cuda::avgpool2d_forward;
  const auto avg_bwd = &cuda::avgpool2d_backward;
  const auto gap_fwd = &cuda::global_avgpool2d_forward;
  const auto gap_bwd = &cuda::global_avgpool2d_backward;

  m.def("maxpool2d_forward", [=](py::object x_, py::object y_, Pair pool, Pair stride, Pair pad, py::object stream) {
    const char* fn = "maxpool2d_forward";
    Arr x = din_f32(fn, "x", x_, 4), y = dout_f32(fn, "y", y_, 4);
    Pool2dShape s = pool_shape(fn, x, y, pool, stride, pad);
    no_alias(fn, "y", y, "x", x);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    max_fwd(s, x.f(), y.f(), st);
  }, arg("x"), arg("y"), arg("pool_size"), arg("strides"), arg("padding") = Pair{0, 0}, arg("stream") = py::none(),
     "y = max over each window of x (NHWC); padding is (top, left); y's shape gives P, Q");

  m.def("maxpool2d_backward", [=](py::object x_, py::object dy_, py::object dx_, Pair pool,
                                  Pair stride, Pair pad, py::object stream) {
    const char* fn = "maxpool2d_backward";
    Arr x = din_f32(fn, "x", x_, 4), dy = din_f32(fn, "dy", dy_, 4), dx = dout_f32(fn, "dx", dx_, 4);
    Pool2dShape s = pool_shape(fn, x, dy, pool, stride, pad);
    expect_shape(fn, "dx", dx, x.shape);
    no_alias(fn, "dx", dx, "x", x); no_alias(fn, "dx", dx, "dy", dy);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    max_bwd(s, x.f(), dy.f(), dx.f(), st);
  }, arg("x"), arg("dy"), arg("dx"), arg("pool_size"), arg("strides"), arg("padding") = Pair{0, 0}, arg("stream") = py::none(),
     "dx (overwritten): each dy goes to the first maximum of its window in x");

  m.def("avgpool2d_forward", [=](py::object x_, py::object y_, Pair pool, Pair stride, Pair pad, py::object stream) {
    const char* fn = "avgpool2d_forward";
    Arr x = din_f32(fn, "x", x_, 4), y = dout_f32(fn, "y", y_, 4);
    Pool2dShape s = pool_shape(fn, x, y, pool, stride, pad);
    no_alias(fn, "y", y, "x", x);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    avg_fwd(s, x.f(), y.f(), st);
  }, arg("x"), arg("y"), arg("pool_size"), arg("strides"), arg("padding") = Pair{0, 0}, arg("stream") = py::none(),
     "y = mean over each window's unpadded positions of x (NHWC)");

  m.def("avgpool2d_backward", [=](py::object dy_, py::object dx_, Pair pool, Pair stride, Pair pad, py::object stream) {
    const char* fn = "avgpool2d_backward";
    Arr dy = din_f32(fn, "dy", dy_, 4), dx = dout_f32(fn, "dx", dx_, 4);
    Pool2dShape s = pool_shape(fn, dx, dy, pool, stride, pad);
    no_alias(fn, "dx", dx, "dy", dy);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    avg_bwd(s, dy.f(), dx.f(), st);
  }, arg("dy"), arg("dx"), arg("pool_size"), arg("strides"), arg("padding") = Pair{0, 0}, arg("stream") = py::none(),
     "dx (overwritten; its shape gives H, W): each dy spread evenly over its window");

  m.def("global_avgpool2d_forward", [=](py::object x_, py::object y_, py::object stream) {
    const char* fn = "global_avgpool2d_forward";
    Arr x = din_f32(fn, "x", x_, 4), y = dout_f32(fn, "y", y_, 2);
    if (x.size == 0) fail_value(std::string(fn) + ": empty input " + shape_str(x.shape));
    expect_shape(fn, "y", y, {x.dim(0), x.dim(3)});
    no_alias(fn, "y", y, "x", x);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    gap_fwd(x.dim(0), x.dim(1) * x.dim(2), x.dim(3), x.f(), y.f(), st);
  }, arg("x"), arg("y"), arg("stream") = py::none(), "y (N, C) = mean of x (N, H, W, C) over H and W");

  m.def("global_avgpool2d_backward", [=](py::object dy_, py::object dx_, py::object stream) {
    const char* fn = "global_avgpool2d_backward";
    Arr dy = din_f32(fn, "dy", dy_, 2), dx = dout_f32(fn, "dx", dx_, 4);
    if (dx.size == 0) fail_value(std::string(fn) + ": empty dx " + shape_str(dx.shape));
    expect_shape(fn, "dy", dy, {dx.dim(0), dx.dim(3)});
    no_alias(fn, "dx", dx, "dy", dy);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    gap_bwd(dx.dim(0), dx.dim(1) * dx.dim(2), dx.dim(3), dy.f(), dx.f(), st);
  }, arg("dy"), arg("dx"), arg("stream") = py::none(), "dx (N, H, W, C, overwritten) = dy / (H*W) broadcast over H and W");
}

static kilnet::bind::RegisterCudaFamily reg_pool2d(&cuda_bind_pool2d);
