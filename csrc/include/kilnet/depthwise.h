// depthwise.h — depthwise 2-D convolution, NHWC (Keras's DepthwiseConv2D).
//   N batch, H W input size, C in channels, M depth multiplier, R S kernel size, P Q output size.
//   Weights R x S x C x M (Keras: kh, kw, in, depth_multiplier); output channel c*M + m.
//   y[n,p,q,c*M+m] = b[c*M+m] + sum_{r,s} x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, c] * w[r,s,c,m]
//   Out-of-range input positions read as zero; pad_h/pad_w are the top/left padding and P, Q
//   imply the bottom/right padding, as in conv2d.h.
#pragma once
#include "kilnet/common.h"

namespace kilnet {
struct Depthwise2dShape {
  index_t N, H, W, C;     // input  x: N x H x W x C
  index_t M, R, S;        // weight w: R x S x C x M
  index_t P, Q;           // output y: N x P x Q x (C*M)
  index_t stride_h = 1, stride_w = 1;
  index_t pad_h = 0, pad_w = 0;        // top, left
  index_t dilation_h = 1, dilation_w = 1;
};
}  // namespace kilnet

namespace kilnet::cpu {

// y = conv(x, w) + b (b may be nullptr). OpenMP over output rows.
void depthwise2d_forward(const Depthwise2dShape& s, const float* x, const float* w, const float* b, float* y);
void depthwise2d_forward_ref(const Depthwise2dShape& s, const float* x, const float* w, const float* b,
                             float* y);

// Given dy: dx = grad wrt x (overwritten; nullptr to skip), dw += grad wrt w, db += grad wrt b
// (db may be nullptr). dw/db are summed in a fixed order for a given thread count.
void depthwise2d_backward(const Depthwise2dShape& s, const float* dy, const float* x, const float* w,
                          float* dx, float* dw, float* db);
void depthwise2d_backward_ref(const Depthwise2dShape& s, const float* dy, const float* x, const float* w,
                              float* dx, float* dw, float* db);

}  // namespace kilnet::cpu
