// cuda_bind_activation.cpp — kilnet._cuda activations and softmax: the names and arguments of
// bind_activation.cpp, on CuPy arrays, plus stream=None.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "cuda_checks.h"
#include "kilnet/activation.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

static void cuda_bind_activation(py::module_& m) {
  m.def("activation_forward", [](const std::string& act, py::object x_, py::object y_, py::object stream) {
    const char* fn = "activation_forward";
    Act a = parse_act(act);
    Arr x = din_f32(fn, "x", x_), y = dout_f32(fn, "y", y_);
    expect_shape(fn, "y", y, x.shape);
    if (y.data != x.data) no_alias(fn, "y", y, "x", x);   // exactly in place is fine
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::activation_forward(a, x.size, x.f(), y.f(), s);
  }, arg("act"), arg("x"), arg("y"), arg("stream") = py::none(), "y = act(x); y may be x itself");

  m.def("activation_backward", [](const std::string& act, py::object y_, py::object dy_, py::object dx_,
                                  py::object stream) {
    const char* fn = "activation_backward";
    Act a = parse_act(act);
    Arr y = din_f32(fn, "y", y_), dy = din_f32(fn, "dy", dy_), dx = dout_f32(fn, "dx", dx_);
    expect_shape(fn, "dy", dy, y.shape); expect_shape(fn, "dx", dx, y.shape);
    no_alias(fn, "dx", dx, "y", y);
    if (dx.data != dy.data) no_alias(fn, "dx", dx, "dy", dy);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::activation_backward(a, y.size, y.f(), dy.f(), dx.f(), s);
  }, arg("act"), arg("y"), arg("dy"), arg("dx"), arg("stream") = py::none(),
     "dx = act'(.) * dy from the forward output y; dx may be dy");

  m.def("softmax_forward", [](py::object x_, py::object y_, py::object stream) {
    const char* fn = "softmax_forward";
    Arr x = din_f32(fn, "x", x_), y = dout_f32(fn, "y", y_);
    expect_shape(fn, "y", y, x.shape);
    if (y.data != x.data) no_alias(fn, "y", y, "x", x);
    auto [rows, cols] = rows_cols(fn, x);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::softmax_forward(rows, cols, x.f(), y.f(), s);
  }, arg("x"), arg("y"), arg("stream") = py::none(), "softmax along the last axis");

  m.def("softmax_backward", [](py::object y_, py::object dy_, py::object dx_, py::object stream) {
    const char* fn = "softmax_backward";
    Arr y = din_f32(fn, "y", y_), dy = din_f32(fn, "dy", dy_), dx = dout_f32(fn, "dx", dx_);
    expect_shape(fn, "dy", dy, y.shape); expect_shape(fn, "dx", dx, y.shape);
    no_alias(fn, "dx", dx, "y", y);
    if (dx.data != dy.data) no_alias(fn, "dx", dx, "dy", dy);
    auto [rows, cols] = rows_cols(fn, y);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::softmax_backward(rows, cols, y.f(), dy.f(), dx.f(), s);
  }, arg("y"), arg("dy"), arg("dx"), arg("stream") = py::none());
}

static kilnet::bind::RegisterCudaFamily reg_activation(&cuda_bind_activation);
