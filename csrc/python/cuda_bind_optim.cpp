// cuda_bind_optim.cpp — kilnet._cuda optimizer updates: the names and arguments of
// bind_optim.cpp, on CuPy arrays, plus stream=None (and out=None for l1l2_penalty).
// clip_by_norm's offsets are small host metadata, as on the CPU: a numpy int64 array (a list or
// any sequence of ints is converted; a CuPy array is copied to the host).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "args_optim.h"
#include "cuda_checks.h"
#include "kilnet/optim.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

static void cuda_bind_optim(py::module_& m) {
  m.def("sgd_update", [](py::object p_, py::object g_, py::object v_, float lr, float momentum, bool nesterov, py::object stream) {
    auto a = sgd_args(device_arrays, p_, g_, v_, momentum);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::sgd_update(a.p.size, a.p.f(), a.g.f(), a.s1p, lr, momentum, nesterov, s);
  }, arg("param"), arg("grad"), arg("velocity"), arg("lr"), arg("momentum") = 0.0f, arg("nesterov") = false, arg("stream") = py::none());

  m.def("adam_update", [](py::object p_, py::object g_, py::object m_, py::object v_, float lr,
                           float b1, float b2, float eps, index_t step, py::object stream) {
    auto a = adam_args(device_arrays, p_, g_, m_, v_, step);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::adam_update(a.p.size, a.p.f(), a.g.f(), a.s1p, a.s2p, lr, b1, b2, eps, step, s);
  }, arg("param"), arg("grad"), arg("m"), arg("v"), arg("lr"), arg("beta1") = 0.9f,
     arg("beta2") = 0.999f, arg("eps") = 1e-7f, arg("step") = 1, arg("stream") = py::none());

  m.def("rmsprop_update", [](py::object p_, py::object g_, py::object v_, py::object a_, py::object mom_,
                              float lr, float rho, float momentum, float eps, float wd, py::object stream) {
    auto a = rmsprop_args(device_arrays, p_, g_, v_, a_, mom_, rho, momentum, eps, wd);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::rmsprop_update(a.p.size, a.p.f(), a.g.f(), a.s1p, a.s2p, a.s3p, lr, rho, momentum, eps, wd, s);
  }, arg("param"), arg("grad"), arg("velocity"), arg("average_gradient"), arg("momentums"), arg("lr"),
     arg("rho") = 0.9f, arg("momentum") = 0.0f, arg("eps") = 1e-7f, arg("weight_decay") = 0.0f, arg("stream") = py::none(),
     "Keras RMSprop step; average_gradient (centered) and momentums (momentum > 0) may be None");

  m.def("adagrad_update", [](py::object p_, py::object g_, py::object acc_, float lr, float eps, float wd, py::object stream) {
    auto a = adagrad_args(device_arrays, p_, g_, acc_, eps, wd);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::adagrad_update(a.p.size, a.p.f(), a.g.f(), a.s1p, lr, eps, wd, s);
  }, arg("param"), arg("grad"), arg("accumulator"), arg("lr"), arg("eps") = 1e-7f,
     arg("weight_decay") = 0.0f, arg("stream") = py::none(), "Keras Adagrad step: acc += g^2; p -= lr*g/sqrt(acc + eps)");

  m.def("adamw_update", [](py::object p_, py::object g_, py::object m_, py::object v_, float lr,
                            float b1, float b2, float eps, float wd, index_t step, py::object stream) {
    auto a = adamw_args(device_arrays, p_, g_, m_, v_, b1, b2, eps, wd, step);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::adamw_update(a.p.size, a.p.f(), a.g.f(), a.s1p, a.s2p, lr, b1, b2, eps, wd, step, s);
  }, arg("param"), arg("grad"), arg("m"), arg("v"), arg("lr"), arg("beta1") = 0.9f,
     arg("beta2") = 0.999f, arg("eps") = 1e-7f, arg("weight_decay") = 0.004f, arg("step") = 1, arg("stream") = py::none(),
     "p -= p*weight_decay*lr, then the Keras Adam step");

  m.def("clip_by_value", [](py::object g_, float clipvalue, py::object stream) {
    Arr g = clip_by_value_args(device_arrays, g_, clipvalue);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::clip_by_value(g.size, g.f(), clipvalue, s);
  }, arg("grad"), arg("clipvalue"), arg("stream") = py::none(), "grad = clamp(grad, -clipvalue, clipvalue), in place");

  m.def("clip_by_norm", [](py::object g_, py::object off_, float clipnorm, py::object stream) {
    // Host metadata: a numpy int64 array as on the CPU; a list is converted, a CuPy array copied.
    py::object off_host = off_;
    if (py::hasattr(off_, "__cuda_array_interface__")) off_host = off_.attr("get")();
    else if (!py::isinstance<py::array>(off_))
      off_host = py::module_::import("numpy").attr("asarray")(off_, py::arg("dtype") = "int64");
    auto a = clip_by_norm_args(device_arrays, g_, off_host, clipnorm);
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::clip_by_norm(a.nseg, a.off.i64(), a.g.f(), clipnorm, s);
  }, arg("grad"), arg("offsets"), arg("clipnorm"), arg("stream") = py::none(),
     "in place: each segment grad[offsets[k]:offsets[k+1]] scaled by clipnorm/max(norm, clipnorm)");

  m.def("l1l2_penalty", [](py::object w_, py::object dw_, float l1, float l2, py::object out_,
                           py::object stream) -> py::object {
    const char* fn = "l1l2_penalty";
    auto a = l1l2_penalty_args(device_arrays, w_, dw_, l1, l2);
    Arr o;
    float* op = nullptr;
    if (!out_.is_none()) {
      o = dout_f32(fn, "out", out_); expect_shape(fn, "out", o, {1});
      no_alias(fn, "out", o, "w", a.w);
      if (a.dwp) no_alias(fn, "out", o, "dw", a.dw);
      op = o.f();
    }
    void* s = stream_arg(stream);
    double v;
    {
      py::gil_scoped_release nogil;
      v = cuda::l1l2_penalty(a.w.size, a.w.f(), l1, l2, a.dwp, op, s);
    }
    if (op) return py::none();
    return py::float_(v);
  }, arg("w"), arg("dw"), arg("l1") = 0.0f, arg("l2") = 0.0f, arg("out") = py::none(), arg("stream") = py::none(),
     "returns l1*sum|w| + l2*sum w^2; dw += l1*sign(w) + 2*l2*w (dw may be None); with out: "
     "written there on the device, returns None");
}

static kilnet::bind::RegisterCudaFamily reg_optim(&cuda_bind_optim);
