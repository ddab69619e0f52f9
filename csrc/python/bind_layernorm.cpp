// bind_layernorm.cpp — Python bindings of layer normalization (over the last axis).
#include <pybind11/pybind11.h>
#include "args_layernorm.h"
#include "kilnet/layernorm.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_layernorm(py::module_& m, bool ref) {
  const auto fwd = ref ? &cpu::layernorm_forward_ref : &cpu::layernorm_forward;
  const auto bwd = ref ? &cpu::layernorm_backward_ref : &cpu::layernorm_backward;

  m.def("layernorm_forward", [=](py::object x_, py::object gamma_, py::object beta_, py::object mean_,
                                 py::object invstd_, py::object y_, float eps, bool rms) {
    auto a = layernorm_forward_args(host_arrays, x_, gamma_, beta_, mean_, invstd_, y_, eps);
    KernelCall nogil;
    fwd(a.M, a.C, a.x.f(), a.gp, a.bp, eps, rms, a.mean.f(), a.invstd.f(), a.y.f());
  }, arg("x"), arg("gamma"), arg("beta"), arg("mean"), arg("invstd"), arg("y"), arg("eps") = 1e-3f,
     arg("rms") = false,
     "y = gamma*(x - mean)*invstd + beta over the last axis of x (each row); writes the rows' mean "
     "and invstd (shape (rows,)) for the backward pass. gamma/beta may be None (1 and 0). rms: "
     "Keras's rms_scaling, y = gamma*x*invstd.");

  m.def("layernorm_backward", [=](py::object x_, py::object dy_, py::object gamma_, py::object mean_,
                                  py::object invstd_, py::object dx_, py::object dgamma_, py::object dbeta_,
                                  bool rms) {
    auto a = layernorm_backward_args(host_arrays, x_, dy_, gamma_, mean_, invstd_, dx_, dgamma_, dbeta_);
    KernelCall nogil;
    bwd(a.M, a.C, a.x.f(), a.dy.f(), a.gp, a.mean.f(), a.invstd.f(), rms, a.dxp, a.dgp, a.dbp);
  }, arg("x"), arg("dy"), arg("gamma"), arg("mean"), arg("invstd"), arg("dx"), arg("dgamma"), arg("dbeta"),
     arg("rms") = false,
     "dx (overwritten; None to skip), dgamma += sum dy*xhat, dbeta += sum dy (None to skip); the "
     "column sums are deterministic at any thread count");
}
