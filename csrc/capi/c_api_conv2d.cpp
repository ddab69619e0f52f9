// c_api_conv2d.cpp — the C API of the conv2d family (kilnet/c_api.h, kilnet/conv2d.h).
#include <algorithm>
#include "capi_internal.h"
#include "kilnet/conv2d.h"
#include "kilnet/detail/geometry.h"

using namespace kilnet;
using namespace kilnet::capi;

namespace {

// Kernel extent along one axis: (R - 1) * dilation + 1.
int64_t extent(int64_t r, int64_t dilation) { return mul(r - 1, dilation) + 1; }

// The checks of csrc/python/args_conv2d.h, through the same rules (kilnet/detail/geometry.h):
// sizes, strides, padding and dilation in range with no overflow in the index arithmetic, an
// output size that the kernel can compute (the bottom/right padding P and Q imply is at most
// max(top padding, extent - 1)), and a padded image bounded by the image. Returns the C++ shape.
Conv2dShape checked(const kilnet_conv2d_shape* s) {
  need("s", s);
  positive("s->N", s->N); positive("s->H", s->H); positive("s->W", s->W); positive("s->C", s->C);
  positive("s->K", s->K); positive("s->R", s->R); positive("s->S", s->S);
  positive("s->stride_h", s->stride_h); positive("s->stride_w", s->stride_w);
  positive("s->dilation_h", s->dilation_h); positive("s->dilation_w", s->dilation_w);
  if (s->pad_h < 0 || s->pad_w < 0)
    fail(KILNET_ERR_INVALID_VALUE, "padding must be >= 0, got pad_h = ", s->pad_h, ", pad_w = ", s->pad_w);
  // Every buffer's size must be representable.
  product({s->N, s->H, s->W, s->C}); product({s->R, s->S, s->C, s->K}); product({s->N, s->P, s->Q, s->K});
  detail::ConvAxis ah, aw;
  std::string e = detail::conv_axis(0, s->H, s->R, s->stride_h, s->pad_h, s->dilation_h, s->P, &ah);
  if (e.empty()) e = detail::conv_axis(1, s->W, s->S, s->stride_w, s->pad_w, s->dilation_w, s->Q, &aw);
  if (e.empty()) e = detail::conv_image(ah, aw, s->N, s->H, s->W, s->C, s->P, s->Q, s->K, s->R, s->S);
  if (!e.empty()) {
    // An impossible P or Q is a shape error (as before); everything else an invalid value.
    if (e.rfind(detail::kGeomShapeError, 0) == 0)
      fail(KILNET_ERR_SHAPE, "output size P x Q = ", s->P, " x ", s->Q, " is impossible: ", e,
           " (kilnet_conv2d_shape_init computes Keras's)");
    fail(KILNET_ERR_INVALID_VALUE, e);
  }
  Conv2dShape c;
  c.N = s->N; c.H = s->H; c.W = s->W; c.C = s->C;
  c.K = s->K; c.R = s->R; c.S = s->S; c.P = s->P; c.Q = s->Q;
  c.stride_h = s->stride_h; c.stride_w = s->stride_w;
  c.pad_h = s->pad_h; c.pad_w = s->pad_w;
  c.dilation_h = s->dilation_h; c.dilation_w = s->dilation_w;
  return c;
}

// Keras's output length and top/left padding of one axis (layers/conv.py conv_output_length).
void keras_axis(const char* axis, int64_t size, int64_t kernel, int64_t stride, int64_t dilation,
                int padding, int64_t* out, int64_t* pad) {
  // The ranges of kilnet/detail/geometry.h first, so that the arithmetic below cannot overflow.
  for (const std::string& e : {detail::geom_range("strides", axis[0] == 'H' ? 0 : 1, stride, 1),
                               detail::geom_range("dilation", axis[0] == 'H' ? 0 : 1, dilation, 1)})
    if (!e.empty()) fail(KILNET_ERR_INVALID_VALUE, e);
  if (size > detail::kGeomMax || kernel > detail::kGeomMax)
    fail(KILNET_ERR_INVALID_VALUE, "input ", axis, " = ", size, " or its kernel size ", kernel, " exceeds ",
         detail::kGeomMax);
  const int64_t eff = extent(kernel, dilation);
  if (padding == KILNET_PADDING_VALID) {
    if (size < eff)
      fail(KILNET_ERR_SHAPE, "input ", axis, " = ", size, " is smaller than the kernel extent ", eff,
           " with 'valid' padding");
    *out = (size - eff) / stride + 1;
    *pad = 0;
  } else {
    *out = (size + stride - 1) / stride;
    *pad = std::max<int64_t>((*out - 1) * stride + eff - size, 0) / 2;
  }
}

int forward(const char* fn, const kilnet_conv2d_shape* s, const float* x, const float* w,
            const float* b, int act, float* y) {
  return guarded(fn, [&] {
    const Conv2dShape c = checked(s);
    const Act a = elementwise_act(act);
    need("x", x); need("w", w); need("y", y);
    const Span ys = span("y", y, c.N * c.P * c.Q * c.K);
    no_overlap(ys, span("x", x, c.N * c.H * c.W * c.C));
    no_overlap(ys, span("w", w, c.R * c.S * c.C * c.K));
    if (b) no_overlap(ys, span("b", b, c.K));
    cpu::conv2d_forward(c, x, w, b, y, a);
  });
}

// y, the forward output, is read only when act is not linear (and must not be NULL then).
int backward(const char* fn, const kilnet_conv2d_shape* s, const float* dy, const float* x,
             const float* w, int act, const float* y, float* dx, float* dw, float* db) {
  return guarded(fn, [&] {
    const Conv2dShape c = checked(s);
    const Act a = elementwise_act(act);
    need("dy", dy); need("x", x); need("w", w); need("dw", dw);
    if (a != Act::Linear) need("y", y);
    const Span dys = span("dy", dy, c.N * c.P * c.Q * c.K), xs = span("x", x, c.N * c.H * c.W * c.C),
               ws = span("w", w, c.R * c.S * c.C * c.K), dws = span("dw", dw, c.R * c.S * c.C * c.K),
               dxs = span("dx", dx, c.N * c.H * c.W * c.C), dbs = span("db", db, c.K),
               ys = span("y", y, c.N * c.P * c.Q * c.K);
    for (const Span& out : {dxs, dws, dbs})
      for (const Span& other : {dys, xs, ws, ys, dxs, dws, dbs})
        if (out.name != other.name) no_overlap(out, other);   // each pair, not itself
    cpu::conv2d_backward(c, dy, x, w, dx, dw, db, a, a == Act::Linear ? nullptr : y);
  });
}

}  // namespace

