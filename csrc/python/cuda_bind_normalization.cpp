// cuda_bind_normalization.cpp — kilnet._cuda bindings of batch normalization (channel axis
// last): the same names, arguments and checks as bind_normalization.cpp, on CuPy arrays, plus
// `stream`.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <cmath>
#include <string>
#include <tuple>
#include "cuda_checks.h"
#include "kilnet/normalization.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

namespace {

// An optional per-channel vector: None, or float32 of shape (C,).
const Arr* optional_vec(const char* fn, const char* name, py::object h, index_t C, Arr& store,
                        bool writable) {
  if (h.is_none()) return nullptr;
  store = writable ? dout_f32(fn, name, h, 1) : din_f32(fn, name, h, 1);
  expect_shape(fn, name, store, {C});
  return &store;
}

float* ptr(const Arr* a) { return a ? a->f() : nullptr; }   // None -> nullptr

}  // namespace

static void cuda_bind_normalization(py::module_& m) {
  const auto fwd = &cuda::batchnorm_forward;
  const auto bwd = &cuda::batchnorm_backward;

  m.def("batchnorm_forward", [=](py::object x_, py::object gamma_, py::object beta_, py::object mm_,
                                 py::object mv_, py::object mean_, py::object invstd_, py::object y_,
                                 float momentum, float eps, bool training, py::object stream) {
    const char* fn = "batchnorm_forward";
    Arr x = din_f32(fn, "x", x_), y = dout_f32(fn, "y", y_);
    auto [M, C] = rows_cols(fn, x);
    expect_shape(fn, "y", y, x.shape);
    Arr g, b, mm, mv, mean, invstd;
    const Arr* gp = optional_vec(fn, "gamma", gamma_, C, g, false);
    const Arr* bp = optional_vec(fn, "beta", beta_, C, b, false);
    for (auto [name, h, a] : {std::tuple<const char*, py::object*, Arr*>{"moving_mean", &mm_, &mm},
                              {"moving_var", &mv_, &mv}, {"mean", &mean_, &mean}, {"invstd", &invstd_, &invstd}}) {
      *a = dout_f32(fn, name, *h, 1);
      expect_shape(fn, name, *a, {C});
    }
    if (!std::isfinite(eps) || eps < 0.f)
      fail_value(std::string(fn) + ": eps must be finite and >= 0, got " + std::to_string(eps));
    if (!(momentum >= 0.f && momentum <= 1.f))
      fail_value(std::string(fn) + ": momentum must be in [0, 1], got " + std::to_string(momentum));
    outputs_apart(fn, {{"y", &y}, {"moving_mean", &mm}, {"moving_var", &mv}, {"mean", &mean}, {"invstd", &invstd}},
                  {{"x", &x}, {"gamma", gp}, {"beta", bp}});
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    fwd(M, C, x.f(), ptr(gp), ptr(bp), mm.f(), mv.f(), momentum, eps, training, mean.f(), invstd.f(), y.f(), st);
  }, arg("x"), arg("gamma"), arg("beta"), arg("moving_mean"), arg("moving_var"), arg("mean"),
     arg("invstd"), arg("y"), arg("momentum") = 0.99f, arg("eps") = 1e-3f, arg("training") = true, arg("stream") = py::none(),
     "y = gamma*(x - mean)*invstd + beta over the last axis of x; training: batch statistics, "
     "moving_mean/moving_var updated in place; inference: the moving statistics. Writes mean "
     "and invstd (for the backward pass). gamma/beta may be None (1 and 0).");

  m.def("batchnorm_backward", [=](py::object x_, py::object dy_, py::object gamma_, py::object mean_,
                                  py::object invstd_, py::object dx_, py::object dgamma_,
                                  py::object dbeta_, bool batch_stats, py::object stream) {
    const char* fn = "batchnorm_backward";
    Arr x = din_f32(fn, "x", x_), dy = din_f32(fn, "dy", dy_);
    auto [M, C] = rows_cols(fn, x);
    expect_shape(fn, "dy", dy, x.shape);
    Arr g, mean, invstd, dx, dg, db;
    const Arr* gp = optional_vec(fn, "gamma", gamma_, C, g, false);
    mean = din_f32(fn, "mean", mean_, 1); expect_shape(fn, "mean", mean, {C});
    invstd = din_f32(fn, "invstd", invstd_, 1); expect_shape(fn, "invstd", invstd, {C});
    const Arr* dgp = optional_vec(fn, "dgamma", dgamma_, C, dg, true);
    const Arr* dbp = optional_vec(fn, "dbeta", dbeta_, C, db, true);
    const Arr* dxp = nullptr;
    if (!dx_.is_none()) { dx = dout_f32(fn, "dx", dx_); expect_shape(fn, "dx", dx, x.shape); dxp = &dx; }
    outputs_apart(fn, {{"dx", dxp}, {"dgamma", dgp}, {"dbeta", dbp}},
                  {{"x", &x}, {"dy", &dy}, {"gamma", gp}, {"mean", &mean}, {"invstd", &invstd}});
    void* st = stream_arg(stream);
    py::gil_scoped_release nogil;
    bwd(M, C, x.f(), dy.f(), ptr(gp), mean.f(), invstd.f(), batch_stats, ptr(dxp), ptr(dgp), ptr(dbp), st);
  }, arg("x"), arg("dy"), arg("gamma"), arg("mean"), arg("invstd"), arg("dx"), arg("dgamma"),
     arg("dbeta"), arg("batch_stats") = true, arg("stream") = py::none(),
     "dx (overwritten; None to skip), dgamma += sum dy*xhat, dbeta += sum dy (None to skip); "
     "batch_stats: the forward used batch statistics (training mode)");
}

static kilnet::bind::RegisterCudaFamily reg_normalization(&cuda_bind_normalization);
