// bind_gelu.cpp — Python bindings of the GELU kernels (exact and tanh-approximate).
#include <pybind11/pybind11.h>
#include <cstdint>
#include <vector>
#include "args_elementwise.h"
#include "kilnet/gelu.h"
#include "kilnet/gemm_bf16.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_gelu(py::module_& m, bool ref) {
  const auto fwd = ref ? &cpu::gelu_forward_ref : &cpu::gelu_forward;
  const auto bwd = ref ? &cpu::gelu_backward_ref : &cpu::gelu_backward;
  m.def("gelu_forward", [=](py::object x_, py::object y_, bool approximate) {
    const char* fn = "gelu_forward";
    if (!is_bf16_array(y_)) {
      auto a = map_args(host_arrays, fn, x_, y_);
      KernelCall nogil;
      return fwd(a.x.size, a.x.f(), a.y.f(), approximate);
    }
    Arr y = bf16_arr(fn, "y", y_, -1, true);   // a bfloat16 output
    auto* y16 = static_cast<std::uint16_t*>(y.data);
    if (is_bf16_array(x_)) {   // bfloat16 in and out (y may be x)
      Arr x = bf16_arr(fn, "x", x_, -1, false);
      expect_shape(fn, "y", y, x.shape);
      if (y.data != x.data) no_alias(fn, "y", y, "x", x);
      KernelCall nogil;
      const auto* x16 = static_cast<const std::uint16_t*>(x.data);
      if (!ref) return cpu::gelu_forward_bf16_in(x.size, x16, y16, approximate);
      std::vector<float> t(size_t(x.size));   // the reference: widened, float32, rounded
      cpu::bf16_to_float(x.size, x16, t.data());
      fwd(x.size, t.data(), t.data(), approximate);
      return cpu::float_to_bf16(x.size, t.data(), y16);
    }
    Arr x = in_f32(fn, "x", x_);
    expect_shape(fn, "y", y, x.shape);
    no_alias(fn, "y", y, "x", x);
    KernelCall nogil;
    if (!ref) return cpu::gelu_forward_bf16(x.size, x.f(), y16, approximate);
    std::vector<float> t(size_t(x.size));   // the reference: float32, rounded
    fwd(x.size, x.f(), t.data(), approximate);
    cpu::float_to_bf16(x.size, t.data(), y16);
  }, arg("x"), arg("y"), arg("approximate") = false,
     "y = x/2 (1 + erf(x/sqrt 2)), or the tanh form with approximate=True; y may be x. y may be "
     "bfloat16 (uint16 bits or ml_dtypes.bfloat16): rounded once, from a float32 x or a bfloat16 one "
     "(widened exactly).");
  m.def("gelu_backward", [=](py::object x_, py::object dy_, py::object dx_, bool approximate) {
    const char* fn = "gelu_backward";
    if (is_bf16_array(x_)) {   // a bfloat16 forward input; dy float32, dx float32 or bfloat16
      const bool dx16 = is_bf16_array(dx_);
      Arr x = bf16_arr(fn, "x", x_, -1, false), dy = in_f32(fn, "dy", dy_);
      Arr dx = dx16 ? bf16_arr(fn, "dx", dx_, -1, true) : out_f32(fn, "dx", dx_);
      expect_shape(fn, "dy", dy, x.shape); expect_shape(fn, "dx", dx, x.shape);
      no_alias(fn, "dx", dx, "x", x);
      if (dx16 || dx.data != dy.data) no_alias(fn, "dx", dx, "dy", dy);
      KernelCall nogil;
      const auto* x16 = static_cast<const std::uint16_t*>(x.data);
      auto* d16 = static_cast<std::uint16_t*>(dx.data);
      if (!ref) {
        if (dx16) return cpu::gelu_backward_bf16_xdx(x.size, x16, dy.f(), d16, approximate);
        return cpu::gelu_backward_bf16_x(x.size, x16, dy.f(), dx.f(), approximate);
      }
      std::vector<float> t(size_t(x.size));   // the reference: widened, float32 (rounded for a bfloat16 dx)
      cpu::bf16_to_float(x.size, x16, t.data());
      if (!dx16) return bwd(x.size, t.data(), dy.f(), dx.f(), approximate);
      bwd(x.size, t.data(), dy.f(), t.data(), approximate);
      return cpu::float_to_bf16(x.size, t.data(), d16);
    }
    auto a = grad_args(host_arrays, fn, "x", x_, dy_, dx_);
    KernelCall nogil;
    bwd(a.saved.size, a.saved.f(), a.dy.f(), a.dx.f(), approximate);
  }, arg("x"), arg("dy"), arg("dx"), arg("approximate") = false,
     "dx = gelu'(x) * dy from the forward INPUT x (float32, or bfloat16 widened exactly); dx may be dy. "
     "With a bfloat16 x, dx may be bfloat16 (rounded once).");
}
