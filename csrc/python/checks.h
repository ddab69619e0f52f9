// checks.h — argument validation shared by the binding modules.
// Bindings check, kernels trust: every array that reaches a kernel has passed through here, so
// a wrong dtype, rank, shape, layout or an output that overlaps an input raises a Python
// exception naming the argument and the expected vs actual value.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <cmath>
#include <string>
#include <utility>
#include <vector>
#include "kilnet/common.h"

namespace kilnet::bind {
namespace py = pybind11;
using kilnet::index_t;

// Around a CPU kernel call: kilnet's thread count on this thread for the call, the GIL released.
// A process has one OpenMP runtime (PyTorch's wheel ships libgomp.so.1 too): torch.set_num_threads
// changes the count kilnet's kernels would see, and kilnet's would change torch's. The count the
// thread had is put back afterwards, so neither library sets the other's.
struct KernelCall {
  KernelCall() : had(cpu::apply_num_threads()) {}
  ~KernelCall() { cpu::restore_num_threads(had); }
  KernelCall(const KernelCall&) = delete;
  KernelCall& operator=(const KernelCall&) = delete;
  int had;
  py::gil_scoped_release nogil;
};

// A checked array argument: numpy (array_arg, here) or CuPy (dev_array_arg, cuda_checks.h).
// The shape helpers below work on either; only `arr` is numpy-specific.
struct Arr {
  py::array arr;          // the numpy array (empty for device arrays)
  py::object obj;         // the argument itself, kept alive for the call
  void* data = nullptr;
  index_t bytes = 0;
  int elem_bytes = 4;     // bytes per element (4: float32 or int32, 8: int64)
  std::vector<index_t> shape;
  index_t size = 1;
  int ndim() const { return int(shape.size()); }
  index_t dim(int i) const { return shape[size_t(i < 0 ? i + ndim() : i)]; }
  float* f() const { return static_cast<float*>(data); }
  std::int64_t* i64() const { return static_cast<std::int64_t*>(data); }
  std::int32_t* i32() const { return static_cast<std::int32_t*>(data); }
  index_t nbytes() const { return bytes; }
};

// std::to_string, not an ostringstream: formatting a number through an iostream crashed
// (SIGSEGV in basic_ostream::_M_insert<long>) in kilnet._cuda built on the H200 image's GCC 13
// toolchain; to_string needs no locale.
inline std::string shape_str(const std::vector<index_t>& s) {
  std::string o = "(";
  for (size_t i = 0; i < s.size(); ++i)
    o += std::to_string(s[i]) + (s.size() == 1 ? "," : (i + 1 < s.size() ? ", " : ""));
  return o + ")";
}

[[noreturn]] inline void fail_type(const std::string& msg) { throw py::type_error(msg); }
[[noreturn]] inline void fail_value(const std::string& msg) { throw py::value_error(msg); }

// Whether a numpy dtype (a PyArray_Descr, as numpy and CuPy arrays both carry) is native
// float32 (kind 'f'), int64 (kind 'l') or int32 (kind 'i'). Read off the descriptor, with no Python attribute
// lookups: this runs for every array of every call.
inline bool dtype_is(PyObject* dtype, char kind) {
  static const int want_f32 = py::dtype::of<float>().num(), want_i64 = py::dtype::of<std::int64_t>().num(),
                   want_i32 = py::dtype::of<std::int32_t>().num();
  const auto* descr = py::detail::array_descriptor_proxy(dtype);
  const char order = descr->byteorder;   // '=' native, '|' not applicable, else '<' or '>'
  const uint16_t probe = 1;
  const char native = *reinterpret_cast<const char*>(&probe) ? '<' : '>';
  return descr->type_num == (kind == 'f' ? want_f32 : kind == 'i' ? want_i32 : want_i64) &&
         (order == '=' || order == '|' || order == native);
}

inline const char* kind_name(char kind) { return kind == 'f' ? "float32" : kind == 'i' ? "int32" : "int64"; }

// kind: 'f' float32, 'l' int64, 'i' int32. ndim < 0: any rank.
inline Arr array_arg(const char* fn, const char* name, py::handle h, char kind, int ndim,
                     bool writable) {
  if (!py::isinstance<py::array>(h) && py::hasattr(h, "__cuda_array_interface__"))
    fail_type(std::string(fn) + ": argument '" + name + "' is a GPU (CuPy) array, but this is the "
              "CPU kernel: pass numpy arrays, or every array on the GPU to kilnet._cuda; one call "
              "cannot mix numpy and CuPy arrays");
  if (!py::isinstance<py::array>(h))
    fail_type(std::string(fn) + ": argument '" + name + "' must be a numpy array, got " +
              std::string(py::str(py::type::of(h).attr("__name__"))));
  Arr a;
  a.arr = py::reinterpret_borrow<py::array>(h);
  // Compare type numbers, not dtype objects: an unpickled float32 dtype is a different object.
  // A byte-swapped (non-native) array has the same number and is refused by the isnative test.
  if (!dtype_is(py::detail::array_proxy(h.ptr())->descr, kind))
    fail_type(std::string(fn) + ": argument '" + name + "' must have dtype " + kind_name(kind) +
              ", got " + std::string(py::str(a.arr.dtype())));
  if (ndim >= 0 && a.arr.ndim() != ndim)
    fail_value(std::string(fn) + ": argument '" + name + "' must be " + std::to_string(ndim) +
               "-D, got " + std::to_string(a.arr.ndim()) + "-D");
  if (!(a.arr.flags() & py::array::c_style))
    fail_value(std::string(fn) + ": argument '" + name +
               "' must be C-contiguous (use numpy.ascontiguousarray)");
  if (writable && !a.arr.writeable())
    fail_value(std::string(fn) + ": output '" + name + "' is read-only");
  for (py::ssize_t i = 0; i < a.arr.ndim(); ++i) {
    a.shape.push_back(index_t(a.arr.shape(i)));
    a.size *= index_t(a.arr.shape(i));
  }
  a.obj = py::reinterpret_borrow<py::object>(h);
  a.elem_bytes = kind == 'l' ? 8 : 4;
  a.bytes = index_t(a.arr.nbytes());
  a.data = writable ? a.arr.mutable_data() : const_cast<void*>(a.arr.data());
  return a;
}

inline Arr in_f32(const char* fn, const char* name, py::handle h, int ndim = -1) {
  return array_arg(fn, name, h, 'f', ndim, false);
}
inline Arr out_f32(const char* fn, const char* name, py::handle h, int ndim = -1) {
  return array_arg(fn, name, h, 'f', ndim, true);
}

// bfloat16 arrays: numpy uint16 holding the bits, or ml_dtypes.bfloat16 (the dtype JAX and
// TensorFlow use), read as the same bits. Arr::elem_bytes is 2.
inline bool is_bf16_array(py::handle h) {
  if (!py::isinstance<py::array>(h)) return false;
  const py::dtype dt = py::reinterpret_borrow<py::array>(h).dtype();
  if (dt.itemsize() != 2) return false;
  return dt.kind() == 'u' || std::string(py::str(dt)) == "bfloat16";
}

// A bfloat16 array as an Arr: `ndim` dimensions (-1: any), C-contiguous; writeable if `out`.
inline Arr bf16_arr(const char* fn, const char* name, py::handle h, int ndim, bool out) {
  py::array a = py::reinterpret_borrow<py::array>(h);
  if (ndim >= 0 && a.ndim() != ndim)
    fail_value(std::string(fn) + ": argument '" + name + "' must be " + std::to_string(ndim) + "-D, got " +
               std::to_string(a.ndim()) + "-D");
  if (!(a.flags() & py::array::c_style))
    fail_value(std::string(fn) + ": argument '" + name + "' must be C-contiguous (use numpy.ascontiguousarray)");
  if (out && !a.writeable()) fail_value(std::string(fn) + ": argument '" + name + "' is read-only");
  Arr o;
  o.arr = a;
  o.obj = py::reinterpret_borrow<py::object>(h);
  o.shape.assign(a.shape(), a.shape() + a.ndim());
  for (index_t d : o.shape) o.size *= d;
  o.elem_bytes = 2;
  o.bytes = index_t(a.nbytes());
  o.data = out ? a.mutable_data() : const_cast<void*>(a.data());
  return o;
}

inline Arr in_i64(const char* fn, const char* name, py::handle h, int ndim = -1) {
  return array_arg(fn, name, h, 'l', ndim, false);
}

// Integer ids of either width (embedding): int32 or int64, told apart by Arr::elem_bytes.
inline Arr in_ids(const char* fn, const char* name, py::handle h, int ndim = -1) {
  if (py::isinstance<py::array>(h) && dtype_is(py::detail::array_proxy(h.ptr())->descr, 'i')) {
    return array_arg(fn, name, h, 'i', ndim, false);
  }
  if (py::isinstance<py::array>(h) && !dtype_is(py::detail::array_proxy(h.ptr())->descr, 'l'))
    fail_type(std::string(fn) + ": argument '" + name + "' must have dtype int32 or int64, got " +
              std::string(py::str(py::reinterpret_borrow<py::array>(h).dtype())));
  return array_arg(fn, name, h, 'l', ndim, false);
}

// Where a call's arrays live. The argument checks of each family (args_<family>.h) take one of
// these, so that kilnet._cpu (numpy, host_arrays) and kilnet._cuda (CuPy, device_arrays in
// cuda_checks.h) accept and refuse exactly the same calls. `host`: the values can be read
// here, for checks of values (labels in range, probabilities in [0, 1]) that only the CPU makes.
struct Arrays {
  Arr (*in_f32)(const char* fn, const char* name, py::handle h, int ndim);
  Arr (*out_f32)(const char* fn, const char* name, py::handle h, int ndim);
  Arr (*in_i64)(const char* fn, const char* name, py::handle h, int ndim);
  bool host;
  Arr (*in_ids)(const char* fn, const char* name, py::handle h, int ndim);   // int32 or int64
};
inline const Arrays host_arrays{&kilnet::bind::in_f32, &kilnet::bind::out_f32, &kilnet::bind::in_i64, true,
                                &kilnet::bind::in_ids};

inline void expect_shape(const char* fn, const char* name, const Arr& a,
                         const std::vector<index_t>& want) {
  if (a.shape != want)
    fail_value(std::string(fn) + ": argument '" + name + "' must have shape " + shape_str(want) +
               ", got " + shape_str(a.shape));
}

inline bool overlaps(const Arr& a, const Arr& b) {
  if (a.size == 0 || b.size == 0) return false;
  auto a0 = static_cast<const char*>(a.data), b0 = static_cast<const char*>(b.data);
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

// An output must not share memory with an input (the kernels read inputs while writing).
inline void no_alias(const char* fn, const char* out_name, const Arr& out, const char* in_name,
                     const Arr& in) {
  if (overlaps(out, in))
    fail_value(std::string(fn) + ": output '" + out_name + "' overlaps input '" + in_name +
               "'; pass a separate array");
}

// Each output must be apart from every other output and from every input (kernels read the
// inputs while writing the outputs); inputs may share memory. Null entries are skipped.
using Named = std::pair<const char*, const Arr*>;
inline void outputs_apart(const char* fn, std::initializer_list<Named> outs,
                          std::initializer_list<Named> ins) {
  for (auto i = outs.begin(); i != outs.end(); ++i) {
    if (!i->second) continue;
    for (auto j = outs.begin(); j != outs.end(); ++j)
      if (j != i && j->second && overlaps(*i->second, *j->second))
        fail_value(std::string(fn) + ": outputs '" + i->first + "' and '" + j->first +
                   "' overlap; pass separate arrays");
    for (const Named& in : ins)
      if (in.second) no_alias(fn, i->first, *i->second, in.first, *in.second);
  }
}

// Leading axes flattened into rows, the last axis is cols.
inline std::pair<index_t, index_t> rows_cols(const char* fn, const Arr& a) {
  if (a.ndim() < 1) fail_value(std::string(fn) + ": expected an array of rank >= 1");
  const index_t cols = a.dim(-1);
  if (a.size == 0 || cols == 0) fail_value(std::string(fn) + ": empty input");
  return {a.size / cols, cols};
}

// Values a kernel's maths needs in a range (probabilities in [0, 1], ...): NaN is refused too.
inline void in_range(const char* fn, const char* name, const Arr& a, float lo, float hi) {
  const float* v = a.f();
  for (index_t i = 0; i < a.size; ++i)
    if (!(v[i] >= lo && v[i] <= hi))   // written so that NaN fails
      fail_value(std::string(fn) + ": '" + name + "' must hold values in [" + std::to_string(lo) + ", " +
                 (hi == HUGE_VALF ? std::string("inf)") : std::to_string(hi) + "]") + "], found " +
                 std::to_string(v[i]) + " at flat index " + std::to_string(i));
}

// An elementwise activation by name (kilnet::Act); softmax has its own kernels.
inline Act parse_act(const std::string& name) {
  if (name == "linear") return Act::Linear;
  if (name == "relu") return Act::Relu;
  if (name == "sigmoid") return Act::Sigmoid;
  if (name == "tanh") return Act::Tanh;
  fail_value("unknown activation '" + name + "'; valid: linear, relu, sigmoid, tanh (softmax has its own functions)");
}

// One function per kernel family binds it into a module; ref selects the reference kernels.
void bind_gemm(py::module_& m, bool ref);
void bind_gemm_bf16(py::module_& m, bool ref);       // bfloat16 GEMM (AMX), conversions
void bind_conv2d(py::module_& m, bool ref);
void bind_conv_dense(py::module_& m, bool ref);    // Conv2D -> Flatten -> Dense, fused
void bind_activation(py::module_& m, bool ref);
void bind_loss(py::module_& m, bool ref);
void bind_optim(py::module_& m, bool ref);
void bind_rnn(py::module_& m, bool ref);
void bind_pool2d(py::module_& m, bool ref);          // issue 8: pooling
void bind_normalization(py::module_& m, bool ref);   // issue 8: batch normalization
void bind_dropout(py::module_& m, bool ref);         // issue 8: dropout
void bind_embedding(py::module_& m, bool ref);       // embedding gather / deterministic scatter-add
void bind_layernorm(py::module_& m, bool ref);       // layer normalization (last axes)
void bind_depthwise(py::module_& m, bool ref);     // depthwise convolution
void bind_gelu(py::module_& m, bool ref);           // GELU (exact and tanh)
void bind_random(py::module_& m, bool ref);         // counter-based normal random numbers
void bind_peak(py::module_& m);                      // issue 3: FMA peak probe (no ref variant)
void bind_attention(py::module_& m, bool ref);       // fused scaled-dot-product attention

}  // namespace kilnet::bind
