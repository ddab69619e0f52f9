// bind_layernorm.cpp — Python bindings of layer normalization (over the last axis).
#include <pybind11/pybind11.h>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>
#include "args_layernorm.h"
#include "kilnet/gemm_bf16.h"
#include "kilnet/layernorm.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

namespace {

// x (and the forward's y) may be bfloat16 bits on the host (a mixed-precision layer's input and
// output); every array goes through these, and all but x and y are then required float32.
Arr in_any(const char* fn, const char* name, py::handle h, int ndim) {
  return is_bf16_array(h) ? bf16_arr(fn, name, h, ndim, false) : in_f32(fn, name, h, ndim);
}
Arr out_any(const char* fn, const char* name, py::handle h, int ndim) {
  return is_bf16_array(h) ? bf16_arr(fn, name, h, ndim, true) : out_f32(fn, name, h, ndim);
}
const Arrays host_mixed{&in_any, &out_any, &in_i64, true, &in_ids};

void only_f32(const char* fn, std::initializer_list<std::pair<const char*, const Arr*>> arrays) {
  for (const auto& [name, a] : arrays)
    if (a && a->elem_bytes != 4)
      fail_type(std::string(fn) + ": argument '" + name + "' must be float32 (only x" +
                (std::string(fn) == "layernorm_forward" ? " and y" : "") + " may be bfloat16)");
}

std::vector<float> widened(const Arr& a) {
  std::vector<float> f(size_t(a.size));
  cpu::bf16_to_float(a.size, static_cast<const std::uint16_t*>(a.data), f.data());
  return f;
}

}  // namespace

void kilnet::bind::bind_layernorm(py::module_& m, bool ref) {
  const auto fwd = ref ? &cpu::layernorm_forward_ref : &cpu::layernorm_forward;
  const auto bwd = ref ? &cpu::layernorm_backward_ref : &cpu::layernorm_backward;

  m.def("layernorm_forward", [=](py::object x_, py::object gamma_, py::object beta_, py::object mean_,
                                 py::object invstd_, py::object y_, float eps, bool rms) {
    const char* fn = "layernorm_forward";
    auto a = layernorm_forward_args(host_mixed, x_, gamma_, beta_, mean_, invstd_, y_, eps);
    only_f32(fn, {{"gamma", a.gp ? &a.g : nullptr}, {"beta", a.bp ? &a.b : nullptr}, {"mean", &a.mean},
                  {"invstd", &a.invstd}});
    if (a.x.elem_bytes != a.y.elem_bytes)
      fail_type("layernorm_forward: x and y must both be float32 or both bfloat16");
    KernelCall nogil;
    if (a.x.elem_bytes == 4)
      return fwd(a.M, a.C, a.x.f(), a.gp, a.bp, eps, rms, a.mean.f(), a.invstd.f(), a.y.f());
    auto* x16 = static_cast<const std::uint16_t*>(a.x.data);
    auto* y16 = static_cast<std::uint16_t*>(a.y.data);
    if (!ref) return cpu::layernorm_forward_bf16(a.M, a.C, x16, a.gp, a.bp, eps, rms, a.mean.f(), a.invstd.f(), y16);
    std::vector<float> x = widened(a.x), y(x.size());   // the reference: float32 rows, y rounded
    fwd(a.M, a.C, x.data(), a.gp, a.bp, eps, rms, a.mean.f(), a.invstd.f(), y.data());
    cpu::float_to_bf16(a.y.size, y.data(), y16);
  }, arg("x"), arg("gamma"), arg("beta"), arg("mean"), arg("invstd"), arg("y"), arg("eps") = 1e-3f,
     arg("rms") = false,
     "y = gamma*(x - mean)*invstd + beta over the last axis of x (each row); writes the rows' mean "
     "and invstd (shape (rows,)) for the backward pass. gamma/beta may be None (1 and 0). rms: "
     "Keras's rms_scaling, y = gamma*x*invstd. x and y may both be bfloat16 (uint16 bits or "
     "ml_dtypes.bfloat16): float32 rows inside, y rounded once.");

  m.def("layernorm_backward", [=](py::object x_, py::object dy_, py::object gamma_, py::object mean_,
                                  py::object invstd_, py::object dx_, py::object dgamma_, py::object dbeta_,
                                  bool rms) {
    const char* fn = "layernorm_backward";
    auto a = layernorm_backward_args(host_mixed, x_, dy_, gamma_, mean_, invstd_, dx_, dgamma_, dbeta_);
    only_f32(fn, {{"dy", &a.dy}, {"gamma", a.gp ? &a.g : nullptr}, {"mean", &a.mean}, {"invstd", &a.invstd},
                  {"dx", a.dxp ? &a.dx : nullptr}, {"dgamma", a.dgp ? &a.dg : nullptr},
                  {"dbeta", a.dbp ? &a.db : nullptr}});
    KernelCall nogil;
    if (a.x.elem_bytes == 4)
      return bwd(a.M, a.C, a.x.f(), a.dy.f(), a.gp, a.mean.f(), a.invstd.f(), rms, a.dxp, a.dgp, a.dbp);
    auto* x16 = static_cast<const std::uint16_t*>(a.x.data);
    if (!ref)
      return cpu::layernorm_backward_bf16(a.M, a.C, x16, a.dy.f(), a.gp, a.mean.f(), a.invstd.f(), rms, a.dxp,
                                          a.dgp, a.dbp);
    std::vector<float> x = widened(a.x);
    bwd(a.M, a.C, x.data(), a.dy.f(), a.gp, a.mean.f(), a.invstd.f(), rms, a.dxp, a.dgp, a.dbp);
  }, arg("x"), arg("dy"), arg("gamma"), arg("mean"), arg("invstd"), arg("dx"), arg("dgamma"), arg("dbeta"),
     arg("rms") = false,
     "dx (overwritten; None to skip), dgamma += sum dy*xhat, dbeta += sum dy (None to skip); the "
     "column sums are deterministic at any thread count. x may be bfloat16 (the forward's input); "
     "everything else is float32.");
}
