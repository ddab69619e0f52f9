// args_pool2d.h — the argument checks of the pooling functions, shared by kilnet._cpu
// (bind_pool2d.cpp) and kilnet._cuda (cuda_bind_pool2d.cpp).
#pragma once
#include <array>
#include <string>
#include "checks.h"
#include "kilnet/pool2d.h"
#include "kilnet/detail/geometry.h"

namespace kilnet::bind {

using Pair = std::array<index_t, 2>;

// Shape of a pooling call from x (N, H, W, C) and y (N, P, Q, C). Every window must overlap the
// input: pad < window (the first window) and P <= (H + pad_h - 1)/stride_h + 1 (the last one).
inline Pool2dShape pool_shape(const char* fn, const Arr& x, const Arr& y, Pair pool, Pair stride, Pair pad) {
  Pool2dShape s;
  s.N = x.dim(0); s.H = x.dim(1); s.W = x.dim(2); s.C = x.dim(3);
  if (s.N < 1 || s.H < 1 || s.W < 1 || s.C < 1)
    fail_value(std::string(fn) + ": empty input " + shape_str(x.shape));
  if (y.dim(0) != s.N || y.dim(3) != s.C)
    fail_value(std::string(fn) + ": output must have shape (" + std::to_string(s.N) + ", P, Q, " +
               std::to_string(s.C) + "), got " + shape_str(y.shape));
  s.R = pool[0]; s.S = pool[1];
  s.stride_h = stride[0]; s.stride_w = stride[1];
  s.pad_h = pad[0]; s.pad_w = pad[1];
  s.P = y.dim(1); s.Q = y.dim(2);
  // kilnet/detail/geometry.h: sizes in range, every window overlapping the input, no overflow.
  index_t max_p = 0, max_q = 0;
  std::string e = detail::pool_axis(0, s.H, s.R, s.stride_h, s.pad_h, s.P, &max_p);
  if (e.empty()) e = detail::pool_axis(1, s.W, s.S, s.stride_w, s.pad_w, s.Q, &max_q);
  if (e.empty()) e = detail::pool_image(s.N, s.P, s.Q, s.C, s.R, s.S);
  if (!e.empty()) fail_value(std::string(fn) + ": " + e + " (output shape " + shape_str(y.shape) + ")");
  return s;
}

// One pooling call's checked arrays: `in` is x (forward, max backward) or dy (average backward),
// `out` is y or dx; `dy` only for the max backward, which reads x and dy.
struct PoolArgs {
  Pool2dShape s;
  Arr in, dy, out;
};

inline PoolArgs pool_forward_args(const Arrays& A, const char* fn, const py::object& x_, const py::object& y_,
                                  Pair pool, Pair stride, Pair pad) {
  PoolArgs a;
  a.in = A.in_f32(fn, "x", x_, 4); a.out = A.out_f32(fn, "y", y_, 4);
  a.s = pool_shape(fn, a.in, a.out, pool, stride, pad);
  no_alias(fn, "y", a.out, "x", a.in);
  return a;
}

inline PoolArgs maxpool2d_backward_args(const Arrays& A, const py::object& x_, const py::object& dy_,
                                        const py::object& dx_, Pair pool, Pair stride, Pair pad) {
  const char* fn = "maxpool2d_backward";
  PoolArgs a;
  a.in = A.in_f32(fn, "x", x_, 4); a.dy = A.in_f32(fn, "dy", dy_, 4); a.out = A.out_f32(fn, "dx", dx_, 4);
  a.s = pool_shape(fn, a.in, a.dy, pool, stride, pad);
  expect_shape(fn, "dx", a.out, a.in.shape);
  no_alias(fn, "dx", a.out, "x", a.in); no_alias(fn, "dx", a.out, "dy", a.dy);
  return a;
}

inline PoolArgs avgpool2d_backward_args(const Arrays& A, const py::object& dy_, const py::object& dx_,
                                        Pair pool, Pair stride, Pair pad) {
  const char* fn = "avgpool2d_backward";
  PoolArgs a;
  a.in = A.in_f32(fn, "dy", dy_, 4); a.out = A.out_f32(fn, "dx", dx_, 4);
  a.s = pool_shape(fn, a.out, a.in, pool, stride, pad);
  no_alias(fn, "dx", a.out, "dy", a.in);
  return a;
}

// Global average pooling: x (N, H, W, C) <-> y (N, C); `in`/`out` as above.
inline PoolArgs global_avgpool2d_forward_args(const Arrays& A, const py::object& x_, const py::object& y_) {
  const char* fn = "global_avgpool2d_forward";
  PoolArgs a;
  a.in = A.in_f32(fn, "x", x_, 4); a.out = A.out_f32(fn, "y", y_, 2);
  if (a.in.size == 0) fail_value(std::string(fn) + ": empty input " + shape_str(a.in.shape));
  expect_shape(fn, "y", a.out, {a.in.dim(0), a.in.dim(3)});
  no_alias(fn, "y", a.out, "x", a.in);
  return a;
}

inline PoolArgs global_avgpool2d_backward_args(const Arrays& A, const py::object& dy_, const py::object& dx_) {
  const char* fn = "global_avgpool2d_backward";
  PoolArgs a;
  a.in = A.in_f32(fn, "dy", dy_, 2); a.out = A.out_f32(fn, "dx", dx_, 4);
  if (a.out.size == 0) fail_value(std::string(fn) + ": empty dx " + shape_str(a.out.shape));
  expect_shape(fn, "dy", a.in, {a.out.dim(0), a.out.dim(3)});
  no_alias(fn, "dx", a.out, "dy", a.in);
  return a;
}

}  // namespace kilnet::bind
