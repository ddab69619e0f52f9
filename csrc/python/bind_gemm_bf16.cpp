// bind_gemm_bf16.cpp — Python bindings of the bfloat16 GEMM (kilnet/gemm_bf16.h) and of the
// float32 <-> bfloat16 conversions. A bfloat16 array is a 2-byte array: numpy uint16 holding the
// bits, or ml_dtypes.bfloat16 (the dtype JAX and TensorFlow use), read as the same bits.
#include <pybind11/pybind11.h>
#include <string>
#include <vector>
#include "checks.h"
#include "kilnet/gemm_bf16.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

namespace {

// A GEMM operand: float32, or bfloat16 bits (uint16 / ml_dtypes.bfloat16); 2-D, C-contiguous.
struct Operand {
  Arr arr;
  bool bf16 = false;
};

// A GEMM operand (ndim 2) or an elementwise one (-1): float32, or bfloat16 bits.
Operand operand(const char* fn, const char* name, py::handle h, int ndim = 2) {
  Operand o;
  if (is_bf16_array(h)) {
    o.arr = bf16_arr(fn, name, h, ndim, false);
    o.bf16 = true;
    return o;
  }
  if (py::isinstance<py::array>(h) && !dtype_is(py::detail::array_proxy(h.ptr())->descr, 'f'))
    fail_type(std::string(fn) + ": argument '" + name + "' must be float32 or bfloat16 (uint16 bits or "
              "ml_dtypes.bfloat16), got " + std::string(py::str(py::reinterpret_borrow<py::array>(h).dtype())));
  o.arr = in_f32(fn, name, h, ndim);
  return o;
}

// A bfloat16 output array.
Arr out_bf16(const char* fn, py::handle h, int ndim = 2, const char* name = "c") {
  if (!is_bf16_array(h))
    fail_type(std::string(fn) + ": argument '" + name + "' must be a bfloat16 array (uint16 bits or ml_dtypes.bfloat16)");
  return bf16_arr(fn, name, h, ndim, true);
}

inline float bf16_value(std::uint16_t h) {
  const std::uint32_t u = std::uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

}  // namespace

void kilnet::bind::bind_gemm_bf16(py::module_& m, bool ref) {
  m.def("gemm_bf16", [=](py::object a_, py::object b_, py::object c_, bool trans_a, bool trans_b,
                         float alpha, float beta, py::object bias_, py::object colsum_) {
    const char* fn = "gemm_bf16";
    Operand a = operand(fn, "a", a_), b = operand(fn, "b", b_);
    const bool out16 = is_bf16_array(c_);
    if (out16 && (alpha != 1.0f || beta != 0.0f))
      fail_value("gemm_bf16: a bfloat16 'c' is written only as op(a) @ op(b) (+ bias): alpha must be 1 and "
                 "beta 0, got alpha=" + std::to_string(alpha) + ", beta=" + std::to_string(beta));
    Arr c = out16 ? out_bf16(fn, c_) : out_f32(fn, "c", c_, 2);
    const index_t M = trans_a ? a.arr.dim(1) : a.arr.dim(0), K = trans_a ? a.arr.dim(0) : a.arr.dim(1);
    const index_t Kb = trans_b ? b.arr.dim(1) : b.arr.dim(0), N = trans_b ? b.arr.dim(0) : b.arr.dim(1);
    if (K != Kb)
      fail_value("gemm_bf16: inner dimensions differ: op(a) is " + shape_str({M, K}) + ", op(b) is " + shape_str({Kb, N}));
    expect_shape(fn, "c", c, {M, N});
    no_alias(fn, "c", c, "a", a.arr);
    no_alias(fn, "c", c, "b", b.arr);
    const float* bp = nullptr;
    Arr bias;
    if (!bias_.is_none()) {
      bias = in_f32(fn, "bias", bias_, 1);
      expect_shape(fn, "bias", bias, {N});
      no_alias(fn, "c", c, "bias", bias);
      bp = bias.f();
    }
    float* sums = nullptr;
    Arr colsum;
    if (!colsum_.is_none()) {
      if (out16) fail_value("gemm_bf16: 'colsum' is taken with a float32 'c' only");
      colsum = out_f32(fn, "colsum", colsum_, 1);
      expect_shape(fn, "colsum", colsum, {N});
      no_alias(fn, "colsum", colsum, "c", c);
      no_alias(fn, "colsum", colsum, "a", a.arr);
      no_alias(fn, "colsum", colsum, "b", b.arr);
      if (bp) no_alias(fn, "colsum", colsum, "bias", bias);
      sums = colsum.f();
    }
    const cpu::Bf16Matrix A{a.arr.data, a.bf16, a.arr.dim(1)}, B{b.arr.data, b.bf16, b.arr.dim(1)};
    KernelCall nogil;
    if (!out16 && !ref) return cpu::gemm_bf16(trans_a, trans_b, M, N, K, alpha, A, B, beta, c.f(), N, bp, sums);
    if (!out16) {   // the reference: its product, the sums in double
      cpu::gemm_bf16_ref(trans_a, trans_b, M, N, K, alpha, A, B, beta, c.f(), N, bp);
      if (sums)
        for (index_t j = 0; j < N; ++j) {
          double acc = 0.0;
          for (index_t k = 0; k < K; ++k) {
            const index_t off = trans_b ? j * B.ld + k : k * B.ld + j;
            acc += B.bf16 ? double(bf16_value(static_cast<const std::uint16_t*>(B.data)[off]))
                          : double(static_cast<const float*>(B.data)[off]);
          }
          sums[j] = float(double(sums[j]) + acc);
        }
      return;
    }
    auto* c16 = static_cast<std::uint16_t*>(c.data);
    if (!ref) return cpu::gemm_bf16_out(trans_a, trans_b, M, N, K, A, B, c16, N, bp);
    std::vector<float> r(size_t(M * N));   // the reference: its float32 result, rounded
    cpu::gemm_bf16_ref(trans_a, trans_b, M, N, K, 1.f, A, B, 0.f, r.data(), N, bp);
    cpu::float_to_bf16(M * N, r.data(), c16);
  }, arg("a"), arg("b"), arg("c"), arg("trans_a") = false, arg("trans_b") = false,
     arg("alpha") = 1.0f, arg("beta") = 0.0f, arg("bias") = py::none(), arg("colsum") = py::none(),
     "c = alpha * op(a) @ op(b) + beta * c (+ bias) with bfloat16 products and float32 sums. a, b: "
     "float32 (rounded to bfloat16, nearest even) or bfloat16 (uint16 bits / ml_dtypes.bfloat16); "
     "bias: float32; c: float32, or bfloat16 (then alpha 1 and beta 0: c = op(a) @ op(b) + bias rounded "
     "once to bfloat16). AMX tiles where bf16_level() == 'amx', VDPBF16PS where it is 'avx512bf16'. colsum (float32 (N,), with a float32 c): "
     "colsum += the column sums of op(b) before rounding (the bias gradient of dW = x^T dz, from the "
     "packing of dz).");
  if (ref) return;
  m.def("bf16_level", &cpu::bf16_level, "'amx' when the AMX-BF16 tile kernel runs, 'avx512bf16' when the VDPBF16PS kernel does (no AMX), else 'fp32'");
  m.def("to_bfloat16", [](py::object x_) {
    Arr x = in_f32("to_bfloat16", "x", x_, -1);
    py::array_t<std::uint16_t> y(x.arr.request().shape);
    auto* yp = y.mutable_data();
    {
      KernelCall nogil;
      cpu::float_to_bf16(x.size, x.f(), yp);
    }
    return y;
  }, arg("x"), "float32 -> bfloat16 bits (uint16), round to nearest even; NaN stays NaN");
  m.def("add_bfloat16", [](py::object a_, py::object b_, py::object y_) {
    const char* fn = "add_bfloat16";
    Operand a = operand(fn, "a", a_, -1), b = operand(fn, "b", b_, -1);
    if (!a.bf16 || !b.bf16) fail_type("add_bfloat16: 'a' and 'b' must be bfloat16 (uint16 bits or ml_dtypes.bfloat16)");
    if (a.arr.shape != b.arr.shape)
      fail_value("add_bfloat16: 'a' has shape " + shape_str(a.arr.shape) + ", 'b' " + shape_str(b.arr.shape));
    Arr y = out_bf16(fn, y_, -1, "y");
    expect_shape(fn, "y", y, a.arr.shape);
    KernelCall nogil;
    cpu::add_bf16(a.arr.size, static_cast<const std::uint16_t*>(a.arr.data),
                  static_cast<const std::uint16_t*>(b.arr.data), static_cast<std::uint16_t*>(y.data));
  }, arg("a"), arg("b"), arg("y"),
     "y = a + b for bfloat16 arrays of one shape (C-contiguous): the float32 sum rounded once to "
     "nearest even; y may be a or b");
  m.def("from_bfloat16", [](py::array x_) {
    if (!is_bf16_array(x_)) fail_type("from_bfloat16: argument 'x' must be uint16 bits or ml_dtypes.bfloat16");
    py::array x = py::array::ensure(x_, py::array::c_style);
    py::array_t<float> y(std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
    auto* yp = y.mutable_data();
    const auto* xp = static_cast<const std::uint16_t*>(x.data());
    const index_t n = index_t(x.size());
    {
      KernelCall nogil;
      cpu::bf16_to_float(n, xp, yp);
    }
    return y;
  }, arg("x"), "bfloat16 bits (uint16 or ml_dtypes.bfloat16) -> float32 (exact)");
}
