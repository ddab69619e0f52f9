// cuda_bind_layernorm.cpp — kilnet._cuda bindings of layer normalization (last axis): the same
// names, arguments and checks as bind_layernorm.cpp, on CuPy arrays, plus `stream`.
#include <pybind11/pybind11.h>
#include "args_layernorm.h"
#include "cuda_checks.h"
#include "kilnet/layernorm.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

static void cuda_bind_layernorm(py::module_& m) {
  m.def("layernorm_forward", [](py::object x_, py::object gamma_, py::object beta_, py::object mean_,
                                py::object invstd_, py::object y_, float eps, bool rms, py::object stream) {
    auto a = layernorm_forward_args(device_arrays, x_, gamma_, beta_, mean_, invstd_, y_, eps);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::layernorm_forward(a.M, a.C, a.x.f(), a.gp, a.bp, eps, rms, a.mean.f(), a.invstd.f(), a.y.f(), st);
  }, arg("x"), arg("gamma"), arg("beta"), arg("mean"), arg("invstd"), arg("y"), arg("eps") = 1e-3f,
     arg("rms") = false, arg("stream") = py::none(),
     "y = gamma*(x - mean)*invstd + beta over the last axis of x (each row); writes the rows' mean and invstd");

  m.def("layernorm_backward", [](py::object x_, py::object dy_, py::object gamma_, py::object mean_,
                                 py::object invstd_, py::object dx_, py::object dgamma_, py::object dbeta_,
                                 bool rms, py::object stream) {
    auto a = layernorm_backward_args(device_arrays, x_, dy_, gamma_, mean_, invstd_, dx_, dgamma_, dbeta_);
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::layernorm_backward(a.M, a.C, a.x.f(), a.dy.f(), a.gp, a.mean.f(), a.invstd.f(), rms, a.dxp, a.dgp, a.dbp, st);
  }, arg("x"), arg("dy"), arg("gamma"), arg("mean"), arg("invstd"), arg("dx"), arg("dgamma"), arg("dbeta"),
     arg("rms") = false, arg("stream") = py::none(),
     "dx (overwritten; None to skip), dgamma += sum dy*xhat, dbeta += sum dy (None to skip); deterministic");
}

static kilnet::bind::RegisterCudaFamily reg_layernorm(&cuda_bind_layernorm);
