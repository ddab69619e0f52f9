// conv2d.h — 2-D convolution (cross-correlation, as Keras and PyTorch compute it).
//   N batch, H W input size, C in channels, K out channels, R S kernel size,
//   P Q output size. Activations NHWC, weights RSCK (Keras: kh, kw, in, out).
//   y[n,p,q,k] = b[k] + sum_{r,s,c} x[n, p*sh - ph + r*dh, q*sw - pw + s*dw, c] * w[r,s,c,k]
//   Out-of-range input positions read as zero. pad_h/pad_w are the top/left padding; the
//   bottom/right padding is whatever P and Q imply (Keras 'same' puts the odd pixel there).
#pragma once
#include "kilnet/common.h"

namespace kilnet {
struct Conv2dShape {
  index_t N, H, W, C;     // input  x: N x H x W x C
  index_t K, R, S;        // weight w: R x S x C x K
  index_t P, Q;           // output y: N x P x Q x K
  index_t stride_h = 1, stride_w = 1;
  index_t pad_h = 0, pad_w = 0;        // top, left
  index_t dilation_h = 1, dilation_w = 1;
};
}  // namespace kilnet

namespace kilnet::cpu {

// The fast versions run on omp_get_max_threads() threads. With AVX2+FMA they are direct kernels
// (conv2d_avx2.cpp) that read the windows straight from x; otherwise (or with
// KILNET_CONV_PATH=gemm) im2col of a block of output pixels at a time, then gemm. They allocate
// only small per-call and per-thread buffers, and dw/db are summed in a fixed order for a given
// thread count.

// y = act(conv(x, w) + b); b may be nullptr. act is Linear, Relu, Sigmoid or Tanh (not Softmax),
// applied as each tile is stored, so the activation costs no pass over y.
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    Act act = Act::Linear);
void conv2d_forward_ref(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                        Act act = Act::Linear);

// Gradients of y = act(conv(x, w) + b) given dy (N x P x Q x K) and, unless act is Linear, the
// forward OUTPUT y (N x P x Q x K; nullptr for Linear): the kernels use dz = act'(y) * dy
// (relu: y > 0 ? dy : 0) on the fly, never writing dz out.
// dx = grad wrt x (overwritten; nullptr to skip, e.g. for the first layer),
// dw += grad wrt w, db += grad wrt b (db may be nullptr).
void conv2d_backward(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                     float* dx, float* dw, float* db, Act act = Act::Linear, const float* y = nullptr);
void conv2d_backward_ref(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                         float* dx, float* dw, float* db, Act act = Act::Linear, const float* y = nullptr);

// The input gradient alone (dx overwritten), as conv2d_backward computes it, without the weight
// gradient: what a layer needs when its weights are frozen, and the forward pass of a
// transposed convolution (x of Conv2DTranspose as dy here, its output as dx).
void conv2d_backward_input(const Conv2dShape& s, const float* dy, const float* w, float* dx,
                           Act act = Act::Linear, const float* y = nullptr);
void conv2d_backward_input_ref(const Conv2dShape& s, const float* dy, const float* w, float* dx,
                               Act act = Act::Linear, const float* y = nullptr);

// Every example's own weight gradient (DP-SGD's per-example norms): row i of per (N rows of
// R*S*C*K values, then K more for the bias when `bias`) += conv2d_backward's dw (| db) of example
// i alone. Examples are spread over the threads, each running the kernel on one thread; a row
// does not depend on the thread count.
void conv2d_backward_per_example(const Conv2dShape& s, const float* dy, const float* x, const float* w, float* per,
                                 bool bias, Act act = Act::Linear, const float* y = nullptr);
void conv2d_backward_per_example_ref(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                                     float* per, bool bias, Act act = Act::Linear, const float* y = nullptr);

}  // namespace kilnet::cpu

namespace kilnet::cuda {

// The same on device pointers, run on `stream`: implicit GEMM (no im2col buffer in memory),
// forward, data gradient and weight gradient; TF32 tensor cores only when tf32() is on.
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    Act act, void* stream);
void conv2d_backward(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                     float* dx, float* dw, float* db, Act act, const float* y, void* stream);

}  // namespace kilnet::cuda
