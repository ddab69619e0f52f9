// cuda_bind_pool2d.cpp — kilnet._cuda bindings of max / average / global average pooling: the
// same names, arguments and checks as bind_pool2d.cpp, on CuPy arrays, plus `stream`.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "args_pool2d.h"
#include "cuda_checks.h"
#include "kilnet/pool2d.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

static void cuda_bind_pool2d(py::module_& m) {
  const auto max_fwd = &cuda::maxpool2d_forward;
  const auto max_bwd = &cuda::maxpool2d_backward;
  const auto avg_fwd = &cuda::avgpool2d_forward;
  const auto avg_bwd = &cuda::avgpool2d_backward;
  const auto gap_fwd = &cuda::global_avgpool2d_forward;
  const auto gap_bwd = &cuda::global_avgpool2d_backward;

  m.def("maxpool2d_forward", [=](py::object x_, py::object y_, Pair pool, Pair stride, Pair pad, py::object stream) {
    auto a = pool_forward_args(device_arrays, "maxpool2d_forward", x_, y_, pool, stride, pad);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    max_fwd(a.s, a.in.f(), a.out.f(), st);
  }, arg("x"), arg("y"), arg("pool_size"), arg("strides"), arg("padding") = Pair{0, 0}, arg("stream") = py::none(),
     "y = max over each window of x (NHWC); padding is (top, left); y's shape gives P, Q");

  m.def("maxpool2d_backward", [=](py::object x_, py::object dy_, py::object dx_, Pair pool,
                                  Pair stride, Pair pad, py::object stream) {
    auto a = maxpool2d_backward_args(device_arrays, x_, dy_, dx_, pool, stride, pad);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    max_bwd(a.s, a.in.f(), a.dy.f(), a.out.f(), st);
  }, arg("x"), arg("dy"), arg("dx"), arg("pool_size"), arg("strides"), arg("padding") = Pair{0, 0}, arg("stream") = py::none(),
     "dx (overwritten): each dy goes to the first maximum of its window in x");

  m.def("avgpool2d_forward", [=](py::object x_, py::object y_, Pair pool, Pair stride, Pair pad, py::object stream) {
    auto a = pool_forward_args(device_arrays, "avgpool2d_forward", x_, y_, pool, stride, pad);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    avg_fwd(a.s, a.in.f(), a.out.f(), st);
  }, arg("x"), arg("y"), arg("pool_size"), arg("strides"), arg("padding") = Pair{0, 0}, arg("stream") = py::none(),
     "y = mean over each window's unpadded positions of x (NHWC)");

  m.def("avgpool2d_backward", [=](py::object dy_, py::object dx_, Pair pool, Pair stride, Pair pad, py::object stream) {
    auto a = avgpool2d_backward_args(device_arrays, dy_, dx_, pool, stride, pad);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    avg_bwd(a.s, a.in.f(), a.out.f(), st);
  }, arg("dy"), arg("dx"), arg("pool_size"), arg("strides"), arg("padding") = Pair{0, 0}, arg("stream") = py::none(),
     "dx (overwritten; its shape gives H, W): each dy spread evenly over its window");

  m.def("global_avgpool2d_forward", [=](py::object x_, py::object y_, py::object stream) {
    auto a = global_avgpool2d_forward_args(device_arrays, x_, y_);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    gap_fwd(a.in.dim(0), a.in.dim(1) * a.in.dim(2), a.in.dim(3), a.in.f(), a.out.f(), st);
  }, arg("x"), arg("y"), arg("stream") = py::none(), "y (N, C) = mean of x (N, H, W, C) over H and W");

  m.def("global_avgpool2d_backward", [=](py::object dy_, py::object dx_, py::object stream) {
    auto a = global_avgpool2d_backward_args(device_arrays, dy_, dx_);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    gap_bwd(a.out.dim(0), a.out.dim(1) * a.out.dim(2), a.out.dim(3), a.in.f(), a.out.f(), st);
  }, arg("dy"), arg("dx"), arg("stream") = py::none(), "dx (N, H, W, C, overwritten) = dy / (H*W) broadcast over H and W");
}

static kilnet::bind::RegisterCudaFamily reg_pool2d(&cuda_bind_pool2d);
