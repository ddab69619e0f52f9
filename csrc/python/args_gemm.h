// args_gemm.h — the argument checks of gemm / bias_backward, shared by kilnet._cpu
// (bind_gemm.cpp) and kilnet._cuda (cuda_bind_gemm.cpp).
#pragma once
#include <string>
#include <tuple>
#include "checks.h"

namespace kilnet::bind {

struct GemmArgs {
  index_t M = 0, N = 0, K = 0;   // op(a) is M x K, op(b) is K x N
  Arr a, b, c, bias, colsum;
  const float* bp = nullptr;     // bias, or nullptr for None
  float* cp = nullptr;           // colsum, or nullptr for None
};

inline GemmArgs gemm_args(const Arrays& A, const py::object& a_, const py::object& b_, const py::object& c_,
                          bool trans_a, bool trans_b, const py::object& bias_,
                          const py::object& colsum_ = py::none()) {
  const char* fn = "gemm";
  GemmArgs g;
  g.a = A.in_f32(fn, "a", a_, 2); g.b = A.in_f32(fn, "b", b_, 2); g.c = A.out_f32(fn, "c", c_, 2);
  g.M = trans_a ? g.a.dim(1) : g.a.dim(0);
  g.K = trans_a ? g.a.dim(0) : g.a.dim(1);
  const index_t Kb = trans_b ? g.b.dim(1) : g.b.dim(0);
  g.N = trans_b ? g.b.dim(0) : g.b.dim(1);
  if (g.K != Kb)
    fail_value("gemm: inner dimensions differ: op(a) is " + shape_str({g.M, g.K}) + ", op(b) is " + shape_str({Kb, g.N}));
  expect_shape(fn, "c", g.c, {g.M, g.N});
  no_alias(fn, "c", g.c, "a", g.a); no_alias(fn, "c", g.c, "b", g.b);
  if (!bias_.is_none()) {
    g.bias = A.in_f32(fn, "bias", bias_, 1);
    expect_shape(fn, "bias", g.bias, {g.N});
    no_alias(fn, "c", g.c, "bias", g.bias);
    g.bp = g.bias.f();
  }
  if (!colsum_.is_none()) {   // += op(b)'s column sums (a bias gradient)
    g.colsum = A.out_f32(fn, "colsum", colsum_, 1);
    expect_shape(fn, "colsum", g.colsum, {g.N});
    no_alias(fn, "colsum", g.colsum, "c", g.c); no_alias(fn, "colsum", g.colsum, "a", g.a);
    no_alias(fn, "colsum", g.colsum, "b", g.b);
    if (g.bp) no_alias(fn, "colsum", g.colsum, "bias", g.bias);
    g.cp = g.colsum.f();
  }
  return g;
}

struct BiasBackwardArgs {
  index_t rows = 0, cols = 0;
  Arr dy, db;
};

inline BiasBackwardArgs bias_backward_args(const Arrays& A, const py::object& dy_, const py::object& db_) {
  const char* fn = "bias_backward";
  BiasBackwardArgs g;
  g.dy = A.in_f32(fn, "dy", dy_, -1); g.db = A.out_f32(fn, "db", db_, 1);
  std::tie(g.rows, g.cols) = rows_cols(fn, g.dy);
  expect_shape(fn, "db", g.db, {g.cols});
  no_alias(fn, "db", g.db, "dy", g.dy);
  return g;
}

}  // namespace kilnet::bind
