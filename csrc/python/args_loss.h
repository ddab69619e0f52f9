// args_loss.h — the argument checks of the losses, shared by kilnet._cpu (bind_loss.cpp) and
// kilnet._cuda (cuda_bind_loss.cpp). Checks of values (probabilities >= 0, targets in [0, 1],
// labels in [0, cols)) read the arrays, so they run only on host arrays (A.host); on the GPU
// the kernels check the labels themselves (cuda_bind_loss.cpp).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include "checks.h"

namespace kilnet::bind {

struct LossArgs {
  index_t rows = 0, cols = 0;           // the last axis is the class / output axis
  Arr p, t, l, probs, grad;             // pred (or logits), target or labels, the optional outputs
  const float* tp = nullptr;            // target, or nullptr when labels are given
  const std::int64_t* lp = nullptr;     // labels, or nullptr when a target is given
  float* probsp = nullptr;              // probs, or nullptr for None
  float* gp = nullptr;                  // grad, or nullptr for None
};

// The optional grad (d loss / d pred): pred's shape, apart from pred and the target or labels.
inline void grad_arg(const Arrays& A, const char* fn, const py::object& g_, LossArgs& a) {
  if (g_.is_none()) return;
  a.grad = A.out_f32(fn, "grad", g_, -1);
  expect_shape(fn, "grad", a.grad, a.p.shape);
  no_alias(fn, "grad", a.grad, "pred", a.p);
  if (a.lp) no_alias(fn, "grad", a.grad, "labels", a.l); else no_alias(fn, "grad", a.grad, "target", a.t);
  a.gp = a.grad.f();
}

// Integer class labels, one per row; on the host each is checked to be in [0, cols).
inline void labels_arg(const Arrays& A, const char* fn, const py::object& l_, LossArgs& a) {
  a.l = A.in_i64(fn, "labels", l_, -1);
  if (a.l.size != a.rows)
    fail_value(std::string(fn) + ": 'labels' must have " + std::to_string(a.rows) + " entries, got " + std::to_string(a.l.size));
  if (A.host)
    for (index_t i = 0; i < a.rows; ++i)
      if (a.l.i64()[i] < 0 || a.l.i64()[i] >= a.cols)
        fail_value(std::string(fn) + ": label " + std::to_string(a.l.i64()[i]) + " at index " + std::to_string(i) +
                   " is out of range [0, " + std::to_string(a.cols) + ")");
  a.lp = a.l.i64();
}

// mse, mae, categorical_crossentropy, binary_crossentropy: pred and target of one shape.
// probs: pred must hold probabilities (finite, >= 0) and target be finite and >= 0;
// unit_target: target in [0, 1] (binary cross-entropy; pred too unless from logits).
inline LossArgs pair_loss_args(const Arrays& A, const char* fn, const py::object& p_, const py::object& t_,
                               const py::object& g_, bool probs, bool unit_target = false, bool logits = false) {
  LossArgs a;
  a.p = A.in_f32(fn, "pred", p_, -1); a.t = A.in_f32(fn, "target", t_, -1);
  expect_shape(fn, "target", a.t, a.p.shape);
  if (A.host && probs) {
    in_range(fn, "pred", a.p, 0.f, HUGE_VALF);
    in_range(fn, "target", a.t, 0.f, HUGE_VALF);
  }
  if (A.host && unit_target) {
    in_range(fn, "target", a.t, 0.f, 1.f);
    if (!logits) in_range(fn, "pred", a.p, 0.f, 1.f);
  }
  std::tie(a.rows, a.cols) = rows_cols(fn, a.p);
  a.tp = a.t.f();
  grad_arg(A, fn, g_, a);
  return a;
}

inline LossArgs sparse_categorical_crossentropy_args(const Arrays& A, const py::object& p_, const py::object& l_,
                                                     const py::object& g_) {
  const char* fn = "sparse_categorical_crossentropy";
  LossArgs a;
  a.p = A.in_f32(fn, "pred", p_, -1);
  if (A.host) in_range(fn, "pred", a.p, 0.f, HUGE_VALF);
  std::tie(a.rows, a.cols) = rows_cols(fn, a.p);
  labels_arg(A, fn, l_, a);
  grad_arg(A, fn, g_, a);
  return a;
}

// softmax_crossentropy: logits (in `p`) and exactly one of labels and target; outputs probs
// and grad, both optional, apart from every input and from each other.
inline LossArgs softmax_crossentropy_args(const Arrays& A, const py::object& x_, const py::object& l_,
                                          const py::object& t_, const py::object& pr_, const py::object& g_) {
  const char* fn = "softmax_crossentropy";
  LossArgs a;
  a.p = A.in_f32(fn, "logits", x_, -1);
  std::tie(a.rows, a.cols) = rows_cols(fn, a.p);
  if (l_.is_none() == t_.is_none()) fail_value(std::string(fn) + ": pass exactly one of 'labels' and 'target'");
  if (!l_.is_none()) {
    labels_arg(A, fn, l_, a);
  } else {
    a.t = A.in_f32(fn, "target", t_, -1);
    expect_shape(fn, "target", a.t, a.p.shape);
    a.tp = a.t.f();
  }
  // Outputs overlap no input: the labels/target are read while probs and grad are written.
  if (!pr_.is_none()) {
    a.probs = A.out_f32(fn, "probs", pr_, -1);
    expect_shape(fn, "probs", a.probs, a.p.shape);
    no_alias(fn, "probs", a.probs, "logits", a.p);
    if (a.lp) no_alias(fn, "probs", a.probs, "labels", a.l); else no_alias(fn, "probs", a.probs, "target", a.t);
    a.probsp = a.probs.f();
  }
  if (!g_.is_none()) {
    a.grad = A.out_f32(fn, "grad", g_, -1);
    expect_shape(fn, "grad", a.grad, a.p.shape);
    no_alias(fn, "grad", a.grad, "logits", a.p);
    if (a.lp) no_alias(fn, "grad", a.grad, "labels", a.l); else no_alias(fn, "grad", a.grad, "target", a.t);
    if (a.probsp) no_alias(fn, "grad", a.grad, "probs", a.probs);
    a.gp = a.grad.f();
  }
  return a;
}

}  // namespace kilnet::bind
