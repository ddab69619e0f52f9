// bind_pool2d.cpp — Python bindings of max / average / global average pooling: the checks of
// args_pool2d.h, then the kernel without the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <array>
#include <string>
#include "args_pool2d.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_pool2d(py::module_& m, bool ref) {
  const auto max_fwd = ref ? &cpu::maxpool2d_forward_ref : &cpu::maxpool2d_forward;
  const auto max_bwd = ref ? &cpu::maxpool2d_backward_ref : &cpu::maxpool2d_backward;
  const auto avg_fwd = ref ? &cpu::avgpool2d_forward_ref : &cpu::avgpool2d_forward;
  const auto avg_bwd = ref ? &cpu::avgpool2d_backward_ref : &cpu::avgpool2d_backward;
  const auto gap_fwd = ref ? &cpu::global_avgpool2d_forward_ref : &cpu::global_avgpool2d_forward;
  const auto gap_bwd = ref ? &cpu::global_avgpool2d_backward_ref : &cpu::global_avgpool2d_backward;

  // The geometry rules alone, on shapes (layers check their arguments at build with these).
  m.def("pool2d_check_geometry", [](std::array<index_t, 4> x, std::array<index_t, 4> y, Pair pool, Pair stride,
                                    Pair pad) {
    Arr xa, ya;
    xa.shape.assign(x.begin(), x.end()); ya.shape.assign(y.begin(), y.end());
    pool_shape("pool2d", xa, ya, pool, stride, pad);
  }, arg("x_shape"), arg("y_shape"), arg("pool_size"), arg("strides"), arg("padding"),
     "Raises ValueError when maxpool2d_forward / avgpool2d_forward would refuse these shapes and this geometry");

  m.def("maxpool2d_forward", [=](py::object x_, py::object y_, Pair pool, Pair stride, Pair pad) {
    auto a = pool_forward_args(host_arrays, "maxpool2d_forward", x_, y_, pool, stride, pad);
    KernelCall nogil;
    max_fwd(a.s, a.in.f(), a.out.f());
  }, arg("x"), arg("y"), arg("pool_size"), arg("strides"), arg("padding") = Pair{0, 0},
     "y = max over each window of x (NHWC); padding is (top, left); y's shape gives P, Q");

  m.def("maxpool2d_backward", [=](py::object x_, py::object dy_, py::object dx_, Pair pool,
                                  Pair stride, Pair pad) {
    auto a = maxpool2d_backward_args(host_arrays, x_, dy_, dx_, pool, stride, pad);
    KernelCall nogil;
    max_bwd(a.s, a.in.f(), a.dy.f(), a.out.f());
  }, arg("x"), arg("dy"), arg("dx"), arg("pool_size"), arg("strides"), arg("padding") = Pair{0, 0},
     "dx (overwritten): each dy goes to the first maximum of its window in x");

  m.def("avgpool2d_forward", [=](py::object x_, py::object y_, Pair pool, Pair stride, Pair pad) {
    auto a = pool_forward_args(host_arrays, "avgpool2d_forward", x_, y_, pool, stride, pad);
    KernelCall nogil;
    avg_fwd(a.s, a.in.f(), a.out.f());
  }, arg("x"), arg("y"), arg("pool_size"), arg("strides"), arg("padding") = Pair{0, 0},
     "y = mean over each window's unpadded positions of x (NHWC)");

  m.def("avgpool2d_backward", [=](py::object dy_, py::object dx_, Pair pool, Pair stride, Pair pad) {
    auto a = avgpool2d_backward_args(host_arrays, dy_, dx_, pool, stride, pad);
    KernelCall nogil;
    avg_bwd(a.s, a.in.f(), a.out.f());
  }, arg("dy"), arg("dx"), arg("pool_size"), arg("strides"), arg("padding") = Pair{0, 0},
     "dx (overwritten; its shape gives H, W): each dy spread evenly over its window");

  m.def("global_avgpool2d_forward", [=](py::object x_, py::object y_) {
    auto a = global_avgpool2d_forward_args(host_arrays, x_, y_);
    KernelCall nogil;
    gap_fwd(a.in.dim(0), a.in.dim(1) * a.in.dim(2), a.in.dim(3), a.in.f(), a.out.f());
  }, arg("x"), arg("y"), "y (N, C) = mean of x (N, H, W, C) over H and W");

  m.def("global_avgpool2d_backward", [=](py::object dy_, py::object dx_) {
    auto a = global_avgpool2d_backward_args(host_arrays, dy_, dx_);
    KernelCall nogil;
    gap_bwd(a.out.dim(0), a.out.dim(1) * a.out.dim(2), a.out.dim(3), a.in.f(), a.out.f());
  }, arg("dy"), arg("dx"), "dx (N, H, W, C, overwritten) = dy / (H*W) broadcast over H and W");
}
