// args_conv2d.h — the argument checks of conv2d_forward / conv2d_backward, shared by kilnet._cpu
// (bind_conv2d.cpp) and kilnet._cuda (cuda_bind_conv2d.cpp): each binding checks through here,
// then runs its kernel on what comes back.
#pragma once
#include <algorithm>
#include <array>
#include <string>
#include <vector>
#include "checks.h"
#include "kilnet/conv2d.h"
#include "kilnet/detail/geometry.h"

namespace kilnet::bind {

using Pair = std::array<index_t, 2>;

// Checks shared by the forward and backward convolution; returns the shape. The geometry
// (strides, padding, dilation, the output size P x Q) follows kilnet/detail/geometry.h: no
// overflow in the index arithmetic, an output the input can produce, and a padded image bounded
// by the image, all checked before the kernel runs or allocates anything.
// pad_h/pad_w are the top/left padding; P and Q imply the bottom/right padding, which may be
// anything from none (rows left over, as in 'valid') up to the larger of the top padding
// (symmetric explicit padding) and eff-1 (Keras 'same' puts the odd pixel at the bottom).
// Reads outside the input are zeros, so every accepted P, Q is memory-safe.
inline Conv2dShape conv_shape(const char* fn, const Arr& x, const Arr& w, const Arr& y, Pair stride,
                              Pair pad, Pair dil) {
  Conv2dShape s;
  s.N = x.dim(0); s.H = x.dim(1); s.W = x.dim(2); s.C = x.dim(3);
  s.R = w.dim(0); s.S = w.dim(1); s.K = w.dim(3);
  if (s.R < 1 || s.S < 1)
    fail_value(std::string(fn) + ": the kernel must be at least 1x1, got 'w' of shape " + shape_str(w.shape));
  if (w.dim(2) != s.C)
    fail_value(std::string(fn) + ": weight 'w' has " + std::to_string(w.dim(2)) +
               " input channels but 'x' has " + std::to_string(s.C));
  if (y.dim(0) != s.N || y.dim(3) != s.K)
    fail_value(std::string(fn) + ": output must have shape (" + std::to_string(s.N) + ", P, Q, " +
               std::to_string(s.K) + "), got " + shape_str(y.shape));
  s.stride_h = stride[0]; s.stride_w = stride[1];
  s.pad_h = pad[0]; s.pad_w = pad[1];
  s.dilation_h = dil[0]; s.dilation_w = dil[1];
  s.P = y.dim(1); s.Q = y.dim(2);
  detail::ConvAxis ah, aw;
  std::string e = detail::conv_axis(0, s.H, s.R, s.stride_h, s.pad_h, s.dilation_h, s.P, &ah);
  if (e.empty()) e = detail::conv_axis(1, s.W, s.S, s.stride_w, s.pad_w, s.dilation_w, s.Q, &aw);
  if (e.empty()) e = detail::conv_image(ah, aw, s.N, s.H, s.W, s.C, s.P, s.Q, s.K, s.R, s.S);
  if (!e.empty()) fail_value(std::string(fn) + ": " + e + " (output shape " + shape_str(y.shape) + ")");
  return s;
}

struct Conv2dForwardArgs {
  Conv2dShape s;
  Act act;
  Arr x, w, b, y;
  const float* bp = nullptr;   // b, or nullptr for None
};

inline Conv2dForwardArgs conv2d_forward_args(const Arrays& A, const py::object& x_, const py::object& w_,
                                             const py::object& b_, const py::object& y_, Pair stride,
                                             Pair padding, Pair dilation, const std::string& act) {
  const char* fn = "conv2d_forward";
  Conv2dForwardArgs a;
  a.act = parse_act(act);
  a.x = A.in_f32(fn, "x", x_, 4); a.w = A.in_f32(fn, "w", w_, 4); a.y = A.out_f32(fn, "y", y_, 4);
  a.s = conv_shape(fn, a.x, a.w, a.y, stride, padding, dilation);
  no_alias(fn, "y", a.y, "x", a.x); no_alias(fn, "y", a.y, "w", a.w);
  if (!b_.is_none()) {
    a.b = A.in_f32(fn, "b", b_, 1);
    expect_shape(fn, "b", a.b, {a.s.K});
    no_alias(fn, "y", a.y, "b", a.b);
    a.bp = a.b.f();
  }
  return a;
}

struct Conv2dBackwardArgs {
  Conv2dShape s;
  Act act;
  Arr dy, x, w, dw, y, dx, db;
  float* dxp = nullptr;        // dx, or nullptr for None
  float* dbp = nullptr;        // db, or nullptr for None
  const float* yp = nullptr;   // y when act is not linear (for linear it is checked, not passed)
};

inline Conv2dBackwardArgs conv2d_backward_args(const Arrays& A, const py::object& dy_, const py::object& x_,
                                               const py::object& w_, const py::object& dx_,
                                               const py::object& dw_, const py::object& db_, Pair stride,
                                               Pair padding, Pair dilation, const std::string& act,
                                               const py::object& y_) {
  const char* fn = "conv2d_backward";
  Conv2dBackwardArgs a;
  a.act = parse_act(act);
  a.dy = A.in_f32(fn, "dy", dy_, 4); a.x = A.in_f32(fn, "x", x_, 4); a.w = A.in_f32(fn, "w", w_, 4);
  a.dw = A.out_f32(fn, "dw", dw_, 4);
  a.s = conv_shape(fn, a.x, a.w, a.dy, stride, padding, dilation);
  expect_shape(fn, "dw", a.dw, a.w.shape);
  if (!y_.is_none()) {   // the forward output: an input here, needed for act'(y)
    a.y = A.in_f32(fn, "y", y_, 4);
    expect_shape(fn, "y", a.y, a.dy.shape);
  } else if (a.act != Act::Linear) {
    fail_value(std::string(fn) + ": act='" + act + "' needs 'y', the forward output (shape " +
               shape_str(a.dy.shape) + ")");
  }
  std::vector<const Arr*> inputs{&a.dy, &a.x, &a.w};
  if (!y_.is_none()) inputs.push_back(&a.y);
  for (const Arr* in : inputs) no_alias(fn, "dw", a.dw, "an input", *in);
  if (!dx_.is_none()) {
    a.dx = A.out_f32(fn, "dx", dx_, 4);
    expect_shape(fn, "dx", a.dx, a.x.shape);
    for (const Arr* in : inputs) no_alias(fn, "dx", a.dx, "another argument", *in);
    no_alias(fn, "dx", a.dx, "another argument", a.dw);
    a.dxp = a.dx.f();
  }
  if (!db_.is_none()) {
    a.db = A.out_f32(fn, "db", db_, 1);
    expect_shape(fn, "db", a.db, {a.s.K});
    for (const Arr* in : inputs) no_alias(fn, "db", a.db, "another argument", *in);
    no_alias(fn, "db", a.db, "another argument", a.dw);
    a.dbp = a.db.f();
  }
  if (a.act != Act::Linear) a.yp = a.y.f();
  return a;
}

struct Conv2dBackwardInputArgs {
  Conv2dShape s;
  Act act;
  Arr dy, w, dx, y;
  const float* yp = nullptr;   // y when act is not linear
};

// conv2d_backward_input: dx (overwritten) gives the input shape N, H, W, C.
inline Conv2dBackwardInputArgs conv2d_backward_input_args(const Arrays& A, const py::object& dy_,
                                                          const py::object& w_, const py::object& dx_,
                                                          Pair stride, Pair padding, Pair dilation,
                                                          const std::string& act, const py::object& y_) {
  const char* fn = "conv2d_backward_input";
  Conv2dBackwardInputArgs a;
  a.act = parse_act(act);
  a.dy = A.in_f32(fn, "dy", dy_, 4); a.w = A.in_f32(fn, "w", w_, 4); a.dx = A.out_f32(fn, "dx", dx_, 4);
  a.s = conv_shape(fn, a.dx, a.w, a.dy, stride, padding, dilation);
  no_alias(fn, "dx", a.dx, "dy", a.dy); no_alias(fn, "dx", a.dx, "w", a.w);
  if (!y_.is_none()) {
    a.y = A.in_f32(fn, "y", y_, 4);
    expect_shape(fn, "y", a.y, a.dy.shape);
    no_alias(fn, "dx", a.dx, "y", a.y);
    a.yp = a.y.f();
  } else if (a.act != Act::Linear) {
    fail_value(std::string(fn) + ": act='" + act + "' needs 'y', the forward output");
  }
  return a;
}

}  // namespace kilnet::bind
