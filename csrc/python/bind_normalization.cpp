// bind_normalization.cpp — Python bindings of batch normalization (channel axis last).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "args_normalization.h"
#include "kilnet/normalization.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_normalization(py::module_& m, bool ref) {
  const auto fwd = ref ? &cpu::batchnorm_forward_ref : &cpu::batchnorm_forward;
  const auto bwd = ref ? &cpu::batchnorm_backward_ref : &cpu::batchnorm_backward;

  m.def("batchnorm_forward", [=](py::object x_, py::object gamma_, py::object beta_, py::object mm_,
                                 py::object mv_, py::object mean_, py::object invstd_, py::object y_,
                                 float momentum, float eps, bool training) {
    auto a = batchnorm_forward_args(host_arrays, x_, gamma_, beta_, mm_, mv_, mean_, invstd_, y_, momentum, eps);
    KernelCall nogil;
    fwd(a.M, a.C, a.x.f(), a.gp, a.bp, a.mm.f(), a.mv.f(), momentum, eps, training, a.mean.f(), a.invstd.f(), a.y.f());
  }, arg("x"), arg("gamma"), arg("beta"), arg("moving_mean"), arg("moving_var"), arg("mean"),
     arg("invstd"), arg("y"), arg("momentum") = 0.99f, arg("eps") = 1e-3f, arg("training") = true,
     "y = gamma*(x - mean)*invstd + beta over the last axis of x; training: batch statistics, "
     "moving_mean/moving_var updated in place; inference: the moving statistics. Writes mean "
     "and invstd (for the backward pass). gamma/beta may be None (1 and 0).");

  m.def("batchnorm_backward", [=](py::object x_, py::object dy_, py::object gamma_, py::object mean_,
                                  py::object invstd_, py::object dx_, py::object dgamma_,
                                  py::object dbeta_, bool batch_stats) {
    auto a = batchnorm_backward_args(host_arrays, x_, dy_, gamma_, mean_, invstd_, dx_, dgamma_, dbeta_);
    KernelCall nogil;
    bwd(a.M, a.C, a.x.f(), a.dy.f(), a.gp, a.mean.f(), a.invstd.f(), batch_stats, a.dxp, a.dgp, a.dbp);
  }, arg("x"), arg("dy"), arg("gamma"), arg("mean"), arg("invstd"), arg("dx"), arg("dgamma"),
     arg("dbeta"), arg("batch_stats") = true,
     "dx (overwritten; None to skip), dgamma += sum dy*xhat, dbeta += sum dy (None to skip); "
     "batch_stats: the forward used batch statistics (training mode)");
}