extern "C" {

int kilnet_conv2d_shape_init(kilnet_conv2d_shape* s, int64_t N, int64_t H, int64_t W, int64_t C,
                             int64_t K, int64_t R, int64_t S, int64_t stride_h, int64_t stride_w,
                             int64_t dilation_h, int64_t dilation_w, int padding) {
  return guarded("kilnet_conv2d_shape_init", [&] {
    need("s", s);
    positive("N", N); positive("H", H); positive("W", W); positive("C", C);
    positive("K", K); positive("R", R); positive("S", S);
    positive("stride_h", stride_h); positive("stride_w", stride_w);
    positive("dilation_h", dilation_h); positive("dilation_w", dilation_w);
    if (padding != KILNET_PADDING_VALID && padding != KILNET_PADDING_SAME)
      fail(KILNET_ERR_INVALID_VALUE, "'padding' must be KILNET_PADDING_VALID (0) or KILNET_PADDING_SAME (1), got ", padding);
    kilnet_conv2d_shape t{};
    t.N = N; t.H = H; t.W = W; t.C = C; t.K = K; t.R = R; t.S = S;
    t.stride_h = stride_h; t.stride_w = stride_w;
    t.dilation_h = dilation_h; t.dilation_w = dilation_w;
    keras_axis("H", H, R, stride_h, dilation_h, padding, &t.P, &t.pad_h);
    keras_axis("W", W, S, stride_w, dilation_w, padding, &t.Q, &t.pad_w);
    checked(&t);
    *s = t;
  });
}

int kilnet_conv2d_forward_act(const kilnet_conv2d_shape* s, const float* x, const float* w,
                              const float* b, int act, float* y) {
  return forward("kilnet_conv2d_forward_act", s, x, w, b, act, y);
}

int kilnet_conv2d_backward_act(const kilnet_conv2d_shape* s, const float* dy, const float* x,
                               const float* w, int act, const float* y, float* dx, float* dw,
                               float* db) {
  return backward("kilnet_conv2d_backward_act", s, dy, x, w, act, y, dx, dw, db);
}

// The entry points from before activations were fused, unchanged (C API version 1): linear.
int kilnet_conv2d_forward(const kilnet_conv2d_shape* s, const float* x, const float* w,
                          const float* b, float* y) {
  return forward("kilnet_conv2d_forward", s, x, w, b, KILNET_ACT_LINEAR, y);
}

int kilnet_conv2d_backward(const kilnet_conv2d_shape* s, const float* dy, const float* x,
                           const float* w, float* dx, float* dw, float* db) {
  return backward("kilnet_conv2d_backward", s, dy, x, w, KILNET_ACT_LINEAR, nullptr, dx, dw, db);
}

}  // extern "C"
