// activation.cu — elementwise activations and the row softmax on the GPU (see activation.h).
// Elementwise: one grid-stride pass, float4 loads/stores when every pointer is 16-byte aligned
// (a scalar loop does the n % 4 tail), the per-element maths shared with the CPU
// (detail/elementwise.h). In place (y == x, dx == dy) is safe: each element is read and then
// written by the same thread, and no pointer is declared __restrict__.
// Softmax: one warp per row for rows up to 1024 wide (many short rows), the row held in
// registers; one block per row above (a few long rows), three passes over the row (max, sum of
// exp, write) whose re-reads hit L1/L2.
#include "elem_reduce.cuh"
#include "kilnet/activation.h"
#include "kilnet/detail/elementwise.h"

namespace kilnet::cuda {
namespace {

using elem::aligned16;
using elem::stream_grid;

// c[i] = op(a[i], b[i]); with TwoIn false b is not read (op gets a[i] twice).
template <bool TwoIn, class Op>
__global__ void map_kernel(index_t n, bool vec, const float* a, const float* b, float* c, Op op) {
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  const index_t t = index_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const index_t n4 = vec ? n / 4 : 0;
  for (index_t i = t; i < n4; i += stride) {
    const float4 av = reinterpret_cast<const float4*>(a)[i];
    const float4 bv = TwoIn ? reinterpret_cast<const float4*>(b)[i] : av;
    float4 cv;
    cv.x = op(av.x, bv.x); cv.y = op(av.y, bv.y); cv.z = op(av.z, bv.z); cv.w = op(av.w, bv.w);
    reinterpret_cast<float4*>(c)[i] = cv;
  }
  for (index_t i = n4 * 4 + t; i < n; i += stride) c[i] = op(a[i], TwoIn ? b[i] : a[i]);
}

template <Act A> struct Fwd {
  __device__ float operator()(float x, float) const { return detail::act_forward(A, x); }
};
template <Act A> struct Bwd {
  __device__ float operator()(float y, float dy) const { return detail::act_backward(A, y, dy); }
};

template <bool TwoIn, class Op>
void launch_map(index_t n, const float* a, const float* b, float* c, Op op, cudaStream_t s,
                const char* name) {
  if (n <= 0) return;
  const bool vec = aligned16(a, b, c);
  const index_t items = vec ? n / 4 + n % 4 : n;
  map_kernel<TwoIn><<<stream_grid(items), 256, 0, s>>>(n, vec, a, b, c, op);
  KILNET_CHECK_LAUNCH(name);
}

// ---------------------------------------------------------------------------- softmax rows
using elem::BlockGroup;
using elem::WarpGroup;

// The loop over rows is uniform across the group (same row for all its threads), so the
// group's reductions (shuffles or __syncthreads) are always reached by all of them.
template <class G>
__global__ void softmax_forward_kernel(index_t rows, index_t cols, const float* x, float* y) {
  G g;
  for (index_t r = g.first_row(); r < rows; r += g.row_stride()) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    float mx = -INFINITY;
    for (index_t j = g.rank(); j < cols; j += g.size()) mx = fmaxf(mx, xr[j]);
    mx = g.max(mx);
    float s = 0.f;
    for (index_t j = g.rank(); j < cols; j += g.size()) s += expf(xr[j] - mx);
    s = g.sum(s);
    const float inv = 1.f / s;
    for (index_t j = g.rank(); j < cols; j += g.size()) yr[j] = expf(xr[j] - mx) * inv;
  }
}

// dx = y * (dy - <dy, y>); dx may be dy (each element read then written by one thread).
template <class G>
__global__ void softmax_backward_kernel(index_t rows, index_t cols, const float* y, const float* dy,
                                        float* dx) {
  G g;
  for (index_t r = g.first_row(); r < rows; r += g.row_stride()) {
    const float* yr = y + r * cols;
    const float* dyr = dy + r * cols;
    float* dxr = dx + r * cols;
    float dot = 0.f;
    for (index_t j = g.rank(); j < cols; j += g.size()) dot += dyr[j] * yr[j];
    dot = g.sum(dot);
    for (index_t j = g.rank(); j < cols; j += g.size()) dxr[j] = yr[j] * (dyr[j] - dot);
  }
}

// The warp path with the row in registers (with_vpt): one load per element instead of one per
// pass, all of a lane's loads in flight at once. The same per-lane order of operations and the
// same butterflies as the group kernels above would run on a warp.
template <int VPT>
__global__ void softmax_forward_regs_kernel(index_t rows, index_t cols, const float* x, float* y) {
  WarpGroup g;
  const int lane = g.rank();
  for (index_t r = g.first_row(); r < rows; r += g.row_stride()) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    float v[VPT];
    float mx = -INFINITY;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const index_t j = lane + 32 * k;
      v[k] = j < cols ? xr[j] : -INFINITY;
      mx = fmaxf(mx, v[k]);
    }
    mx = g.max(mx);
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < VPT; ++k)
      if (lane + 32 * k < cols) s += expf(v[k] - mx);
    s = g.sum(s);
    const float inv = 1.f / s;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {   // y may be x: every load of this row happened above
      const index_t j = lane + 32 * k;
      if (j < cols) yr[j] = expf(v[k] - mx) * inv;
    }
  }
}

