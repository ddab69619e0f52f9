// args_depthwise.h — the argument checks of depthwise2d_forward / depthwise2d_backward.
#pragma once
#include <algorithm>
#include <array>
#include <string>
#include <vector>
#include "checks.h"
#include "kilnet/depthwise.h"
#include "kilnet/detail/geometry.h"

namespace kilnet::bind {

using DwPair = std::array<index_t, 2>;

// Shared by forward and backward: x (N, H, W, C), w (R, S, C, M), y/dy (N, P, Q, C*M).
inline Depthwise2dShape depthwise_shape(const char* fn, const Arr& x, const Arr& w, const Arr& y,
                                        DwPair stride, DwPair pad, DwPair dil) {
  Depthwise2dShape s;
  s.N = x.dim(0); s.H = x.dim(1); s.W = x.dim(2); s.C = x.dim(3);
  s.R = w.dim(0); s.S = w.dim(1); s.M = w.dim(3);
  if (s.R < 1 || s.S < 1 || s.M < 1)
    fail_value(std::string(fn) + ": the kernel must be at least 1x1 with depth multiplier >= 1, got 'w' of shape " +
               shape_str(w.shape));
  if (w.dim(2) != s.C)
    fail_value(std::string(fn) + ": weight 'w' has " + std::to_string(w.dim(2)) + " input channels but 'x' has " +
               std::to_string(s.C));
  const index_t CM = detail::geom_product({s.C, s.M});
  if (CM < 0 || y.dim(0) != s.N || y.dim(3) != CM)
    fail_value(std::string(fn) + ": output must have shape (" + std::to_string(s.N) + ", P, Q, " +
               std::to_string(CM) + "), got " + shape_str(y.shape));
  s.stride_h = stride[0]; s.stride_w = stride[1];
  s.pad_h = pad[0]; s.pad_w = pad[1];
  s.dilation_h = dil[0]; s.dilation_w = dil[1];
  s.P = y.dim(1); s.Q = y.dim(2);
  // The rules of conv2d (kilnet/detail/geometry.h); the work count is N*P*Q*(C*M)*R*S.
  detail::ConvAxis ah, aw;
  std::string e = detail::conv_axis(0, s.H, s.R, s.stride_h, s.pad_h, s.dilation_h, s.P, &ah);
  if (e.empty()) e = detail::conv_axis(1, s.W, s.S, s.stride_w, s.pad_w, s.dilation_w, s.Q, &aw);
  if (e.empty()) e = detail::conv_image(ah, aw, s.N, s.H, s.W, s.C, s.P, s.Q, s.M, s.R, s.S);
  if (!e.empty()) fail_value(std::string(fn) + ": " + e + " (output shape " + shape_str(y.shape) + ")");
  return s;
}

struct Depthwise2dForwardArgs {
  Depthwise2dShape s;
  Arr x, w, b, y;
  const float* bp = nullptr;
};

inline Depthwise2dForwardArgs depthwise2d_forward_args(const Arrays& A, const py::object& x_, const py::object& w_,
                                                       const py::object& b_, const py::object& y_, DwPair stride,
                                                       DwPair padding, DwPair dilation) {
  const char* fn = "depthwise2d_forward";
  Depthwise2dForwardArgs a;
  a.x = A.in_f32(fn, "x", x_, 4); a.w = A.in_f32(fn, "w", w_, 4); a.y = A.out_f32(fn, "y", y_, 4);
  a.s = depthwise_shape(fn, a.x, a.w, a.y, stride, padding, dilation);
  no_alias(fn, "y", a.y, "x", a.x); no_alias(fn, "y", a.y, "w", a.w);
  if (!b_.is_none()) {
    a.b = A.in_f32(fn, "b", b_, 1);
    expect_shape(fn, "b", a.b, {a.s.C * a.s.M});
    no_alias(fn, "y", a.y, "b", a.b);
    a.bp = a.b.f();
  }
  return a;
}

struct Depthwise2dBackwardArgs {
  Depthwise2dShape s;
  Arr dy, x, w, dx, dw, db;
  float* dxp = nullptr;
  float* dbp = nullptr;
};

inline Depthwise2dBackwardArgs depthwise2d_backward_args(const Arrays& A, const py::object& dy_, const py::object& x_,
                                                         const py::object& w_, const py::object& dx_,
                                                         const py::object& dw_, const py::object& db_, DwPair stride,
                                                         DwPair padding, DwPair dilation) {
  const char* fn = "depthwise2d_backward";
  Depthwise2dBackwardArgs a;
  a.dy = A.in_f32(fn, "dy", dy_, 4); a.x = A.in_f32(fn, "x", x_, 4); a.w = A.in_f32(fn, "w", w_, 4);
  a.dw = A.out_f32(fn, "dw", dw_, 4);
  a.s = depthwise_shape(fn, a.x, a.w, a.dy, stride, padding, dilation);
  expect_shape(fn, "dw", a.dw, a.w.shape);
  for (const Arr* in : {&a.dy, &a.x, &a.w}) no_alias(fn, "dw", a.dw, "an input", *in);
  if (!dx_.is_none()) {
    a.dx = A.out_f32(fn, "dx", dx_, 4);
    expect_shape(fn, "dx", a.dx, a.x.shape);
    for (const Arr* in : {&a.dy, &a.x, &a.w, &a.dw}) no_alias(fn, "dx", a.dx, "another argument", *in);
    a.dxp = a.dx.f();
  }
  if (!db_.is_none()) {
    a.db = A.out_f32(fn, "db", db_, 1);
    expect_shape(fn, "db", a.db, {a.s.C * a.s.M});
    for (const Arr* in : {&a.dy, &a.x, &a.w, &a.dw}) no_alias(fn, "db", a.db, "another argument", *in);
    if (a.dxp) no_alias(fn, "db", a.db, "another argument", a.dx);
    a.dbp = a.db.f();
  }
  return a;
}

}  // namespace kilnet::bind
