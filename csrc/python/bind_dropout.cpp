// bind_dropout.cpp — Python bindings of inverted dropout.
#include <pybind11/pybind11.h>
#include <cmath>
#include <cstdint>
#include <string>
#include "args_elementwise.h"
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
    auto a = dropout_forward_args(host_arrays, x_, mask_, y_, rate);
    KernelCall nogil;
    fwd(a.x.size, a.x.f(), rate, seed, a.mask.f(), a.y.f());
  }, arg("x"), arg("mask"), arg("y"), arg("rate"), arg("seed"),
     "mask = (u(seed, i) >= rate) / (1 - rate), y = x * mask; y may be x itself");

  m.def("dropout_backward", [=](py::object mask_, py::object dy_, py::object dx_) {
    auto a = grad_args(host_arrays, "dropout_backward", "mask", mask_, dy_, dx_);
    KernelCall nogil;
    bwd(a.saved.size, a.saved.f(), a.dy.f(), a.dx.f());
  }, arg("mask"), arg("dy"), arg("dx"), "dx = dy * mask; dx may be dy itself");
}
