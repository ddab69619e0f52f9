// bind_optim.cpp — Python bindings of the optimizer updates over flat buffers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "args_optim.h"
#include "kilnet/optim.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_optim(py::module_& m, bool ref) {
  const auto sgd = ref ? &cpu::sgd_update_ref : &cpu::sgd_update;
  const auto adam = ref ? &cpu::adam_update_ref : &cpu::adam_update;
  m.def("sgd_update", [=](py::object p_, py::object g_, py::object v_, float lr, float momentum, bool nesterov) {
    auto a = sgd_args(host_arrays, p_, g_, v_, momentum);
    KernelCall nogil;
    sgd(a.p.size, a.p.f(), a.g.f(), a.s1p, lr, momentum, nesterov);
  }, arg("param"), arg("grad"), arg("velocity"), arg("lr"), arg("momentum") = 0.0f, arg("nesterov") = false);

  m.def("adam_update", [=](py::object p_, py::object g_, py::object m_, py::object v_, float lr,
                           float b1, float b2, float eps, index_t step) {
    auto a = adam_args(host_arrays, p_, g_, m_, v_, step);
    KernelCall nogil;
    adam(a.p.size, a.p.f(), a.g.f(), a.s1p, a.s2p, lr, b1, b2, eps, step);
  }, arg("param"), arg("grad"), arg("m"), arg("v"), arg("lr"), arg("beta1") = 0.9f,
     arg("beta2") = 0.999f, arg("eps") = 1e-7f, arg("step") = 1);

  // ---- issue 8: RMSprop, Adagrad, AdamW, clipping, L1/L2 penalties --------------------------
  const auto rmsprop = ref ? &cpu::rmsprop_update_ref : &cpu::rmsprop_update;
  const auto adagrad = ref ? &cpu::adagrad_update_ref : &cpu::adagrad_update;
  const auto adamw = ref ? &cpu::adamw_update_ref : &cpu::adamw_update;
  const auto clip_value = ref ? &cpu::clip_by_value_ref : &cpu::clip_by_value;
  const auto clip_norm = ref ? &cpu::clip_by_norm_ref : &cpu::clip_by_norm;
  const auto penalty = ref ? &cpu::l1l2_penalty_ref : &cpu::l1l2_penalty;

  m.def("rmsprop_update", [=](py::object p_, py::object g_, py::object v_, py::object a_, py::object mom_,
                              float lr, float rho, float momentum, float eps, float wd) {
    auto a = rmsprop_args(host_arrays, p_, g_, v_, a_, mom_, rho, momentum, eps, wd);
    KernelCall nogil;
    rmsprop(a.p.size, a.p.f(), a.g.f(), a.s1p, a.s2p, a.s3p, lr, rho, momentum, eps, wd);
  }, arg("param"), arg("grad"), arg("velocity"), arg("average_gradient"), arg("momentums"), arg("lr"),
     arg("rho") = 0.9f, arg("momentum") = 0.0f, arg("eps") = 1e-7f, arg("weight_decay") = 0.0f,
     "Keras RMSprop step; average_gradient (centered) and momentums (momentum > 0) may be None");

  m.def("adagrad_update", [=](py::object p_, py::object g_, py::object acc_, float lr, float eps, float wd) {
    auto a = adagrad_args(host_arrays, p_, g_, acc_, eps, wd);
    KernelCall nogil;
    adagrad(a.p.size, a.p.f(), a.g.f(), a.s1p, lr, eps, wd);
  }, arg("param"), arg("grad"), arg("accumulator"), arg("lr"), arg("eps") = 1e-7f,
     arg("weight_decay") = 0.0f, "Keras Adagrad step: acc += g^2; p -= lr*g/sqrt(acc + eps)");

  m.def("adamw_update", [=](py::object p_, py::object g_, py::object m_, py::object v_, float lr,
                            float b1, float b2, float eps, float wd, index_t step) {
    auto a = adamw_args(host_arrays, p_, g_, m_, v_, b1, b2, eps, wd, step);
    KernelCall nogil;
    adamw(a.p.size, a.p.f(), a.g.f(), a.s1p, a.s2p, lr, b1, b2, eps, wd, step);
  }, arg("param"), arg("grad"), arg("m"), arg("v"), arg("lr"), arg("beta1") = 0.9f,
     arg("beta2") = 0.999f, arg("eps") = 1e-7f, arg("weight_decay") = 0.004f, arg("step") = 1,
     "p -= p*weight_decay*lr, then the Keras Adam step");

  m.def("clip_by_value", [=](py::object g_, float clipvalue) {
    Arr g = clip_by_value_args(host_arrays, g_, clipvalue);
    KernelCall nogil;
    clip_value(g.size, g.f(), clipvalue);
  }, arg("grad"), arg("clipvalue"), "grad = clamp(grad, -clipvalue, clipvalue), in place");

  m.def("clip_by_norm", [=](py::object g_, py::object off_, float clipnorm) {
    auto a = clip_by_norm_args(host_arrays, g_, off_, clipnorm);
    KernelCall nogil;
    clip_norm(a.nseg, a.off.i64(), a.g.f(), clipnorm);
  }, arg("grad"), arg("offsets"), arg("clipnorm"),
     "in place: each segment grad[offsets[k]:offsets[k+1]] scaled by clipnorm/max(norm, clipnorm)");

  m.def("l1l2_penalty", [=](py::object w_, py::object dw_, float l1, float l2) {
    auto a = l1l2_penalty_args(host_arrays, w_, dw_, l1, l2);
    KernelCall nogil;
    return penalty(a.w.size, a.w.f(), l1, l2, a.dwp);
  }, arg("w"), arg("dw"), arg("l1") = 0.0f, arg("l2") = 0.0f,
     "returns l1*sum|w| + l2*sum w^2; dw += l1*sign(w) + 2*l2*w (dw may be None)");
}
