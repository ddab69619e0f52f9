// bind_gelu.cpp — Python bindings of the GELU kernels (exact and tanh-approximate).
#include <pybind11/pybind11.h>
#include "args_elementwise.h"
#include "kilnet/gelu.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_gelu(py::module_& m, bool ref) {
  const auto fwd = ref ? &cpu::gelu_forward_ref : &cpu::gelu_forward;
  const auto bwd = ref ? &cpu::gelu_backward_ref : &cpu::gelu_backward;
  m.def("gelu_forward", [=](py::object x_, py::object y_, bool approximate) {
    auto a = map_args(host_arrays, "gelu_forward", x_, y_);
    KernelCall nogil;
    fwd(a.x.size, a.x.f(), a.y.f(), approximate);
  }, arg("x"), arg("y"), arg("approximate") = false,
     "y = x/2 (1 + erf(x/sqrt 2)), or the tanh form with approximate=True; y may be x");
  m.def("gelu_backward", [=](py::object x_, py::object dy_, py::object dx_, bool approximate) {
    auto a = grad_args(host_arrays, "gelu_backward", "x", x_, dy_, dx_);
    KernelCall nogil;
    bwd(a.saved.size, a.saved.f(), a.dy.f(), a.dx.f(), approximate);
  }, arg("x"), arg("dy"), arg("dx"), arg("approximate") = false,
     "dx = gelu'(x) * dy from the forward INPUT x; dx may be dy");
}
