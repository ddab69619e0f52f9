// args_elementwise.h — the argument checks of the elementwise families (activations, softmax,
// dropout), shared by kilnet._cpu (bind_activation.cpp, bind_dropout.cpp) and kilnet._cuda
// (cuda_bind_activation.cpp, cuda_bind_dropout.cpp).
#pragma once
#include <string>
#include "checks.h"

namespace kilnet::bind {

// y = f(x): y has x's shape and may be x itself, but not overlap it otherwise.
struct MapArgs {
  Arr x, y;
};

inline MapArgs map_args(const Arrays& A, const char* fn, const py::object& x_, const py::object& y_) {
  MapArgs a;
  a.x = A.in_f32(fn, "x", x_, -1); a.y = A.out_f32(fn, "y", y_, -1);
  expect_shape(fn, "y", a.y, a.x.shape);
  if (a.y.data != a.x.data) no_alias(fn, "y", a.y, "x", a.x);   // exactly in place is fine
  return a;
}

// dx = g(saved, dy), `saved` being what the forward kept (its output y, or dropout's mask): all
// three of one shape; dx may be dy itself, and must not overlap `saved`.
struct GradArgs {
  Arr saved, dy, dx;
};

inline GradArgs grad_args(const Arrays& A, const char* fn, const char* saved_name, const py::object& saved_,
                          const py::object& dy_, const py::object& dx_) {
  GradArgs a;
  a.saved = A.in_f32(fn, saved_name, saved_, -1); a.dy = A.in_f32(fn, "dy", dy_, -1);
  a.dx = A.out_f32(fn, "dx", dx_, -1);
  expect_shape(fn, "dy", a.dy, a.saved.shape); expect_shape(fn, "dx", a.dx, a.saved.shape);
  no_alias(fn, "dx", a.dx, saved_name, a.saved);
  if (a.dx.data != a.dy.data) no_alias(fn, "dx", a.dx, "dy", a.dy);
  return a;
}

// dropout_forward: y = x * mask (y may be x), the mask written apart from both.
struct DropoutArgs {
  Arr x, mask, y;
};

inline DropoutArgs dropout_forward_args(const Arrays& A, const py::object& x_, const py::object& mask_,
                                        const py::object& y_, double rate) {
  const char* fn = "dropout_forward";
  DropoutArgs a;
  a.x = A.in_f32(fn, "x", x_, -1); a.mask = A.out_f32(fn, "mask", mask_, -1); a.y = A.out_f32(fn, "y", y_, -1);
  expect_shape(fn, "mask", a.mask, a.x.shape); expect_shape(fn, "y", a.y, a.x.shape);
  if (!(rate >= 0.0 && rate < 1.0))
    fail_value(std::string(fn) + ": rate must be in [0, 1), got " + std::to_string(rate));
  no_alias(fn, "mask", a.mask, "x", a.x); no_alias(fn, "mask", a.mask, "y", a.y);
  if (a.y.data != a.x.data) no_alias(fn, "y", a.y, "x", a.x);   // exactly in place is fine
  return a;
}

}  // namespace kilnet::bind
