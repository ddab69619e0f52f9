// args_optim.h — the argument checks of the optimizer updates (flat parameter buffers), shared by
// kilnet._cpu (bind_optim.cpp) and kilnet._cuda (cuda_bind_optim.cpp).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include "checks.h"

namespace kilnet::bind {

// The state buffer `name`: float32, the shape of param.
inline Arr state_arg(const Arrays& A, const char* fn, const char* name, py::handle h, const Arr& p) {
  Arr a = A.out_f32(fn, name, h, -1);
  expect_shape(fn, name, a, p.shape);
  return a;
}

inline void check_rate(const char* fn, const char* name, float v) {
  if (!(v >= 0.f && v < 1.f))
    fail_value(std::string(fn) + ": " + name + " must be in [0, 1), got " + std::to_string(v));
}

inline void check_nonneg(const char* fn, const char* name, float v) {
  if (!(std::isfinite(v) && v >= 0.f))
    fail_value(std::string(fn) + ": " + name + " must be finite and >= 0, got " + std::to_string(v));
}

// One update's buffers: param and grad, and up to three state buffers (nullptr when None).
struct UpdateArgs {
  Arr p, g, s1, s2, s3;
  float* s1p = nullptr;
  float* s2p = nullptr;
  float* s3p = nullptr;
};

// param (written) and grad (read), of one shape.
inline UpdateArgs param_grad(const Arrays& A, const char* fn, const py::object& p_, const py::object& g_) {
  UpdateArgs a;
  a.p = A.out_f32(fn, "param", p_, -1); a.g = A.in_f32(fn, "grad", g_, -1);
  expect_shape(fn, "grad", a.g, a.p.shape);
  return a;
}

inline UpdateArgs sgd_args(const Arrays& A, const py::object& p_, const py::object& g_, const py::object& v_,
                           float momentum) {
  const char* fn = "sgd_update";
  UpdateArgs a = param_grad(A, fn, p_, g_);
  no_alias(fn, "param", a.p, "grad", a.g);
  if (!v_.is_none()) {   // s1: velocity
    a.s1 = A.out_f32(fn, "velocity", v_, -1);
    expect_shape(fn, "velocity", a.s1, a.p.shape);
    no_alias(fn, "velocity", a.s1, "param", a.p); no_alias(fn, "velocity", a.s1, "grad", a.g);
    a.s1p = a.s1.f();
  } else if (momentum != 0.f) {
    fail_value("sgd_update: momentum != 0 needs a 'velocity' buffer");
  }
  return a;
}

inline UpdateArgs adam_args(const Arrays& A, const py::object& p_, const py::object& g_, const py::object& m_,
                            const py::object& v_, index_t step) {
  const char* fn = "adam_update";
  UpdateArgs a = param_grad(A, fn, p_, g_);   // s1: m, s2: v
  a.s1 = A.out_f32(fn, "m", m_, -1); a.s2 = A.out_f32(fn, "v", v_, -1);
  expect_shape(fn, "m", a.s1, a.p.shape); expect_shape(fn, "v", a.s2, a.p.shape);
  no_alias(fn, "param", a.p, "grad", a.g); no_alias(fn, "m", a.s1, "param", a.p); no_alias(fn, "v", a.s2, "param", a.p);
  no_alias(fn, "m", a.s1, "v", a.s2); no_alias(fn, "m", a.s1, "grad", a.g); no_alias(fn, "v", a.s2, "grad", a.g);
  if (step < 1) fail_value("adam_update: step counts from 1, got " + std::to_string(step));
  a.s1p = a.s1.f(); a.s2p = a.s2.f();
  return a;
}

inline UpdateArgs rmsprop_args(const Arrays& A, const py::object& p_, const py::object& g_, const py::object& v_,
                               const py::object& a_, const py::object& mom_, float rho, float momentum,
                               float eps, float wd) {
  const char* fn = "rmsprop_update";
  UpdateArgs a = param_grad(A, fn, p_, g_);   // s1: velocity, s2: average_gradient, s3: momentums
  a.s1 = state_arg(A, fn, "velocity", v_, a.p);
  a.s1p = a.s1.f();
  if (!a_.is_none()) { a.s2 = state_arg(A, fn, "average_gradient", a_, a.p); a.s2p = a.s2.f(); }
  if (!mom_.is_none()) { a.s3 = state_arg(A, fn, "momentums", mom_, a.p); a.s3p = a.s3.f(); }
  check_rate(fn, "rho", rho); check_rate(fn, "momentum", momentum);
  check_nonneg(fn, "eps", eps); check_nonneg(fn, "weight_decay", wd);
  if (momentum > 0.f && !a.s3p) fail_value("rmsprop_update: momentum > 0 needs a 'momentums' buffer");
  if (momentum == 0.f) a.s3p = nullptr;   // Keras: no momentum state without momentum
  outputs_apart(fn, {{"param", &a.p}, {"velocity", &a.s1}, {"average_gradient", a.s2p ? &a.s2 : nullptr},
                     {"momentums", a.s3p ? &a.s3 : nullptr}},
                {{"grad", &a.g}});
  return a;
}

inline UpdateArgs adagrad_args(const Arrays& A, const py::object& p_, const py::object& g_, const py::object& acc_,
                               float eps, float wd) {
  const char* fn = "adagrad_update";
  UpdateArgs a = param_grad(A, fn, p_, g_);   // s1: accumulator
  a.s1 = state_arg(A, fn, "accumulator", acc_, a.p);
  check_nonneg(fn, "eps", eps); check_nonneg(fn, "weight_decay", wd);
  outputs_apart(fn, {{"param", &a.p}, {"accumulator", &a.s1}}, {{"grad", &a.g}});
  a.s1p = a.s1.f();
  return a;
}

inline UpdateArgs adamw_args(const Arrays& A, const py::object& p_, const py::object& g_, const py::object& m_,
                             const py::object& v_, float b1, float b2, float eps, float wd, index_t step) {
  const char* fn = "adamw_update";
  UpdateArgs a = param_grad(A, fn, p_, g_);   // s1: m, s2: v
  a.s1 = state_arg(A, fn, "m", m_, a.p); a.s2 = state_arg(A, fn, "v", v_, a.p);
  check_rate(fn, "beta1", b1); check_rate(fn, "beta2", b2);
  check_nonneg(fn, "eps", eps); check_nonneg(fn, "weight_decay", wd);
  if (step < 1) fail_value("adamw_update: step counts from 1, got " + std::to_string(step));
  outputs_apart(fn, {{"param", &a.p}, {"m", &a.s1}, {"v", &a.s2}}, {{"grad", &a.g}});
  a.s1p = a.s1.f(); a.s2p = a.s2.f();
  return a;
}

inline Arr clip_by_value_args(const Arrays& A, const py::object& g_, float clipvalue) {
  Arr g = A.out_f32("clip_by_value", "grad", g_, -1);
  if (!(clipvalue > 0.f)) fail_value("clip_by_value: clipvalue must be > 0, got " + std::to_string(clipvalue));
  return g;
}

struct ClipNormArgs {
  Arr g, off;                  // off: the segment offsets, host int64 (small metadata on both devices)
  index_t nseg = 0;
};

// offsets_host: a numpy array (the CUDA binding converts lists and CuPy arrays first).
inline ClipNormArgs clip_by_norm_args(const Arrays& A, const py::object& g_, const py::object& offsets_host,
                                      float clipnorm) {
  const char* fn = "clip_by_norm";
  ClipNormArgs a;
  a.g = A.out_f32(fn, "grad", g_, -1);
  a.off = array_arg(fn, "offsets", offsets_host, 'l', 1, false);
  if (!(clipnorm > 0.f)) fail_value("clip_by_norm: clipnorm must be > 0, got " + std::to_string(clipnorm));
  a.nseg = a.off.size - 1;
  const std::int64_t* o = a.off.i64();
  if (a.nseg < 1 || o[0] != 0 || o[a.nseg] != a.g.size)
    fail_value("clip_by_norm: offsets must start at 0 and end at grad.size (" + std::to_string(a.g.size) +
               ") with at least 2 entries, got " + std::to_string(a.off.size) + " entries");
  for (index_t k = 0; k < a.nseg; ++k)
    if (o[k + 1] < o[k]) fail_value("clip_by_norm: offsets must be non-decreasing");
  return a;
}

struct PenaltyArgs {
  Arr w, dw;
  float* dwp = nullptr;   // dw, or nullptr for None
};

inline PenaltyArgs l1l2_penalty_args(const Arrays& A, const py::object& w_, const py::object& dw_, float l1, float l2) {
  const char* fn = "l1l2_penalty";
  PenaltyArgs a;
  a.w = A.in_f32(fn, "w", w_, -1);
  check_nonneg(fn, "l1", l1); check_nonneg(fn, "l2", l2);
  if (!dw_.is_none()) {
    a.dw = A.out_f32(fn, "dw", dw_, -1);
    expect_shape(fn, "dw", a.dw, a.w.shape);
    no_alias(fn, "dw", a.dw, "w", a.w);
    a.dwp = a.dw.f();
  }
  return a;
}

}  // namespace kilnet::bind
