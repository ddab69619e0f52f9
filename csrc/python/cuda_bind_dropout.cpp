// cuda_bind_dropout.cpp — kilnet._cuda dropout: the names and arguments of bind_dropout.cpp, on
// CuPy arrays, plus stream=None. The same seed gives the CPU's mask bit for bit.
#include <pybind11/pybind11.h>
#include <cstdint>
#include <string>
#include "cuda_checks.h"
#include "kilnet/dropout.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

static void cuda_bind_dropout(py::module_& m) {
  m.def("dropout_forward", [](py::object x_, py::object mask_, py::object y_, double rate,
                              std::uint64_t seed, py::object stream) {
    const char* fn = "dropout_forward";
    Arr x = din_f32(fn, "x", x_), mask = dout_f32(fn, "mask", mask_), y = dout_f32(fn, "y", y_);
    expect_shape(fn, "mask", mask, x.shape); expect_shape(fn, "y", y, x.shape);
    if (!(rate >= 0.0 && rate < 1.0))
      fail_value(std::string(fn) + ": rate must be in [0, 1), got " + std::to_string(rate));
    no_alias(fn, "mask", mask, "x", x); no_alias(fn, "mask", mask, "y", y);
    if (y.data != x.data) no_alias(fn, "y", y, "x", x);   // exactly in place is fine
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::dropout_forward(x.size, x.f(), rate, seed, mask.f(), y.f(), s);
  }, arg("x"), arg("mask"), arg("y"), arg("rate"), arg("seed"), arg("stream") = py::none(),
     "mask = (u(seed, i) >= rate) / (1 - rate), y = x * mask; y may be x itself");

  m.def("dropout_backward", [](py::object mask_, py::object dy_, py::object dx_, py::object stream) {
    const char* fn = "dropout_backward";
    Arr mask = din_f32(fn, "mask", mask_), dy = din_f32(fn, "dy", dy_), dx = dout_f32(fn, "dx", dx_);
    expect_shape(fn, "dy", dy, mask.shape); expect_shape(fn, "dx", dx, mask.shape);
    no_alias(fn, "dx", dx, "mask", mask);
    if (dx.data != dy.data) no_alias(fn, "dx", dx, "dy", dy);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::dropout_backward(mask.size, mask.f(), dy.f(), dx.f(), s);
  }, arg("mask"), arg("dy"), arg("dx"), arg("stream") = py::none(), "dx = dy * mask; dx may be dy itself");
}

static kilnet::bind::RegisterCudaFamily reg_dropout(&cuda_bind_dropout);
