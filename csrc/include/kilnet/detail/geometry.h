// geometry.h — the geometry rules of the sliding-window kernels (conv2d, its input gradient,
// depthwise conv, pooling), shared by the Python bindings (csrc/python/args_*.h) and the C API
// (csrc/capi) so that both refuse the same calls, before any kernel runs or allocates.
// Header-only and inline; included by front ends only, never by a kernel file (the AVX-512
// rule about shared inline functions does not arise). Not part of the public API.
//
// The rules (issue 22), per spatial axis:
//   * strides, dilations and pool sizes are in [1, kGeomMax]; paddings in [0, kGeomMax];
//   * the dilated window (taps - 1) * dilation + 1 and the padded extent the kernels index,
//     max(size + pad, (out - 1) * stride + window), are at most kGeomMax (2**31 - 1);
//   * the output size is one the input can produce (1 <= out <= the largest Keras/PyTorch
//     output for that padding);
// and over the image: the padded image (padded height x padded width x channels) is at most
// 4x the image plus kPadSlack elements (the fast kernels stage padded rows; this bounds their
// scratch by the arrays the caller passed, so a tiny image cannot ask for terabytes), and the
// kernel's work count (the product of every loop bound) fits in int64.
// Every computation below stays inside int64: operands are capped before they are multiplied,
// and the products of array dimensions use __builtin_mul_overflow.
#pragma once
#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <string>
#include "kilnet/common.h"

