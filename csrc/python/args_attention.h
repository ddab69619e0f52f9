// args_attention.h — the argument checks of attention_forward / attention_backward, shared by
// kilnet._cpu (bind_attention.cpp) and kilnet._cuda (cuda_bind_attention.cpp).
// q (B, Tq, N, H), k and v (B, Tk, Nk, H) with N % Nk == 0; bias (float32) and mask (bool) of
// rank <= 4, broadcastable to (B, N, Tq, Tk) by numpy's rules: they reach the kernel as the
// small array plus strides (0 on broadcast axes), never expanded.
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include "checks.h"
#include "kilnet/attention.h"

namespace kilnet::bind {

// A bool array argument: numpy (here) or CuPy (cuda_bind_attention.cpp).
using BoolArg = Arr (*)(const char* fn, const char* name, py::handle h);

inline Arr host_bool(const char* fn, const char* name, py::handle h) {
  if (!py::isinstance<py::array>(h) && py::hasattr(h, "__cuda_array_interface__"))
    fail_type(std::string(fn) + ": argument '" + name + "' is a GPU (CuPy) array, but this is the CPU "
              "kernel: pass numpy arrays");
  if (!py::isinstance<py::array>(h))
    fail_type(std::string(fn) + ": argument '" + name + "' must be a numpy array, got " +
              std::string(py::str(py::type::of(h).attr("__name__"))));
  Arr a;
  a.arr = py::reinterpret_borrow<py::array>(h);
  if (py::detail::array_descriptor_proxy(py::detail::array_proxy(h.ptr())->descr)->type_num !=
      py::dtype::of<bool>().num())
    fail_type(std::string(fn) + ": argument '" + name + "' must have dtype bool, got " +
              std::string(py::str(a.arr.dtype())));
  if (!(a.arr.flags() & py::array::c_style))
    fail_value(std::string(fn) + ": argument '" + name + "' must be C-contiguous (use numpy.ascontiguousarray)");
  for (py::ssize_t i = 0; i < a.arr.ndim(); ++i) {
    a.shape.push_back(index_t(a.arr.shape(i)));
    a.size *= index_t(a.arr.shape(i));
  }
  a.obj = py::reinterpret_borrow<py::object>(h);
  a.bytes = index_t(a.arr.nbytes());
  a.data = const_cast<void*>(a.arr.data());
  return a;
}

// Element strides over (b, n, i, j) of a C-contiguous array broadcast to `full` (numpy rules:
// axes aligned from the right, each of size 1 or equal).
inline void broadcast_strides(const char* fn, const char* name, const Arr& a, const index_t full[4],
                              index_t out[4]) {
  if (a.ndim() > 4)
    fail_value(std::string(fn) + ": '" + name + "' must have rank <= 4 (broadcastable to (B, N, Tq, Tk) = " +
               shape_str({full[0], full[1], full[2], full[3]}) + "), got shape " + shape_str(a.shape));
  index_t stride = 1;
  for (int ax = 3; ax >= 0; --ax) {
    const int src = a.ndim() - (4 - ax);
    const index_t d = src >= 0 ? a.shape[size_t(src)] : 1;
    if (d != 1 && d != full[ax])
      fail_value(std::string(fn) + ": '" + name + "' of shape " + shape_str(a.shape) +
                 " is not broadcastable to (B, N, Tq, Tk) = " + shape_str({full[0], full[1], full[2], full[3]}) +
                 " (a key-padding mask is (B, 1, 1, Tk))");
    out[ax] = d == 1 ? 0 : stride;
    stride *= d;
  }
}

struct AttentionArgs {
  AttnShape s;
  AttnMask m;
  Arr q, k, v, bias, mask, out, lse, dout, dq, dk, dv;
};

// The inputs every call has: q, k, v, bias, mask, and the shape facts.
inline void attention_inputs(const Arrays& A, BoolArg in_bool, const char* fn, AttentionArgs& a,
                             const py::object& q_, const py::object& k_, const py::object& v_,
                             const py::object& bias_, const py::object& mask_, float scale, bool causal) {
  a.q = A.in_f32(fn, "query", q_, 4);
  a.k = A.in_f32(fn, "key", k_, 4);
  a.v = A.in_f32(fn, "value", v_, 4);
  AttnShape& s = a.s;
  s.B = a.q.dim(0); s.Tq = a.q.dim(1); s.N = a.q.dim(2); s.H = a.q.dim(3);
  s.Tk = a.k.dim(1); s.Nk = a.k.dim(2);
  if (a.k.dim(3) != s.H)
    fail_value(std::string(fn) + ": query and key head dims differ: query " + shape_str(a.q.shape) +
               ", key " + shape_str(a.k.shape) + " (layout (batch, time, heads, head_dim))");
  if (a.k.dim(0) != s.B)
    fail_value(std::string(fn) + ": query and key batch sizes differ: query " + shape_str(a.q.shape) +
               ", key " + shape_str(a.k.shape));
  if (a.v.shape != a.k.shape)
    fail_value(std::string(fn) + ": value must have the shape of key " + shape_str(a.k.shape) + ", got " +
               shape_str(a.v.shape));
  if (a.q.size == 0 || a.k.size == 0)
    fail_value(std::string(fn) + ": empty query or key " + shape_str(a.q.shape) + ", " + shape_str(a.k.shape));
  if (s.N % s.Nk != 0)
    fail_value(std::string(fn) + ": query heads (" + std::to_string(s.N) + ") must be a multiple of key heads (" +
               std::to_string(s.Nk) + ")");
  if (!std::isfinite(scale))
    fail_value(std::string(fn) + ": scale must be finite, got " + std::to_string(scale));
  s.scale = scale;
  s.causal = causal;
  const index_t full[4] = {s.B, s.N, s.Tq, s.Tk};
  if (!bias_.is_none()) {
    a.bias = A.in_f32(fn, "bias", bias_, -1);
    broadcast_strides(fn, "bias", a.bias, full, a.m.bias_stride);
    a.m.bias = a.bias.f();
  }
  if (!mask_.is_none()) {
    a.mask = in_bool(fn, "mask", mask_);
    broadcast_strides(fn, "mask", a.mask, full, a.m.mask_stride);
    a.m.mask = static_cast<const std::uint8_t*>(a.mask.data);
  }
}

inline AttentionArgs attention_forward_args(const Arrays& A, BoolArg in_bool, const py::object& q_,
                                            const py::object& k_, const py::object& v_, const py::object& bias_,
                                            const py::object& mask_, const py::object& out_,
                                            const py::object& lse_, float scale, bool causal) {
  const char* fn = "attention_forward";
  AttentionArgs a;
  attention_inputs(A, in_bool, fn, a, q_, k_, v_, bias_, mask_, scale, causal);
  a.out = A.out_f32(fn, "out", out_, 4);
  expect_shape(fn, "out", a.out, a.q.shape);
  a.lse = A.out_f32(fn, "lse", lse_, 3);
  expect_shape(fn, "lse", a.lse, {a.s.B, a.s.N, a.s.Tq});
  outputs_apart(fn, {{"out", &a.out}, {"lse", &a.lse}},
                {{"query", &a.q}, {"key", &a.k}, {"value", &a.v}, {"bias", a.m.bias ? &a.bias : nullptr},
                 {"mask", a.m.mask ? &a.mask : nullptr}});
  return a;
}

inline AttentionArgs attention_backward_args(const Arrays& A, BoolArg in_bool, const py::object& q_,
                                             const py::object& k_, const py::object& v_, const py::object& bias_,
                                             const py::object& mask_, const py::object& out_,
                                             const py::object& lse_, const py::object& dout_,
                                             const py::object& dq_, const py::object& dk_,
                                             const py::object& dv_, float scale, bool causal) {
  const char* fn = "attention_backward";
  AttentionArgs a;
  attention_inputs(A, in_bool, fn, a, q_, k_, v_, bias_, mask_, scale, causal);
  a.out = A.in_f32(fn, "out", out_, 4);
  expect_shape(fn, "out", a.out, a.q.shape);
  a.lse = A.in_f32(fn, "lse", lse_, 3);
  expect_shape(fn, "lse", a.lse, {a.s.B, a.s.N, a.s.Tq});
  a.dout = A.in_f32(fn, "dout", dout_, 4);
  expect_shape(fn, "dout", a.dout, a.q.shape);
  a.dq = A.out_f32(fn, "dq", dq_, 4);
  expect_shape(fn, "dq", a.dq, a.q.shape);
  a.dk = A.out_f32(fn, "dk", dk_, 4);
  expect_shape(fn, "dk", a.dk, a.k.shape);
  a.dv = A.out_f32(fn, "dv", dv_, 4);
  expect_shape(fn, "dv", a.dv, a.k.shape);
  outputs_apart(fn, {{"dq", &a.dq}, {"dk", &a.dk}, {"dv", &a.dv}},
                {{"query", &a.q}, {"key", &a.k}, {"value", &a.v}, {"bias", a.m.bias ? &a.bias : nullptr},
                 {"mask", a.m.mask ? &a.mask : nullptr}, {"out", &a.out}, {"lse", &a.lse}, {"dout", &a.dout}});
  return a;
}

}  // namespace kilnet::bind
