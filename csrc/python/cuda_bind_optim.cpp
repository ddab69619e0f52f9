// cuda_bind_optim.cpp — kilnet._cuda optimizer updates: the names and arguments of
// bind_optim.cpp, on CuPy arrays, plus stream=None (and out=None for l1l2_penalty).
// clip_by_norm's offsets are small host metadata, as on the CPU: a numpy int64 array (a list or
// any sequence of ints is converted; a CuPy array is copied to the host).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <cmath>
#include <string>
#include "cuda_checks.h"
#include "kilnet/optim.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

namespace {

// The state buffer `name`: float32 on the device, the shape of param.
Arr dstate_arg(const char* fn, const char* name, py::handle h, const Arr& p) {
  Arr a = dout_f32(fn, name, h);
  expect_shape(fn, name, a, p.shape);
  return a;
}

void check_rate(const char* fn, const char* name, float v) {
  if (!(v >= 0.f && v < 1.f))
    fail_value(std::string(fn) + ": " + name + " must be in [0, 1), got " + std::to_string(v));
}

void check_nonneg(const char* fn, const char* name, float v) {
  if (!(std::isfinite(v) && v >= 0.f))
    fail_value(std::string(fn) + ": " + name + " must be finite and >= 0, got " + std::to_string(v));
}

}  // namespace

