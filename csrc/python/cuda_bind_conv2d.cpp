// cuda_bind_conv2d.cpp — kilnet._cuda conv2d_forward / conv2d_backward: the CPU binding's
// names, arguments, defaults and checks (args_conv2d.h) on CuPy arrays, plus stream=None.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "args_conv2d.h"
#include "cuda_checks.h"
#include "kilnet/device.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

static void cuda_bind_conv2d(py::module_& m) {
  m.def("conv2d_forward", [](py::object x_, py::object w_, py::object b_, py::object y_,
                             Pair stride, Pair padding, Pair dilation, const std::string& act,
                             py::object stream) {
    auto a = conv2d_forward_args(device_arrays, x_, w_, b_, y_, stride, padding, dilation, act);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::conv2d_forward(a.s, a.x.f(), a.w.f(), a.bp, a.y.f(), a.act, st);
  }, arg("x"), arg("w"), arg("b"), arg("y"), arg("stride") = Pair{1, 1},
     arg("padding") = Pair{0, 0}, arg("dilation") = Pair{1, 1}, arg("act") = "linear",
     arg("stream") = py::none(),
     "y = act(conv2d(x NHWC, w RSCK) + b) on the GPU (implicit GEMM), act one of linear, relu, "
     "sigmoid, tanh applied as y is stored; padding is (top, left); y's shape gives P, Q");

  m.def("conv2d_backward", [](py::object dy_, py::object x_, py::object w_, py::object dx_,
                              py::object dw_, py::object db_, Pair stride, Pair padding, Pair dilation,
                              const std::string& act, py::object y_, py::object stream) {
    auto a = conv2d_backward_args(device_arrays, dy_, x_, w_, dx_, dw_, db_, stride, padding, dilation, act, y_);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::conv2d_backward(a.s, a.dy.f(), a.x.f(), a.w.f(), a.dxp, a.dw.f(), a.dbp, a.act, a.yp, st);
  }, arg("dy"), arg("x"), arg("w"), arg("dx"), arg("dw"), arg("db"), arg("stride") = Pair{1, 1},
     arg("padding") = Pair{0, 0}, arg("dilation") = Pair{1, 1}, arg("act") = "linear",
     arg("y") = py::none(), arg("stream") = py::none(),
     "gradients of y = act(conv2d(x, w) + b) on the GPU given dy, using dz = act'(y) * dy on the "
     "fly (y, the forward output, is required unless act is linear): dx = grad wrt x (overwritten, "
     "None to skip); dw += grad wrt w; db += grad wrt b (None to skip); deterministic");
}

static kilnet::bind::RegisterCudaFamily reg_conv2d(&cuda_bind_conv2d);
