// args_normalization.h — the argument checks of batchnorm_forward / batchnorm_backward, shared
// by kilnet._cpu (bind_normalization.cpp) and kilnet._cuda (cuda_bind_normalization.cpp).
#pragma once
#include <cmath>
#include <string>
#include <tuple>
#include "checks.h"

namespace kilnet::bind {

// An optional per-channel vector: None (returns nullptr), or float32 of shape (C,).
inline float* optional_vec(const Arrays& A, const char* fn, const char* name, const py::object& h, index_t C,
                           Arr& store, bool writable) {
  if (h.is_none()) return nullptr;
  store = writable ? A.out_f32(fn, name, h, 1) : A.in_f32(fn, name, h, 1);
  expect_shape(fn, name, store, {C});
  return store.f();
}

struct BatchnormForwardArgs {
  index_t M = 0, C = 0;   // rows (all leading axes) and channels (the last axis)
  Arr x, y, g, b, mm, mv, mean, invstd;
  const float* gp = nullptr;   // gamma, or nullptr for None (1)
  const float* bp = nullptr;   // beta, or nullptr for None (0)
};

inline BatchnormForwardArgs batchnorm_forward_args(const Arrays& A, const py::object& x_, const py::object& gamma_,
                                                   const py::object& beta_, const py::object& mm_,
                                                   const py::object& mv_, const py::object& mean_,
                                                   const py::object& invstd_, const py::object& y_,
                                                   float momentum, float eps) {
  const char* fn = "batchnorm_forward";
  BatchnormForwardArgs a;
  a.x = A.in_f32(fn, "x", x_, -1); a.y = A.out_f32(fn, "y", y_, -1);
  std::tie(a.M, a.C) = rows_cols(fn, a.x);
  expect_shape(fn, "y", a.y, a.x.shape);
  a.gp = optional_vec(A, fn, "gamma", gamma_, a.C, a.g, false);
  a.bp = optional_vec(A, fn, "beta", beta_, a.C, a.b, false);
  for (auto [name, h, arr] : {std::tuple<const char*, const py::object*, Arr*>{"moving_mean", &mm_, &a.mm},
                              {"moving_var", &mv_, &a.mv}, {"mean", &mean_, &a.mean}, {"invstd", &invstd_, &a.invstd}}) {
    *arr = A.out_f32(fn, name, *h, 1);
    expect_shape(fn, name, *arr, {a.C});
  }
  if (!std::isfinite(eps) || eps < 0.f)
    fail_value(std::string(fn) + ": eps must be finite and >= 0, got " + std::to_string(eps));
  if (!(momentum >= 0.f && momentum <= 1.f))
    fail_value(std::string(fn) + ": momentum must be in [0, 1], got " + std::to_string(momentum));
  outputs_apart(fn, {{"y", &a.y}, {"moving_mean", &a.mm}, {"moving_var", &a.mv}, {"mean", &a.mean}, {"invstd", &a.invstd}},
                {{"x", &a.x}, {"gamma", a.gp ? &a.g : nullptr}, {"beta", a.bp ? &a.b : nullptr}});
  return a;
}

struct BatchnormBackwardArgs {
  index_t M = 0, C = 0;
  Arr x, dy, g, mean, invstd, dx, dg, db;
  const float* gp = nullptr;   // gamma, or nullptr for None
  float* dxp = nullptr;        // the optional outputs, nullptr for None
  float* dgp = nullptr;
  float* dbp = nullptr;
};

inline BatchnormBackwardArgs batchnorm_backward_args(const Arrays& A, const py::object& x_, const py::object& dy_,
                                                     const py::object& gamma_, const py::object& mean_,
                                                     const py::object& invstd_, const py::object& dx_,
                                                     const py::object& dgamma_, const py::object& dbeta_) {
  const char* fn = "batchnorm_backward";
  BatchnormBackwardArgs a;
  a.x = A.in_f32(fn, "x", x_, -1); a.dy = A.in_f32(fn, "dy", dy_, -1);
  std::tie(a.M, a.C) = rows_cols(fn, a.x);
  expect_shape(fn, "dy", a.dy, a.x.shape);
  a.gp = optional_vec(A, fn, "gamma", gamma_, a.C, a.g, false);
  a.mean = A.in_f32(fn, "mean", mean_, 1); expect_shape(fn, "mean", a.mean, {a.C});
  a.invstd = A.in_f32(fn, "invstd", invstd_, 1); expect_shape(fn, "invstd", a.invstd, {a.C});
  a.dgp = optional_vec(A, fn, "dgamma", dgamma_, a.C, a.dg, true);
  a.dbp = optional_vec(A, fn, "dbeta", dbeta_, a.C, a.db, true);
  if (!dx_.is_none()) {
    a.dx = A.out_f32(fn, "dx", dx_, -1);
    expect_shape(fn, "dx", a.dx, a.x.shape);
    a.dxp = a.dx.f();
  }
  outputs_apart(fn, {{"dx", a.dxp ? &a.dx : nullptr}, {"dgamma", a.dgp ? &a.dg : nullptr}, {"dbeta", a.dbp ? &a.db : nullptr}},
                {{"x", &a.x}, {"dy", &a.dy}, {"gamma", a.gp ? &a.g : nullptr}, {"mean", &a.mean}, {"invstd", &a.invstd}});
  return a;
}

}  // namespace kilnet::bind