template <int VPT>
__global__ void softmax_backward_regs_kernel(index_t rows, index_t cols, const float* y, const float* dy,
                                             float* dx) {
  WarpGroup g;
  const int lane = g.rank();
  for (index_t r = g.first_row(); r < rows; r += g.row_stride()) {
    const float* yr = y + r * cols;
    const float* dyr = dy + r * cols;
    float* dxr = dx + r * cols;
    float yv[VPT], dv[VPT];
    float dot = 0.f;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const index_t j = lane + 32 * k;
      yv[k] = j < cols ? yr[j] : 0.f;
      dv[k] = j < cols ? dyr[j] : 0.f;
      if (j < cols) dot += dv[k] * yv[k];
    }
    dot = g.sum(dot);
#pragma unroll
    for (int k = 0; k < VPT; ++k) {   // dx may be dy: every load of this row happened above
      const index_t j = lane + 32 * k;
      if (j < cols) dxr[j] = yv[k] * (dv[k] - dot);
    }
  }
}

constexpr index_t kWarpRowMax = 1024;   // widest row one warp handles (32 lanes x 32 registers)

struct RowLaunch { unsigned grid; int block; bool warp; };
inline RowLaunch row_launch(index_t rows, index_t cols) {
  if (cols <= kWarpRowMax) {
    const int block = 256;   // 8 rows per block
    const index_t g = ceil_div(rows, block / 32);
    return {unsigned(std::min<index_t>(g, 132 * 64)), block, true};
  }
  const int block = cols > 4096 ? 1024 : 256;
  return {unsigned(std::min<index_t>(rows, 132 * 16)), block, false};
}

}  // namespace

void activation_forward(Act act, index_t n, const float* x, float* y, void* stream) {
  cudaStream_t s = as_stream(stream);
  switch (act) {
    case Act::Relu: launch_map<false>(n, x, x, y, Fwd<Act::Relu>{}, s, "activation_forward(relu)"); break;
    case Act::Sigmoid: launch_map<false>(n, x, x, y, Fwd<Act::Sigmoid>{}, s, "activation_forward(sigmoid)"); break;
    case Act::Tanh: launch_map<false>(n, x, x, y, Fwd<Act::Tanh>{}, s, "activation_forward(tanh)"); break;
    case Act::Linear:
      if (x != y && n > 0)
        check(cudaMemcpyAsync(y, x, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice, s),
              "activation_forward(linear) copy");
      break;
    default: throw std::invalid_argument("activation_forward: use softmax_forward");
  }
}

void activation_backward(Act act, index_t n, const float* y, const float* dy, float* dx, void* stream) {
  cudaStream_t s = as_stream(stream);
  switch (act) {
    case Act::Relu: launch_map<true>(n, y, dy, dx, Bwd<Act::Relu>{}, s, "activation_backward(relu)"); break;
    case Act::Sigmoid: launch_map<true>(n, y, dy, dx, Bwd<Act::Sigmoid>{}, s, "activation_backward(sigmoid)"); break;
    case Act::Tanh: launch_map<true>(n, y, dy, dx, Bwd<Act::Tanh>{}, s, "activation_backward(tanh)"); break;
    case Act::Linear:
      if (dx != dy && n > 0)
        check(cudaMemcpyAsync(dx, dy, size_t(n) * sizeof(float), cudaMemcpyDeviceToDevice, s),
              "activation_backward(linear) copy");
      break;
    default: throw std::invalid_argument("activation_backward: use softmax_backward");
  }
}

void softmax_forward(index_t rows, index_t cols, const float* x, float* y, void* stream) {
  if (rows <= 0 || cols <= 0) return;
  const RowLaunch L = row_launch(rows, cols);
  cudaStream_t s = as_stream(stream);
  if (L.warp)
    elem::with_vpt(cols, [&](auto vpt) {
      softmax_forward_regs_kernel<decltype(vpt)::value><<<L.grid, L.block, 0, s>>>(rows, cols, x, y);
    });
  else
    softmax_forward_kernel<BlockGroup><<<L.grid, L.block, 0, s>>>(rows, cols, x, y);
  KILNET_CHECK_LAUNCH("softmax_forward_kernel");
}

void softmax_backward(index_t rows, index_t cols, const float* y, const float* dy, float* dx, void* stream) {
  if (rows <= 0 || cols <= 0) return;
  const RowLaunch L = row_launch(rows, cols);
  cudaStream_t s = as_stream(stream);
  if (L.warp)
    elem::with_vpt(cols, [&](auto vpt) {
      softmax_backward_regs_kernel<decltype(vpt)::value><<<L.grid, L.block, 0, s>>>(rows, cols, y, dy, dx);
    });
  else
    softmax_backward_kernel<BlockGroup><<<L.grid, L.block, 0, s>>>(rows, cols, y, dy, dx);
  KILNET_CHECK_LAUNCH("softmax_backward_kernel");
}

}  // namespace kilnet::cuda
