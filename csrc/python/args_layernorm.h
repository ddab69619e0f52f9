// args_layernorm.h — the argument checks of layernorm_forward / layernorm_backward, shared by
// kilnet._cpu (bind_layernorm.cpp) and kilnet._cuda (cuda_bind_layernorm.cpp). x is read as
// rows over its last axis: M = x.size / C rows of C = x.shape[-1] values.
#pragma once
#include <cmath>
#include <string>
#include <tuple>
#include "checks.h"

namespace kilnet::bind {

// An optional per-column vector: None (returns nullptr), or float32 of shape (C,).
inline float* layernorm_vec(const Arrays& A, const char* fn, const char* name, const py::object& h, index_t C,
                            Arr& store, bool writable) {
  if (h.is_none()) return nullptr;
  store = writable ? A.out_f32(fn, name, h, 1) : A.in_f32(fn, name, h, 1);
  expect_shape(fn, name, store, {C});
  return store.f();
}

struct LayernormForwardArgs {
  index_t M = 0, C = 0;
  Arr x, y, g, b, mean, invstd;
  const float* gp = nullptr;
  const float* bp = nullptr;
};

inline LayernormForwardArgs layernorm_forward_args(const Arrays& A, const py::object& x_, const py::object& gamma_,
                                                   const py::object& beta_, const py::object& mean_,
                                                   const py::object& invstd_, const py::object& y_, float eps) {
  const char* fn = "layernorm_forward";
  LayernormForwardArgs a;
  a.x = A.in_f32(fn, "x", x_, -1); a.y = A.out_f32(fn, "y", y_, -1);
  std::tie(a.M, a.C) = rows_cols(fn, a.x);
  expect_shape(fn, "y", a.y, a.x.shape);
  a.gp = layernorm_vec(A, fn, "gamma", gamma_, a.C, a.g, false);
  a.bp = layernorm_vec(A, fn, "beta", beta_, a.C, a.b, false);
  a.mean = A.out_f32(fn, "mean", mean_, 1); expect_shape(fn, "mean", a.mean, {a.M});
  a.invstd = A.out_f32(fn, "invstd", invstd_, 1); expect_shape(fn, "invstd", a.invstd, {a.M});
  if (!std::isfinite(eps) || eps < 0.f)
    fail_value(std::string(fn) + ": eps must be finite and >= 0, got " + std::to_string(eps));
  outputs_apart(fn, {{"y", &a.y}, {"mean", &a.mean}, {"invstd", &a.invstd}},
                {{"x", &a.x}, {"gamma", a.gp ? &a.g : nullptr}, {"beta", a.bp ? &a.b : nullptr}});
  return a;
}

struct LayernormBackwardArgs {
  index_t M = 0, C = 0;
  Arr x, dy, g, mean, invstd, dx, dg, db;
  const float* gp = nullptr;
  float* dxp = nullptr;
  float* dgp = nullptr;
  float* dbp = nullptr;
};

inline LayernormBackwardArgs layernorm_backward_args(const Arrays& A, const py::object& x_, const py::object& dy_,
                                                     const py::object& gamma_, const py::object& mean_,
                                                     const py::object& invstd_, const py::object& dx_,
                                                     const py::object& dgamma_, const py::object& dbeta_) {
  const char* fn = "layernorm_backward";
  LayernormBackwardArgs a;
  a.x = A.in_f32(fn, "x", x_, -1); a.dy = A.in_f32(fn, "dy", dy_, -1);
  std::tie(a.M, a.C) = rows_cols(fn, a.x);
  expect_shape(fn, "dy", a.dy, a.x.shape);
  a.gp = layernorm_vec(A, fn, "gamma", gamma_, a.C, a.g, false);
  a.mean = A.in_f32(fn, "mean", mean_, 1); expect_shape(fn, "mean", a.mean, {a.M});
  a.invstd = A.in_f32(fn, "invstd", invstd_, 1); expect_shape(fn, "invstd", a.invstd, {a.M});
  a.dgp = layernorm_vec(A, fn, "dgamma", dgamma_, a.C, a.dg, true);
  a.dbp = layernorm_vec(A, fn, "dbeta", dbeta_, a.C, a.db, true);
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