namespace kilnet::detail {

constexpr index_t kGeomMax = (index_t(1) << 31) - 1;   // strides, paddings, windows, extents
constexpr index_t kPadSlack = index_t(1) << 24;        // padded-image elements beyond 4x the image
// How the message of an impossible output size starts (the C API returns KILNET_ERR_SHAPE then).
constexpr const char* kGeomShapeError = "output must have shape";

// a * b into *r, false when the product overflows int64 (or an operand is negative).
inline bool geom_mul(index_t a, index_t b, index_t* r) {
  return a >= 0 && b >= 0 && !__builtin_mul_overflow(a, b, r);
}

// The product of n sizes, or -1 when it overflows int64.
inline index_t geom_product(std::initializer_list<index_t> sizes) {
  index_t r = 1;
  for (index_t s : sizes)
    if (!geom_mul(r, s, &r)) return -1;
  return r;
}

// "'strides'[0] = 4294967296 must be in [1, 2147483647]", or "" when v is in [lo, kGeomMax].
inline std::string geom_range(const char* arg, int axis, index_t v, index_t lo) {
  if (v >= lo && v <= kGeomMax) return "";
  return std::string("'") + arg + "'[" + std::to_string(axis) + "] = " + std::to_string(v) +
         " must be in [" + std::to_string(lo) + ", " + std::to_string(kGeomMax) + "]";
}

// One axis of a convolution: input size `in` (H), `taps` (R), stride, top/left `pad`, dilation,
// output size `out` (P). The bottom/right padding is what `out` implies: from none up to
// max(pad, window - 1) (symmetric explicit padding, or Keras 'same' with the odd pixel at the
// bottom). Fills max_out and extent; returns "" or what is wrong, naming the argument.
struct ConvAxis {
  index_t window = 0, max_out = 0, extent = 0;
};

inline std::string conv_axis(int axis, index_t in, index_t taps, index_t stride, index_t pad,
                             index_t dil, index_t out, ConvAxis* a) {
  const char* dim = axis == 0 ? "height" : "width";
  std::string e;
  if (!(e = geom_range("strides", axis, stride, 1)).empty()) return e;
  if (!(e = geom_range("dilation", axis, dil, 1)).empty()) return e;
  if (!(e = geom_range("padding", axis, pad, 0)).empty()) return e;
  if (in < 1 || in > kGeomMax)
    return std::string("the input ") + dim + " " + std::to_string(in) + " must be in [1, " +
           std::to_string(kGeomMax) + "]";
  if (taps < 1 || taps > kGeomMax)
    return std::string("the kernel ") + dim + " " + std::to_string(taps) + " must be in [1, " +
           std::to_string(kGeomMax) + "]";
  a->window = (taps - 1) * dil + 1;   // both <= 2**31 - 1: no overflow
  if (a->window > kGeomMax)
    return "'dilation'[" + std::to_string(axis) + "] = " + std::to_string(dil) + " with a kernel " + dim +
           " of " + std::to_string(taps) + " spans " + std::to_string(a->window) +
           " input positions; at most " + std::to_string(kGeomMax);
  // Every term is below 2**31, so the sum is far from overflowing.
  a->max_out = (in + pad + std::max(pad, a->window - 1) - a->window) / stride + 1;
  if (out < 1 || out > a->max_out)
    return std::string(kGeomShapeError) + " with its " + dim + " in [1, " + std::to_string(a->max_out) +
           "], got " + std::to_string(out) + ": that is what an input " + dim + " of " + std::to_string(in) +
           " can produce with kernel " + std::to_string(taps) + ", 'strides' " + std::to_string(stride) +
           ", 'padding' " + std::to_string(pad) + ", 'dilation' " + std::to_string(dil);
  a->extent = std::max(in + pad, (out - 1) * stride + a->window);
  if (a->extent > kGeomMax)
    return "'padding'[" + std::to_string(axis) + "] = " + std::to_string(pad) + " makes the padded " + dim +
           " " + std::to_string(a->extent) + "; at most " + std::to_string(kGeomMax);
  return "";
}

// The image-wide rules of a convolution once both axes passed conv_axis: the padded image is
// bounded by the image, and the work count (N*P*Q*K*R*S*C, K = output channels) fits int64.
inline std::string conv_image(const ConvAxis& h, const ConvAxis& w, index_t N, index_t H, index_t W,
                              index_t C, index_t P, index_t Q, index_t K, index_t R, index_t S) {
  const index_t image = geom_product({H, W, C});
  if (image < 0 || image > (index_t(1) << 60) || geom_product({2, N, P, Q, K, R, S, C}) < 0)
    return "the sizes overflow the kernel's index arithmetic (N*P*Q*K*R*S*C must fit in int64)";
  const index_t padded = geom_product({h.extent, w.extent, C});
  if (padded < 0 || padded > 4 * image + kPadSlack)
    return "'padding'/'dilation' make the padded image " + std::to_string(h.extent) + " x " +
           std::to_string(w.extent) + " x " + std::to_string(C) + " for an input image of " + std::to_string(H) +
           " x " + std::to_string(W) + " x " + std::to_string(C) + "; it may be at most 4x the image plus " +
           std::to_string(kPadSlack) + " elements";
  return "";
}

// One axis of a pooling window: input size, pool size, stride, top/left pad, output size. Every
// window must overlap the input: pad < pool and out <= (in + pad - 1) / stride + 1.
inline std::string pool_axis(int axis, index_t in, index_t pool, index_t stride, index_t pad, index_t out,
                             index_t* max_out) {
  const char* dim = axis == 0 ? "height" : "width";
  std::string e;
  if (!(e = geom_range("pool_size", axis, pool, 1)).empty()) return e;
  if (!(e = geom_range("strides", axis, stride, 1)).empty()) return e;
  if (pad < 0 || pad >= pool)
    return "'padding'[" + std::to_string(axis) + "] = " + std::to_string(pad) +
           " must be >= 0 and smaller than the pool window " + std::to_string(pool);
  if (in < 1 || in > kGeomMax)
    return std::string("the input ") + dim + " " + std::to_string(in) + " must be in [1, " +
           std::to_string(kGeomMax) + "]";
  *max_out = (in + pad - 1) / stride + 1;
  if (out < 1 || out > *max_out)
    return std::string(kGeomShapeError) + " with its " + dim + " in [1, " + std::to_string(*max_out) +
           "], got " + std::to_string(out) + ": that is what an input " + dim + " of " + std::to_string(in) +
           " can produce with 'pool_size' " + std::to_string(pool) + ", 'strides' " + std::to_string(stride) +
           ", 'padding' " + std::to_string(pad);
  return "";
}

// Pooling over the image: the window's tap count indexes an int32 (the max-pool backward's
// winner), and the work count N*P*Q*C*R*S fits int64.
inline std::string pool_image(index_t N, index_t P, index_t Q, index_t C, index_t R, index_t S) {
  if (geom_product({R, S}) > kGeomMax)
    return "'pool_size' (" + std::to_string(R) + ", " + std::to_string(S) + ") has more than " +
           std::to_string(kGeomMax) + " positions";
  if (geom_product({N, P, Q, C, R, S}) < 0)
    return "the sizes overflow the kernel's index arithmetic (N*P*Q*C*R*S must fit in int64)";
  return "";
}

}  // namespace kilnet::detail
