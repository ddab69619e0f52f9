// cuda_bind_activation.cpp — kilnet._cuda activations and softmax: the names and arguments of
// bind_activation.cpp, on CuPy arrays, plus stream=None.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "args_elementwise.h"
#include "cuda_checks.h"
#include "kilnet/activation.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

static void cuda_bind_activation(py::module_& m) {
  m.def("activation_forward", [](const std::string& act, py::object x_, py::object y_, py::object stream) {
    const Act act_ = parse_act(act);
    auto a = map_args(device_arrays, "activation_forward", x_, y_);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::activation_forward(act_, a.x.size, a.x.f(), a.y.f(), s);
  }, arg("act"), arg("x"), arg("y"), arg("stream") = py::none(), "y = act(x); y may be x itself");

  m.def("activation_backward", [](const std::string& act, py::object y_, py::object dy_, py::object dx_,
                                  py::object stream) {
    const Act act_ = parse_act(act);
    auto a = grad_args(device_arrays, "activation_backward", "y", y_, dy_, dx_);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::activation_backward(act_, a.saved.size, a.saved.f(), a.dy.f(), a.dx.f(), s);
  }, arg("act"), arg("y"), arg("dy"), arg("dx"), arg("stream") = py::none(),
     "dx = act'(.) * dy from the forward output y; dx may be dy");

  m.def("softmax_forward", [](py::object x_, py::object y_, py::object stream) {
    auto a = map_args(device_arrays, "softmax_forward", x_, y_);
    auto [rows, cols] = rows_cols("softmax_forward", a.x);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::softmax_forward(rows, cols, a.x.f(), a.y.f(), s);
  }, arg("x"), arg("y"), arg("stream") = py::none(), "softmax along the last axis");

  m.def("softmax_backward", [](py::object y_, py::object dy_, py::object dx_, py::object stream) {
    auto a = grad_args(device_arrays, "softmax_backward", "y", y_, dy_, dx_);
    auto [rows, cols] = rows_cols("softmax_backward", a.saved);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::softmax_backward(rows, cols, a.saved.f(), a.dy.f(), a.dx.f(), s);
  }, arg("y"), arg("dy"), arg("dx"), arg("stream") = py::none());
}

static kilnet::bind::RegisterCudaFamily reg_activation(&cuda_bind_activation);
