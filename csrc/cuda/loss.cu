// loss.cu — the losses and their gradients on the GPU, Keras semantics exactly as loss.cpp.
// Each loss is two launches: a kernel that writes the gradient and one double partial sum per
// block (a fixed grid for given sizes, so the same order every time), then one block that sums
// the partials in order (no float atomics: the value is deterministic). The value either goes
// to a device float `out` (no synchronization: the training loop) or is copied back to the host.
// Pointwise losses (mse, mae, bce) are a grid-stride loop over all elements; the row losses
// (categorical forms, fused softmax) give each row to a warp (cols <= 1024) or a block.
// Integer labels are validated on the device: an out-of-range label is never used as an index
// (the read is clamped), its row's loss and gradient are NaN, and the first bad row is recorded
// so that the value-returning form raises ValueError like the CPU.
#include <climits>
#include <stdexcept>
#include <string>
#include "elem_reduce.cuh"
#include "kilnet/detail/elementwise.h"
#include "kilnet/loss.h"

namespace kilnet::cuda {
namespace {

using elem::BlockGroup;
using elem::block_sum;
using elem::kReduceBlocks;
using elem::WarpGroup;

constexpr float kEps = cpu::kProbEps;
// The CPU's clipf: std::min(std::max(p, eps), 1 - eps), NaN stays NaN.
__device__ __forceinline__ float clipf(float p) {
  const float a = p < kEps ? kEps : p;
  const float hi = 1.f - kEps;
  return hi < a ? hi : a;
}

// ---------------------------------------------------------------------- pointwise losses
struct MseOp {
  __device__ double operator()(float p, float t, float* g, float gs) const {
    const double d = double(p) - t;   // in double: the square of a float difference can overflow
    if (g) *g = float(gs * d);
    return d * d;
  }
};
struct MaeOp {
  __device__ double operator()(float p, float t, float* g, float gs) const {
    const double d = double(p) - t;
    if (g) *g = d > 0 ? gs : (d < 0 ? -gs : 0.f);
    return fabs(d);
  }
};
struct BceLogitsOp {
  __device__ double operator()(float p, float t, float* g, float gs) const {
    if (g) *g = (detail::sigmoidf(p) - t) * gs;
    return detail::bce_logits(p, t);
  }
};
struct BceProbOp {
  __device__ double operator()(float p, float t, float* g, float gs) const {
    const float pc = clipf(p);
    if (g) *g = (pc == p) ? (p - t) / (p * (1.f - p)) * gs : 0.f;
    return -double(t * logf(pc) + (1.f - t) * logf(1.f - pc));
  }
};

template <class Op>
__global__ void __launch_bounds__(256) pointwise_loss_kernel(index_t n, const float* p, const float* t,
                                                             float* grad, float gs, Op op, double* partial) {
  const index_t stride = index_t(gridDim.x) * blockDim.x;
  double acc = 0.0;
  for (index_t i = index_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    acc += op(p[i], t[i], grad ? grad + i : nullptr, gs);
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// ---------------------------------------------------------------------- row losses
// Where a row's target comes from: dense (t != nullptr) or an int64 label per row.
struct RowTarget {
  const float* t;              // rows x cols, or nullptr
  const std::int64_t* labels;  // rows, or nullptr
};

__device__ __forceinline__ void record_bad(unsigned long long* bad, index_t r) {
  atomicMin(bad, static_cast<unsigned long long>(r));   // the first bad row, whatever the order
}

// Categorical cross-entropy of one row (cce_row in loss.cpp): q = p / sum(p), clipped;
// g_j = -t_j/q_j where not clipped, grad = (g - <g, q>)/s * scale. Returns the row loss.
template <class G>
__device__ double cce_row(const G& g, index_t r, index_t cols, const float* p, RowTarget tg,
                          float* grad, float scale, unsigned long long* bad) {
  const float* pr = p + r * cols;
  float* gr = grad ? grad + r * cols : nullptr;
  std::int64_t y = -1;
  bool valid = true;
  if (tg.labels) {
    y = tg.labels[r];
    valid = y >= 0 && y < cols;
    if (!valid && g.rank() == 0) record_bad(bad, r);
  }
  double s = 0.0;
  for (index_t j = g.rank(); j < cols; j += g.size()) s += pr[j];
  s = g.sum(s);
  const float inv_s = s > 0 ? float(1.0 / s) : 0.f;
  double loss = 0.0, gq = 0.0;
  for (index_t j = g.rank(); j < cols; j += g.size()) {
    const float t = tg.labels ? (j == y ? 1.f : 0.f) : tg.t[r * cols + j];
    const float q = pr[j] * inv_s;
    const float qc = clipf(q);
    if (t != 0.f) loss -= double(t) * double(logf(qc));
    if (gr) {
      const float gj = (q == qc && t != 0.f) ? -t / q : 0.f;
      gr[j] = gj;
      gq += double(gj) * q;
    }
  }
  loss = g.sum(loss);
  gq = g.sum(gq);
  if (gr)   // each thread re-reads only the elements it wrote above (same j loop)
    for (index_t j = g.rank(); j < cols; j += g.size())
      gr[j] = valid ? float((gr[j] - gq) * inv_s) * scale : NAN;
  return valid ? loss : NAN;
}

// Fused softmax + cross-entropy of one row (softmax_crossentropy in loss.cpp).
template <class G>
__device__ double smce_row(const G& g, index_t r, index_t cols, const float* x, RowTarget tg,
                           float* probs, float* grad, float scale, unsigned long long* bad) {
  const float* xr = x + r * cols;
  float mx = -INFINITY;
  for (index_t j = g.rank(); j < cols; j += g.size()) mx = fmaxf(mx, xr[j]);
  mx = g.max(mx);
  double sum = 0.0;
  for (index_t j = g.rank(); j < cols; j += g.size()) sum += double(expf(xr[j] - mx));
  sum = g.sum(sum);
  // -log softmax_j = (mx - x_j) + log(sum), never mx + log(sum) formed in float.
  const double logsum = log(sum);
  const float inv = float(1.0 / sum);
  double loss = 0.0, tsum = 1.0;
  std::int64_t y = -1;
  bool valid = true;
  if (tg.labels) {
    y = tg.labels[r];
    valid = y >= 0 && y < cols;
    if (!valid && g.rank() == 0) record_bad(bad, r);
    const index_t yc = valid ? index_t(y) : 0;   // never read outside the row
    loss = valid ? (double(mx) - xr[yc]) + logsum : NAN;
  } else {
    const float* tr = tg.t + r * cols;
    double ls = 0.0, ts = 0.0;
    for (index_t j = g.rank(); j < cols; j += g.size()) {
      ls += double(tr[j]) * ((double(mx) - xr[j]) + logsum);
      ts += tr[j];
    }
    loss = g.sum(ls);
    tsum = g.sum(ts);
  }
  const float tsumf = float(tsum);
  if (probs || grad) {
    float* pr = probs ? probs + r * cols : nullptr;
    float* gr = grad ? grad + r * cols : nullptr;
    for (index_t j = g.rank(); j < cols; j += g.size()) {
      const float pj = expf(xr[j] - mx) * inv;
      if (pr) pr[j] = pj;
      if (gr) {
        const float tj = tg.labels ? (j == y ? 1.f : 0.f) : tg.t[r * cols + j];
        gr[j] = valid ? (pj * tsumf - tj) * scale : NAN;
      }
    }
  }
  return loss;
}

// smce_row for one warp with the row in registers (elem::with_vpt: VPT values per lane, cols <=
// 32 * VPT): one load of each logit instead of one per pass. The same per-lane order of
// operations and the same butterflies as smce_row<WarpGroup>, so the same bits.
template <int VPT>
__device__ double smce_row_regs(index_t r, index_t cols, const float* x, RowTarget tg, float* probs,
                                float* grad, float scale, unsigned long long* bad) {
  const int lane = threadIdx.x & 31;
  const float* xr = x + r * cols;
  float v[VPT];
  float mx = -INFINITY;
#pragma unroll
  for (int k = 0; k < VPT; ++k) {
    const index_t j = lane + 32 * k;
    v[k] = j < cols ? xr[j] : -INFINITY;
    mx = fmaxf(mx, v[k]);
  }
  mx = elem::warp_max(mx);
  double sum = 0.0;
#pragma unroll
  for (int k = 0; k < VPT; ++k)
    if (lane + 32 * k < cols) sum += double(expf(v[k] - mx));
  sum = elem::warp_sum(sum);
  const double logsum = log(sum);
  const float inv = float(1.0 / sum);
  double loss = 0.0, tsum = 1.0;
  std::int64_t y = -1;
  bool valid = true;
  if (tg.labels) {
    y = tg.labels[r];
    valid = y >= 0 && y < cols;
    if (!valid && lane == 0) record_bad(bad, r);
    const index_t yc = valid ? index_t(y) : 0;   // never read outside the row
    loss = valid ? (double(mx) - xr[yc]) + logsum : NAN;
  } else {
    const float* tr = tg.t + r * cols;
    double ls = 0.0, ts = 0.0;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const index_t j = lane + 32 * k;
      if (j < cols) {
        const float tj = tr[j];
        ls += double(tj) * ((double(mx) - v[k]) + logsum);
        ts += tj;
      }
    }
    loss = elem::warp_sum(ls);
    tsum = elem::warp_sum(ts);
  }
  const float tsumf = float(tsum);
  if (probs || grad) {
    float* pr = probs ? probs + r * cols : nullptr;
    float* gr = grad ? grad + r * cols : nullptr;
#pragma unroll
    for (int k = 0; k < VPT; ++k) {
      const index_t j = lane + 32 * k;
      if (j < cols) {
        const float pj = expf(v[k] - mx) * inv;
        if (pr) pr[j] = pj;
        if (gr) {
          const float tj = tg.labels ? (j == y ? 1.f : 0.f) : tg.t[r * cols + j];
          gr[j] = valid ? (pj * tsumf - tj) * scale : NAN;
        }
      }
    }
  }
  return loss;
}

// The fused loss, one warp per row, row in registers; partials as row_loss_kernel.
template <int VPT>
__global__ void smce_warp_regs_kernel(index_t rows, index_t cols, const float* x, RowTarget tg, float* probs,
                                      float* grad, float scale, double* partial, unsigned long long* bad) {
  WarpGroup g;
  double acc = 0.0;
  for (index_t r = g.first_row(); r < rows; r += g.row_stride())
    acc += smce_row_regs<VPT>(r, cols, x, tg, probs, grad, scale, bad);
  acc = block_sum(g.rank() == 0 ? acc : 0.0);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

enum class RowLoss { Cce, Smce };

// Each group accumulates its rows' losses; the block adds its groups' sums in a fixed order
// (block_sum of one value per group) into partial[blockIdx.x].
template <class G, RowLoss L>
__global__ void row_loss_kernel(index_t rows, index_t cols, const float* x, RowTarget tg, float* probs,
                                float* grad, float scale, double* partial, unsigned long long* bad) {
  G g;
  double acc = 0.0;
  for (index_t r = g.first_row(); r < rows; r += g.row_stride()) {
    if constexpr (L == RowLoss::Cce) acc += cce_row(g, r, cols, x, tg, grad, scale, bad);
    else acc += smce_row(g, r, cols, x, tg, probs, grad, scale, bad);
  }
  acc = block_sum(g.rank() == 0 ? acc : 0.0);
  if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

// ---------------------------------------------------------------------- host side
constexpr index_t kWarpRowMax = 1024;

// Scratch: [partials (nparts doubles)][result double][first bad row (u64)].
struct LossScratch {
  elem::Scratch mem;
  int nparts;
  LossScratch(int np, cudaStream_t s) : mem(size_t(np + 2) * 8, s), nparts(np) {}
  double* partial() const { return mem.as<double>(); }
  double* result() const { return mem.as<double>(size_t(nparts) * 8); }
  unsigned long long* bad() const { return mem.as<unsigned long long>(size_t(nparts + 1) * 8); }
};

// Sum the partials; write `out` (no sync, returns 0) or return the value (sync). With labels,
// the value-returning form raises std::invalid_argument (ValueError) for a label out of range.
double finish(const LossScratch& sc, double denom, float* out, cudaStream_t s, const char* fn,
              const std::int64_t* labels, index_t cols) {
  elem::launch_finish(sc.nparts, sc.partial(), nullptr, 1.0, 0.0, denom, sc.result(), out, s);
  if (out) return 0.0;
  double v = 0.0;
  unsigned long long bad = ULLONG_MAX;
  check(cudaMemcpyAsync(&v, sc.result(), sizeof v, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync (loss value)");
  if (labels)
    check(cudaMemcpyAsync(&bad, sc.bad(), sizeof bad, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync (label check)");
  check(cudaStreamSynchronize(s), "cudaStreamSynchronize (loss value)");
  if (labels && bad != ULLONG_MAX) {
    std::int64_t y = 0;
    check(cudaMemcpyAsync(&y, labels + bad, sizeof y, cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync (bad label)");
    check(cudaStreamSynchronize(s), "cudaStreamSynchronize (bad label)");
    throw std::invalid_argument(std::string(fn) + ": label " + std::to_string(y) + " at index " +
                                std::to_string(bad) + " is out of range [0, " + std::to_string(cols) + ")");
  }
  return v;
}

template <class Op>
double pointwise_loss(index_t rows, index_t cols, const float* p, const float* t, float* grad,
                      float gs, Op op, float* out, cudaStream_t s, const char* fn) {
  const index_t n = rows * cols;
  const int G = int(std::max<index_t>(1, std::min<index_t>(ceil_div(n, 256), kReduceBlocks)));
  LossScratch sc(G, s);
  pointwise_loss_kernel<<<G, 256, 0, s>>>(n, p, t, grad, gs, op, sc.partial());
  KILNET_CHECK_LAUNCH(fn);
  return finish(sc, double(n), out, s, fn, nullptr, cols);
}

template <RowLoss L>
double row_loss(index_t rows, index_t cols, const float* x, RowTarget tg, float* probs, float* grad,
                float* out, cudaStream_t s, const char* fn) {
  const float scale = 1.f / float(rows);
  int G, block;
  const bool warp = cols <= kWarpRowMax;
  if (warp) {
    block = 256;   // 8 rows per block
    G = int(std::max<index_t>(1, std::min<index_t>(ceil_div(rows, 8), kReduceBlocks)));
  } else {
    block = cols > 4096 ? 1024 : 256;
    G = int(std::max<index_t>(1, std::min<index_t>(rows, kReduceBlocks)));
  }
  LossScratch sc(G, s);
  if (tg.labels) check(cudaMemsetAsync(sc.bad(), 0xff, 8, s), "cudaMemsetAsync (label check)");
  if (warp && L == RowLoss::Smce)
    elem::with_vpt(cols, [&](auto vpt) {
      smce_warp_regs_kernel<decltype(vpt)::value><<<G, block, 0, s>>>(rows, cols, x, tg, probs, grad, scale,
                                                                      sc.partial(), sc.bad());
    });
  else if (warp)
    row_loss_kernel<WarpGroup, L><<<G, block, 0, s>>>(rows, cols, x, tg, probs, grad, scale, sc.partial(), sc.bad());
  else
    row_loss_kernel<BlockGroup, L><<<G, block, 0, s>>>(rows, cols, x, tg, probs, grad, scale, sc.partial(), sc.bad());
  KILNET_CHECK_LAUNCH(fn);
  return finish(sc, double(rows), out, s, fn, tg.labels, cols);
}

}  // namespace

double mse(index_t rows, index_t cols, const float* pred, const float* target, float* grad, float* out,
           void* stream) {
  return pointwise_loss(rows, cols, pred, target, grad, 2.f / float(rows * cols), MseOp{}, out,
                        as_stream(stream), "mse");
}

double mae(index_t rows, index_t cols, const float* pred, const float* target, float* grad, float* out,
           void* stream) {
  return pointwise_loss(rows, cols, pred, target, grad, 1.f / float(rows * cols), MaeOp{}, out,
                        as_stream(stream), "mae");
}

double binary_crossentropy(index_t rows, index_t cols, const float* pred, const float* target,
                           bool from_logits, float* grad, float* out, void* stream) {
  const float gs = 1.f / float(rows * cols);
  if (from_logits)
    return pointwise_loss(rows, cols, pred, target, grad, gs, BceLogitsOp{}, out, as_stream(stream),
                          "binary_crossentropy");
  return pointwise_loss(rows, cols, pred, target, grad, gs, BceProbOp{}, out, as_stream(stream),
                        "binary_crossentropy");
}

double categorical_crossentropy(index_t rows, index_t cols, const float* pred, const float* target,
                                float* grad, float* out, void* stream) {
  return row_loss<RowLoss::Cce>(rows, cols, pred, RowTarget{target, nullptr}, nullptr, grad, out,
                                as_stream(stream), "categorical_crossentropy");
}

double sparse_categorical_crossentropy(index_t rows, index_t cols, const float* pred,
                                       const std::int64_t* labels, float* grad, float* out, void* stream) {
  return row_loss<RowLoss::Cce>(rows, cols, pred, RowTarget{nullptr, labels}, nullptr, grad, out,
                                as_stream(stream), "sparse_categorical_crossentropy");
}

double softmax_crossentropy(index_t rows, index_t cols, const float* logits, const std::int64_t* labels,
                            const float* target, float* probs, float* grad, float* out, void* stream) {
  return row_loss<RowLoss::Smce>(rows, cols, logits, RowTarget{labels ? nullptr : target, labels}, probs,
                                 grad, out, as_stream(stream), "softmax_crossentropy");
}

}  // namespace kilnet::cuda
