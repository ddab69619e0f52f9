// conv_dense.h — Conv2D (+ activation) -> Flatten -> Dense (its linear part) as one kernel, forward
// and backward, for the training step of a CNN whose convolution feeds the classifier head.
//
// Unfused, the convolution's output h (N x P x Q x K) makes five trips through memory per step
// (written by the conv, read by the Dense forward, read again for dW, dh written, dh and h read
// by the conv backward): at batch 32 for a 26x26x32 map that is ~14 MB, more than the step's
// arithmetic takes on a core. Here the output rows are cut into blocks that fit in L2 and each
// block of h lives only there: the forward computes it and multiplies it into the logits; the
// backward computes it again (cheaper than storing it), takes dW of the Dense block, dh of the
// block and the convolution's weight gradient from it. Only x, the weights and the gradients
// touch memory. On AVX-512, for narrow convs (K 16 or 32, R*S*C <= 64, ReLU or linear, U <= 16)
// the blocks shrink to one output pixel of all images, kept in L1 (conv_dense_avx512.cpp);
// KILNET_CONV_DENSE_PATH=blocks keeps the blocks.
//
// The convolution's input gradient is not computed (the fused pair is the model's first layers
// or its input needs no gradient): the caller uses the unfused kernels otherwise.
#pragma once
#include "kilnet/common.h"
#include "kilnet/conv2d.h"

namespace kilnet::cpu {

// z[N, U] = flatten(act(conv(x, wc) + bc)) · wd + bd, with wd (P*Q*K) x U in Flatten's order
// (p, q, k). bc and bd may be nullptr. act: Linear, Relu, Sigmoid or Tanh.
void conv_dense_forward(const Conv2dShape& s, Act act, const float* x, const float* wc, const float* bc,
                        index_t U, const float* wd, const float* bd, float* z);
// Given dz (N x U): dwd = h^T dz (overwrite) or dwd += h^T dz; dbd += colsum(dz); dwc += and
// dbc += the convolution's weight and bias gradients. dbd, dbc may be nullptr (no bias); dwc
// nullptr: the Dense's gradients only (dbc ignored). The sums run in a fixed order for a given
// thread count.
void conv_dense_backward(const Conv2dShape& s, Act act, const float* x, const float* wc, const float* bc,
                         index_t U, const float* wd, const float* dz, float* dwc, float* dbc, float* dwd,
                         float* dbd, bool overwrite_dwd);

// DP-SGD's per-example pass, given dz (N x U): per (N rows of R*S*C*K values, then K more when bc)
// := the convolution's weight (and bias) gradient of each example alone, hsq[n] := |h_n|^2, the
// squared norm of example n's flattened convolution output (its Dense weight gradient h_n^T dz_n
// has the squared norm hsq[n] * |dz_n|^2). per does not depend on the thread count, hsq only
// to rounding.
void conv_dense_per_example(const Conv2dShape& s, Act act, const float* x, const float* wc, const float* bc,
                            index_t U, const float* wd, const float* dz, float* per, float* hsq);
// Whether conv_dense_per_example runs its one-pass kernel for taps = R*S*C, act and U units on
// this machine; else it takes each example through the general kernels (~85 us an example on
// the canonical CNN, Zen 4, against ~14 us), slower than DP-SGD's unfused route.
bool conv_dense_per_example_direct(index_t taps, Act act, index_t U);

// The same from the unfused reference kernels (conv2d_*_ref, gemm_ref): for the tests.
void conv_dense_forward_ref(const Conv2dShape& s, Act act, const float* x, const float* wc, const float* bc,
                            index_t U, const float* wd, const float* bd, float* z);
void conv_dense_backward_ref(const Conv2dShape& s, Act act, const float* x, const float* wc, const float* bc,
                             index_t U, const float* wd, const float* dz, float* dwc, float* dbc, float* dwd,
                             float* dbd, bool overwrite_dwd);
void conv_dense_per_example_ref(const Conv2dShape& s, Act act, const float* x, const float* wc, const float* bc,
                                index_t U, const float* wd, const float* dz, float* per, float* hsq);

}  // namespace kilnet::cpu
