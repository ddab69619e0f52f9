// bind_dropout.cpp — Python bindings of inverted dropout.
#include <pybind11/pybind11.h>
#include <cmath>
#include <cstdint>
#include <string>
#include "checks.h"
#include "kilnet/dropout.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_dropout(py::module_& m, bool ref) {
  const auto fwd = ref ? &cpu::dropout_forward_ref : &cpu::dropout_forward;
  const auto bwd = ref ? &cpu::dropout_backward_ref : &cpu::dropout_backward;

  m.def("dropout_forward", [=](py::object x_, py::object mask_, py::object y_, double rate,
                               std::uint64_t seed) {
    const char* fn = "dropout_forward";
    Arr x = in_f32(fn, "x", x_), mask = out_f32(fn, "mask", mask_), y = out_f32(fn, "y", y_);
    expect_shape(fn, "mask", mask, x.shape); expect_shape(fn, "y", y, x.shape);
    if (!(rate >= 0.0 && rate < 1.0))
      fail_value(std::string(fn) + ": rate must be in [0, 1), got " + std::to_string(rate));
    no_alias(fn, "mask", mask, "x", x); no_alias(fn, "mask", mask, "y", y);
    if (y.data != x.data) no_alias(fn, "y", y, "x", x);   // exactly in place is fine
    py::gil_scoped_release nogil;
    fwd(x.size, x.f(), rate, seed, mask.f(), y.f());
  }, arg("x"), arg("mask"), arg("y"), arg("rate"), arg("seed"),
     "mask = (u(seed, i) >= rate) / (1 - rate), y = x * mask; y may be x itself");

  m.def("dropout_backward", [=](py::object mask_, py::object dy_, py::object dx_) {
    const char* fn = "dropout_backward";
    Arr mask = in_f32(fn, "mask", mask_), dy = in_f32(fn, "dy", dy_), dx = out_f32(fn, "dx", dx_);
    expect_shape(fn, "dy", dy, mask.shape); expect_shape(fn, "dx", dx, mask.shape);
    no_alias(fn, "dx", dx, "mask", mask);
    if (dx.data != dy.data) no_alias(fn, "dx", dx, "dy", dy);
    py::gil_scoped_release nogil;
    bwd(mask.size, mask.f(), dy.f(), dx.f());
  }, arg("mask"), arg("dy"), arg("dx"), "dx = dy * mask; dx may be dy itself");
}
