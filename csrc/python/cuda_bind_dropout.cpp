// cuda_bind_dropout.cpp — kilnet._cuda dropout: the names and arguments of bind_dropout.cpp, on
// CuPy arrays, plus stream=None. The same seed gives the CPU's mask bit for bit.
#include <pybind11/pybind11.h>
#include <cstdint>
#include <string>
#include "args_elementwise.h"
#include "cuda_checks.h"
#include "kilnet/dropout.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

static void cuda_bind_dropout(py::module_& m) {
  m.def("dropout_forward", [](py::object x_, py::object mask_, py::object y_, double rate,
                              std::uint64_t seed, py::object stream) {
    auto a = dropout_forward_args(device_arrays, x_, mask_, y_, rate);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::dropout_forward(a.x.size, a.x.f(), rate, seed, a.mask.f(), a.y.f(), s);
  }, arg("x"), arg("mask"), arg("y"), arg("rate"), arg("seed"), arg("stream") = py::none(),
     "mask = (u(seed, i) >= rate) / (1 - rate), y = x * mask; y may be x itself");

  m.def("dropout_backward", [](py::object mask_, py::object dy_, py::object dx_, py::object stream) {
    auto a = grad_args(device_arrays, "dropout_backward", "mask", mask_, dy_, dx_);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::dropout_backward(a.saved.size, a.saved.f(), a.dy.f(), a.dx.f(), s);
  }, arg("mask"), arg("dy"), arg("dx"), arg("stream") = py::none(), "dx = dy * mask; dx may be dy itself");
}

static kilnet::bind::RegisterCudaFamily reg_dropout(&cuda_bind_dropout);