static void cuda_bind_optim(py::module_& m) {
  m.def("sgd_update", [](py::object p_, py::object g_, py::object v_, float lr, float momentum, bool nesterov,
                         py::object stream) {
    const char* fn = "sgd_update";
    Arr p = dout_f32(fn, "param", p_), g = din_f32(fn, "grad", g_);
    expect_shape(fn, "grad", g, p.shape);
    no_alias(fn, "param", p, "grad", g);
    float* vp = nullptr;
    Arr v;
    if (!v_.is_none()) { v = dout_f32(fn, "velocity", v_); expect_shape(fn, "velocity", v, p.shape); no_alias(fn, "velocity", v, "param", p); no_alias(fn, "velocity", v, "grad", g); vp = v.f(); }
    else if (momentum != 0.f) fail_value("sgd_update: momentum != 0 needs a 'velocity' buffer");
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::sgd_update(p.size, p.f(), g.f(), vp, lr, momentum, nesterov, s);
  }, arg("param"), arg("grad"), arg("velocity"), arg("lr"), arg("momentum") = 0.0f, arg("nesterov") = false,
     arg("stream") = py::none());

  m.def("adam_update", [](py::object p_, py::object g_, py::object m_, py::object v_, float lr,
                          float b1, float b2, float eps, index_t step, py::object stream) {
    const char* fn = "adam_update";
    Arr p = dout_f32(fn, "param", p_), g = din_f32(fn, "grad", g_), mm = dout_f32(fn, "m", m_), v = dout_f32(fn, "v", v_);
    expect_shape(fn, "grad", g, p.shape); expect_shape(fn, "m", mm, p.shape); expect_shape(fn, "v", v, p.shape);
    no_alias(fn, "param", p, "grad", g); no_alias(fn, "m", mm, "param", p); no_alias(fn, "v", v, "param", p);
    no_alias(fn, "m", mm, "v", v); no_alias(fn, "m", mm, "grad", g); no_alias(fn, "v", v, "grad", g);
    if (step < 1) fail_value("adam_update: step counts from 1, got " + std::to_string(step));
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::adam_update(p.size, p.f(), g.f(), mm.f(), v.f(), lr, b1, b2, eps, step, s);
  }, arg("param"), arg("grad"), arg("m"), arg("v"), arg("lr"), arg("beta1") = 0.9f,
     arg("beta2") = 0.999f, arg("eps") = 1e-7f, arg("step") = 1, arg("stream") = py::none());

  m.def("rmsprop_update", [](py::object p_, py::object g_, py::object v_, py::object a_, py::object mom_,
                             float lr, float rho, float momentum, float eps, float wd, py::object stream) {
    const char* fn = "rmsprop_update";
    Arr p = dout_f32(fn, "param", p_), g = din_f32(fn, "grad", g_);
    expect_shape(fn, "grad", g, p.shape);
    Arr v = dstate_arg(fn, "velocity", v_, p), a, mom;
    const Arr* ap = nullptr; const Arr* mp = nullptr;
    if (!a_.is_none()) { a = dstate_arg(fn, "average_gradient", a_, p); ap = &a; }
    if (!mom_.is_none()) { mom = dstate_arg(fn, "momentums", mom_, p); mp = &mom; }
    check_rate(fn, "rho", rho); check_rate(fn, "momentum", momentum);
    check_nonneg(fn, "eps", eps); check_nonneg(fn, "weight_decay", wd);
    if (momentum > 0.f && !mp) fail_value("rmsprop_update: momentum > 0 needs a 'momentums' buffer");
    if (momentum == 0.f) mp = nullptr;   // Keras: no momentum state without momentum
    outputs_apart(fn, {{"param", &p}, {"velocity", &v}, {"average_gradient", ap}, {"momentums", mp}},
                  {{"grad", &g}});
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::rmsprop_update(p.size, p.f(), g.f(), v.f(), ap ? ap->f() : nullptr, mp ? mp->f() : nullptr, lr, rho,
                         momentum, eps, wd, s);
  }, arg("param"), arg("grad"), arg("velocity"), arg("average_gradient"), arg("momentums"), arg("lr"),
     arg("rho") = 0.9f, arg("momentum") = 0.0f, arg("eps") = 1e-7f, arg("weight_decay") = 0.0f,
     arg("stream") = py::none(),
     "Keras RMSprop step; average_gradient (centered) and momentums (momentum > 0) may be None");

  m.def("adagrad_update", [](py::object p_, py::object g_, py::object acc_, float lr, float eps, float wd,
                             py::object stream) {
    const char* fn = "adagrad_update";
    Arr p = dout_f32(fn, "param", p_), g = din_f32(fn, "grad", g_);
    expect_shape(fn, "grad", g, p.shape);
    Arr acc = dstate_arg(fn, "accumulator", acc_, p);
    check_nonneg(fn, "eps", eps); check_nonneg(fn, "weight_decay", wd);
    outputs_apart(fn, {{"param", &p}, {"accumulator", &acc}}, {{"grad", &g}});
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::adagrad_update(p.size, p.f(), g.f(), acc.f(), lr, eps, wd, s);
  }, arg("param"), arg("grad"), arg("accumulator"), arg("lr"), arg("eps") = 1e-7f,
     arg("weight_decay") = 0.0f, arg("stream") = py::none(),
     "Keras Adagrad step: acc += g^2; p -= lr*g/sqrt(acc + eps)");

  m.def("adamw_update", [](py::object p_, py::object g_, py::object m_, py::object v_, float lr,
                           float b1, float b2, float eps, float wd, index_t step, py::object stream) {
    const char* fn = "adamw_update";
    Arr p = dout_f32(fn, "param", p_), g = din_f32(fn, "grad", g_);
    expect_shape(fn, "grad", g, p.shape);
    Arr mm = dstate_arg(fn, "m", m_, p), v = dstate_arg(fn, "v", v_, p);
    check_rate(fn, "beta1", b1); check_rate(fn, "beta2", b2);
    check_nonneg(fn, "eps", eps); check_nonneg(fn, "weight_decay", wd);
    if (step < 1) fail_value("adamw_update: step counts from 1, got " + std::to_string(step));
    outputs_apart(fn, {{"param", &p}, {"m", &mm}, {"v", &v}}, {{"grad", &g}});
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::adamw_update(p.size, p.f(), g.f(), mm.f(), v.f(), lr, b1, b2, eps, wd, step, s);
  }, arg("param"), arg("grad"), arg("m"), arg("v"), arg("lr"), arg("beta1") = 0.9f,
     arg("beta2") = 0.999f, arg("eps") = 1e-7f, arg("weight_decay") = 0.004f, arg("step") = 1,
     arg("stream") = py::none(), "p -= p*weight_decay*lr, then the Keras Adam step");

  m.def("clip_by_value", [](py::object g_, float clipvalue, py::object stream) {
    const char* fn = "clip_by_value";
    Arr g = dout_f32(fn, "grad", g_);
    if (!(clipvalue > 0.f)) fail_value("clip_by_value: clipvalue must be > 0, got " + std::to_string(clipvalue));
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::clip_by_value(g.size, g.f(), clipvalue, s);
  }, arg("grad"), arg("clipvalue"), arg("stream") = py::none(),
     "grad = clamp(grad, -clipvalue, clipvalue), in place");

  m.def("clip_by_norm", [](py::object g_, py::object off_, float clipnorm, py::object stream) {
    const char* fn = "clip_by_norm";
    Arr g = dout_f32(fn, "grad", g_);
    // Host metadata: a numpy int64 array as on the CPU; a list is converted, a CuPy array copied.
    py::object off_host = off_;
    if (py::hasattr(off_, "__cuda_array_interface__")) off_host = off_.attr("get")();
    else if (!py::isinstance<py::array>(off_))
      off_host = py::module_::import("numpy").attr("asarray")(off_, py::arg("dtype") = "int64");
    Arr off = array_arg(fn, "offsets", off_host, 'l', 1, false);
    if (!(clipnorm > 0.f)) fail_value("clip_by_norm: clipnorm must be > 0, got " + std::to_string(clipnorm));
    const index_t nseg = off.size - 1;
    const std::int64_t* o = off.i64();
    if (nseg < 1 || o[0] != 0 || o[nseg] != g.size)
      fail_value("clip_by_norm: offsets must start at 0 and end at grad.size (" + std::to_string(g.size) +
                 ") with at least 2 entries, got " + std::to_string(off.size) + " entries");
    for (index_t k = 0; k < nseg; ++k)
      if (o[k + 1] < o[k]) fail_value("clip_by_norm: offsets must be non-decreasing");
    void* s = stream_arg(stream);
    py::gil_scoped_release nogil;
    cuda::clip_by_norm(nseg, o, g.f(), clipnorm, s);
  }, arg("grad"), arg("offsets"), arg("clipnorm"), arg("stream") = py::none(),
     "in place: each segment grad[offsets[k]:offsets[k+1]] scaled by clipnorm/max(norm, clipnorm)");

  m.def("l1l2_penalty", [](py::object w_, py::object dw_, float l1, float l2, py::object out_,
                           py::object stream) -> py::object {
    const char* fn = "l1l2_penalty";
    Arr w = din_f32(fn, "w", w_), dw, o;
    check_nonneg(fn, "l1", l1); check_nonneg(fn, "l2", l2);
    float* dwp = nullptr;
    if (!dw_.is_none()) {
      dw = dout_f32(fn, "dw", dw_); expect_shape(fn, "dw", dw, w.shape); no_alias(fn, "dw", dw, "w", w);
      dwp = dw.f();
    }
    float* op = nullptr;
    if (!out_.is_none()) {
      o = dout_f32(fn, "out", out_); expect_shape(fn, "out", o, {1});
      no_alias(fn, "out", o, "w", w);
      if (dwp) no_alias(fn, "out", o, "dw", dw);
      op = o.f();
    }
    void* s = stream_arg(stream);
    double v;
    {
      py::gil_scoped_release nogil;
      v = cuda::l1l2_penalty(w.size, w.f(), l1, l2, dwp, op, s);
    }
    if (op) return py::none();
    return py::float_(v);
  }, arg("w"), arg("dw"), arg("l1") = 0.0f, arg("l2") = 0.0f, arg("out") = py::none(), arg("stream") = py::none(),
     "returns l1*sum|w| + l2*sum w^2; dw += l1*sign(w) + 2*l2*w (dw may be None); with out: "
     "written there on the device, returns None");
}

static kilnet::bind::RegisterCudaFamily reg_optim(&cuda_bind_optim);
