// pool2d.h — 2-D max and average pooling and global average pooling, NHWC.
//   N batch, H W input size, C channels, R S pool window, P Q output size.
//   Window (p, q) covers input rows p*stride_h - pad_h + r (r < R) and columns
//   q*stride_w - pad_w + s (s < S); positions outside the input are skipped, never read:
//   - max:     y = max over the window's real positions (padding is never a candidate);
//              ties: the FIRST maximum in scan order (r, then s) wins and alone receives the
//              gradient, as in PyTorch; a NaN in the window propagates (a later NaN wins).
//   - average: y = sum / count of the window's real positions (Keras 'same': the padded
//              positions are not counted, i.e. PyTorch's count_include_pad=False).
//   pad_h/pad_w are the top/left padding; P and Q imply the bottom/right padding (Keras 'same'
//   puts the odd pixel there). Every window must hold at least one real position: the bindings
//   check pad < window and P <= (H + pad_h - 1)/stride_h + 1 (likewise Q).
// Global average pooling: x N x HW x C (HW = H*W), y N x C, y = mean over HW.
// Backward writes dx (overwritten, not accumulated: pooling has no parameters); windows may
// overlap (stride < window), the kernels add up the contributions. Max backward recomputes
// the argmax from x with the forward's comparison, so the gradient lands exactly where the
// forward took its value, without storing indices.
#pragma once
#include "kilnet/common.h"

namespace kilnet {
struct Pool2dShape {
  index_t N, H, W, C;     // input  x: N x H x W x C
  index_t R, S;           // window
  index_t P, Q;           // output y: N x P x Q x C
  index_t stride_h = 1, stride_w = 1;
  index_t pad_h = 0, pad_w = 0;        // top, left
};
}  // namespace kilnet

namespace kilnet::cpu {

void maxpool2d_forward(const Pool2dShape& s, const float* x, float* y);
void maxpool2d_backward(const Pool2dShape& s, const float* x, const float* dy, float* dx);
void maxpool2d_forward_ref(const Pool2dShape& s, const float* x, float* y);
void maxpool2d_backward_ref(const Pool2dShape& s, const float* x, const float* dy, float* dx);

void avgpool2d_forward(const Pool2dShape& s, const float* x, float* y);
void avgpool2d_backward(const Pool2dShape& s, const float* dy, float* dx);
void avgpool2d_forward_ref(const Pool2dShape& s, const float* x, float* y);
void avgpool2d_backward_ref(const Pool2dShape& s, const float* dy, float* dx);

void global_avgpool2d_forward(index_t N, index_t HW, index_t C, const float* x, float* y);
void global_avgpool2d_backward(index_t N, index_t HW, index_t C, const float* dy, float* dx);
void global_avgpool2d_forward_ref(index_t N, index_t HW, index_t C, const float* x, float* y);
void global_avgpool2d_backward_ref(index_t N, index_t HW, index_t C, const float* dy, float* dx);

}  // namespace kilnet::cpu

namespace kilnet::cuda {

// The same operations on device pointers, run on `stream` (the CUDA stream handle; nullptr =
// the legacy default stream). Same comparison and summation order as the CPU kernels: results are
// bit-identical to kilnet::cpu's fast path. Backward gathers (each dx element sums the dy of the
// windows that chose it / cover it), so overlapping windows need no atomics.
void maxpool2d_forward(const Pool2dShape& s, const float* x, float* y, void* stream);
void maxpool2d_backward(const Pool2dShape& s, const float* x, const float* dy, float* dx, void* stream);
void avgpool2d_forward(const Pool2dShape& s, const float* x, float* y, void* stream);
void avgpool2d_backward(const Pool2dShape& s, const float* dy, float* dx, void* stream);
void global_avgpool2d_forward(index_t N, index_t HW, index_t C, const float* x, float* y, void* stream);
void global_avgpool2d_backward(index_t N, index_t HW, index_t C, const float* dy, float* dx, void* stream);

}  // namespace kilnet::cuda
