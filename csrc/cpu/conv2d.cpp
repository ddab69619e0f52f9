// conv2d.cpp — NHWC convolution forward and backward: the dispatch, the general (im2col +
// gemm) path, and the reference loops. The direct kernels are in conv2d_avx2.cpp and
// conv2d_avx512.cpp.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>
#include "kilnet/conv2d.h"
#include "kilnet/detail/elementwise.h"
#include "kilnet/gemm.h"
#include "parallel.h"

namespace kilnet::cpu {

#if defined(KILNET_HAVE_AVX2_BUILD)
namespace avx2 {   // conv2d_avx2.cpp
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    Act act);
void conv2d_backward(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                     float* dx, float* dw, float* db, Act act, const float* y);
void conv2d_backward_input(const Conv2dShape& s, const float* dy, const float* w, float* dx, Act act,
                           const float* y);
}  // namespace avx2
#endif

#if defined(KILNET_HAVE_AVX512_BUILD)
namespace avx512 {   // conv2d_per_example_avx512.cpp
bool per_example_fits(const Conv2dShape& s);
void conv2d_per_example(const Conv2dShape& s, const float* dy, const float* x, const float* y, bool relu, float* per,
                        bool bias, index_t n0, index_t n1);
}  // namespace avx512
namespace avx512 {   // conv2d_avx512.cpp
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    Act act);
void conv2d_backward(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                     float* dx, float* dw, float* db, Act act, const float* y);
void conv2d_backward_input(const Conv2dShape& s, const float* dy, const float* w, float* dx, Act act,
                           const float* y);
}  // namespace avx512
#endif

// ------------------------------------------------------------------------- reference (plain loops)
void conv2d_forward_ref(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                        Act act) {
  for (index_t n = 0; n < s.N; ++n)
    for (index_t p = 0; p < s.P; ++p)
      for (index_t q = 0; q < s.Q; ++q)
        for (index_t k = 0; k < s.K; ++k) {
          double acc = b ? b[k] : 0.f;
          for (index_t r = 0; r < s.R; ++r) {
            const index_t h = p * s.stride_h - s.pad_h + r * s.dilation_h;
            if (h < 0 || h >= s.H) continue;
            for (index_t t = 0; t < s.S; ++t) {
              const index_t ww = q * s.stride_w - s.pad_w + t * s.dilation_w;
              if (ww < 0 || ww >= s.W) continue;
              for (index_t c = 0; c < s.C; ++c)
                acc += double(x[((n * s.H + h) * s.W + ww) * s.C + c]) * w[((r * s.S + t) * s.C + c) * s.K + k];
            }
          }
          y[((n * s.P + p) * s.Q + q) * s.K + k] = detail::act_forward(act, float(acc));
        }
}

void conv2d_backward_ref(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                         float* dx, float* dw, float* db, Act act, const float* y) {
  if (dx) std::fill(dx, dx + s.N * s.H * s.W * s.C, 0.f);
  std::vector<double> dwd(size_t(s.R * s.S * s.C * s.K), 0.0), dbd(size_t(s.K), 0.0);
  for (index_t n = 0; n < s.N; ++n)
    for (index_t p = 0; p < s.P; ++p)
      for (index_t q = 0; q < s.Q; ++q)
        for (index_t k = 0; k < s.K; ++k) {
          const index_t yi = ((n * s.P + p) * s.Q + q) * s.K + k;
          const float g = act == Act::Linear ? dy[yi] : detail::act_backward(act, y[yi], dy[yi]);
          dbd[k] += g;
          for (index_t r = 0; r < s.R; ++r) {
            const index_t h = p * s.stride_h - s.pad_h + r * s.dilation_h;
            if (h < 0 || h >= s.H) continue;
            for (index_t t = 0; t < s.S; ++t) {
              const index_t ww = q * s.stride_w - s.pad_w + t * s.dilation_w;
              if (ww < 0 || ww >= s.W) continue;
              for (index_t c = 0; c < s.C; ++c) {
                const index_t xi = ((n * s.H + h) * s.W + ww) * s.C + c;
                const index_t wi = ((r * s.S + t) * s.C + c) * s.K + k;
                dwd[wi] += double(g) * x[xi];
                if (dx) dx[xi] += g * w[wi];
              }
            }
          }
        }
  for (size_t i = 0; i < dwd.size(); ++i) dw[i] += float(dwd[i]);
  if (db) for (index_t k = 0; k < s.K; ++k) db[k] += float(dbd[k]);
}

void conv2d_backward_input_ref(const Conv2dShape& s, const float* dy, const float* w, float* dx, Act act,
                               const float* y) {
  std::fill(dx, dx + s.N * s.H * s.W * s.C, 0.f);
  for (index_t n = 0; n < s.N; ++n)
    for (index_t p = 0; p < s.P; ++p)
      for (index_t q = 0; q < s.Q; ++q)
        for (index_t k = 0; k < s.K; ++k) {
          const index_t yi = ((n * s.P + p) * s.Q + q) * s.K + k;
          const float g = act == Act::Linear ? dy[yi] : detail::act_backward(act, y[yi], dy[yi]);
          for (index_t r = 0; r < s.R; ++r) {
            const index_t h = p * s.stride_h - s.pad_h + r * s.dilation_h;
            if (h < 0 || h >= s.H) continue;
            for (index_t t = 0; t < s.S; ++t) {
              const index_t ww = q * s.stride_w - s.pad_w + t * s.dilation_w;
              if (ww < 0 || ww >= s.W) continue;
              for (index_t c = 0; c < s.C; ++c)
                dx[((n * s.H + h) * s.W + ww) * s.C + c] += g * w[((r * s.S + t) * s.C + c) * s.K + k];
            }
          }
        }
}

// ------------------------------------------------------------------------- general path
// Chunked im2col: the patches of a block of output pixels of one image are copied into a
// per-thread buffer (a few hundred KB at most) and multiplied by w with gemm. This is the path
// without AVX2; it needs nothing but gemm and handles every stride, padding and dilation.
namespace {

// Rows [pix0, pix0 + npix) of image xn's im2col matrix (pixel = p*Q + q; row = its R*S*C window).
void im2col_rows(const Conv2dShape& s, const float* xn, index_t pix0, index_t npix, float* col) {
  for (index_t i = 0; i < npix; ++i) {
    const index_t p = (pix0 + i) / s.Q, q = (pix0 + i) % s.Q;
    float* dst = col + i * s.R * s.S * s.C;
    for (index_t r = 0; r < s.R; ++r) {
      const index_t h = p * s.stride_h - s.pad_h + r * s.dilation_h;
      for (index_t t = 0; t < s.S; ++t, dst += s.C) {
        const index_t ww = q * s.stride_w - s.pad_w + t * s.dilation_w;
        if (h < 0 || h >= s.H || ww < 0 || ww >= s.W) std::fill(dst, dst + s.C, 0.f);
        else std::copy(xn + (h * s.W + ww) * s.C, xn + (h * s.W + ww + 1) * s.C, dst);
      }
    }
  }
}

// The transpose of im2col_rows: adds each window row back onto image dxn.
void col2im_rows(const Conv2dShape& s, const float* col, index_t pix0, index_t npix, float* dxn) {
  for (index_t i = 0; i < npix; ++i) {
    const index_t p = (pix0 + i) / s.Q, q = (pix0 + i) % s.Q;
    const float* src = col + i * s.R * s.S * s.C;
    for (index_t r = 0; r < s.R; ++r) {
      const index_t h = p * s.stride_h - s.pad_h + r * s.dilation_h;
      for (index_t t = 0; t < s.S; ++t, src += s.C) {
        const index_t ww = q * s.stride_w - s.pad_w + t * s.dilation_w;
        if (h < 0 || h >= s.H || ww < 0 || ww >= s.W) continue;
        float* d = dxn + (h * s.W + ww) * s.C;
        for (index_t c = 0; c < s.C; ++c) d[c] += src[c];
      }
    }
  }
}

// Output pixels per chunk: about 64K floats of patches, so the buffer stays in L2.
index_t chunk_pixels(const Conv2dShape& s) {
  return std::clamp<index_t>((index_t(1) << 16) / (s.R * s.S * s.C), 16, s.P * s.Q);
}

std::vector<float>& col_buffer(index_t size) {   // per thread, reused across calls
  thread_local std::vector<float> buf;
  if (buf.size() < size_t(size)) buf.resize(size_t(size));
  return buf;
}

float* dz_buffer(index_t size) {   // per thread, reused across calls
  thread_local std::vector<float> buf;
  if (buf.size() < size_t(size)) buf.resize(size_t(size));
  return buf.data();
}

// y = act(y) over n values that were just written (still in cache).
void act_inplace(Act act, index_t n, float* y) {
  switch (act) {   // one loop per activation so that relu vectorizes
    case Act::Linear: break;
    case Act::Relu:
      for (index_t i = 0; i < n; ++i) y[i] = y[i] < 0.f ? 0.f : y[i];   // NaN stays NaN
      break;
    default:
      for (index_t i = 0; i < n; ++i) y[i] = detail::act_forward(act, y[i]);
  }
}

// The gradient a chunk of pixels feeds to gemm: dy itself for Linear, else dz = act'(y) * dy
// computed into buf (a chunk, so no pass over all of dy).
const float* dz_rows(Act act, index_t n, const float* y, const float* dy, float* buf) {
  if (act == Act::Linear) return dy;
  for (index_t i = 0; i < n; ++i) buf[i] = detail::act_backward(act, y[i], dy[i]);
  return buf;
}

// Threads for a loop over items: all of them when there is an item for every thread (gemm inside
// then runs on one thread, as OpenMP nesting is off), else 1, so that gemm itself uses them.
int item_threads(index_t items, index_t flops) {
  const int nt = int(std::min<index_t>(threads_for(flops, index_t(1) << 18), items));
  return nt > 1 && items >= omp_get_max_threads() ? nt : 1;
}

template <class F>
void for_items(index_t items, int nt, F body) {
  if (nt > 1) {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (index_t i = 0; i < items; ++i) body(i);
  } else {
    for (index_t i = 0; i < items; ++i) body(i);
  }
}

index_t conv_flops(const Conv2dShape& s) { return 2 * s.N * s.P * s.Q * s.K * s.R * s.S * s.C; }

void general_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y, Act act) {
  const index_t PQ = s.P * s.Q, RSC = s.R * s.S * s.C, M0 = chunk_pixels(s), chunks = (PQ + M0 - 1) / M0;
  const index_t items = s.N * chunks;
  for_items(items, item_threads(items, conv_flops(s)), [&](index_t item) {
    const index_t n = item / chunks, pix0 = (item % chunks) * M0, npix = std::min(M0, PQ - pix0);
    float* col = col_buffer(M0 * RSC).data();
    im2col_rows(s, x + n * s.H * s.W * s.C, pix0, npix, col);
    float* yc = y + (n * PQ + pix0) * s.K;
    gemm(false, false, npix, s.K, RSC, 1.f, col, RSC, w, s.K, 0.f, yc, s.K, b);
    act_inplace(act, npix * s.K, yc);
  });
}

void general_backward_input(const Conv2dShape& s, const float* dy, const float* w, float* dx, Act act,
                            const float* y);

// dw += cols^T · dz per chunk; when the chunks run in parallel, into per-thread partial sums
// (race-free) added to dw at the end. dx = col2im(dz · w^T), parallel over images so each image
// of dx has one writer. dz = act'(y) * dy is formed per chunk (dz_rows), and then db is summed
// from those chunks too; for Linear, dz is dy and db is one bias_backward.
void general_backward(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                      float* dx, float* dw, float* db, Act act, const float* y) {
  const index_t PQ = s.P * s.Q, RSC = s.R * s.S * s.C, HWC = s.H * s.W * s.C;
  const index_t M0 = chunk_pixels(s), chunks = (PQ + M0 - 1) / M0, items = s.N * chunks;
  const bool fused = act != Act::Linear;
  if (db && !fused) bias_backward(s.N * PQ, s.K, dy, db);

  const int nt = item_threads(items, conv_flops(s));
  const index_t part_size = RSC * s.K + s.K;   // dw, then db
  std::vector<float> part(nt > 1 ? size_t(nt * part_size) : 0, 0.f);
  for_items(items, nt, [&](index_t item) {
    const index_t n = item / chunks, pix0 = (item % chunks) * M0, npix = std::min(M0, PQ - pix0);
    float* col = col_buffer(M0 * RSC).data();
    im2col_rows(s, x + n * HWC, pix0, npix, col);
    const index_t o = (n * PQ + pix0) * s.K;
    const float* g = dz_rows(act, npix * s.K, fused ? y + o : nullptr, dy + o, dz_buffer(M0 * s.K));
    float* acc = nt > 1 ? part.data() + omp_get_thread_num() * part_size : dw;
    gemm(true, false, RSC, s.K, npix, 1.f, col, RSC, g, s.K, 1.f, acc, s.K, nullptr);
    if (fused && db) {
      float* dbacc = nt > 1 ? acc + RSC * s.K : db;
      for (index_t i = 0; i < npix; ++i)
        for (index_t k = 0; k < s.K; ++k) dbacc[k] += g[i * s.K + k];
    }
  });
  if (nt > 1)
    for (int t = 0; t < nt; ++t) {
      for (index_t i = 0; i < RSC * s.K; ++i) dw[i] += part[size_t(t * part_size + i)];
      if (fused && db)
        for (index_t k = 0; k < s.K; ++k) db[k] += part[size_t(t * part_size + RSC * s.K + k)];
    }

  if (dx) general_backward_input(s, dy, w, dx, act, y);
}

// dx = col2im(dz · w^T), parallel over images so each image of dx has one writer.
void general_backward_input(const Conv2dShape& s, const float* dy, const float* w, float* dx, Act act,
                            const float* y) {
  const index_t PQ = s.P * s.Q, RSC = s.R * s.S * s.C, HWC = s.H * s.W * s.C, M0 = chunk_pixels(s);
  const bool fused = act != Act::Linear;
  std::vector<float> wt(size_t(s.K * RSC));   // w^T (K x RSC), so gemm needs no transpose
  for (index_t i = 0; i < RSC; ++i)
    for (index_t k = 0; k < s.K; ++k) wt[size_t(k * RSC + i)] = w[i * s.K + k];
  for_items(s.N, item_threads(s.N, conv_flops(s)), [&](index_t n) {
    float* dxn = dx + n * HWC;
    std::fill(dxn, dxn + HWC, 0.f);
    float* col = col_buffer(M0 * RSC).data();
    float* dzb = dz_buffer(M0 * s.K);
    for (index_t pix0 = 0; pix0 < PQ; pix0 += M0) {
      const index_t npix = std::min(M0, PQ - pix0), o = (n * PQ + pix0) * s.K;
      const float* g = dz_rows(act, npix * s.K, fused ? y + o : nullptr, dy + o, dzb);
      gemm(false, false, npix, RSC, s.K, 1.f, g, s.K, wt.data(), RSC, 0.f, col, RSC, nullptr);
      col2im_rows(s, col, pix0, npix, dxn);
    }
  });
}

#if defined(KILNET_HAVE_AVX2_BUILD)
// KILNET_CONV_PATH=gemm forces the general path on AVX2 machines too (for benchmarking it
// against the direct kernels); read once.
bool force_general() {
  static const bool yes = [] {
    const char* v = std::getenv("KILNET_CONV_PATH");
    return v && std::strcmp(v, "gemm") == 0;
  }();
  return yes;
}
#endif

}  // namespace

// ------------------------------------------------------------------------- dispatch
// With AVX2 every shape goes to the direct kernels of conv2d_avx2.cpp, which pick their register
// blocking from the shape:
//   small C (R*S*C <= 128, e.g. the first layer: C=1, R*S*C=9): 3 pixels x 32 output channels
//     per micro-tile; all of w fits in L1;
//   larger C: 6 pixels x 16 channels, so each packed 16-channel panel of w stays in L1.
// For larger C we measured the alternative, im2col of pixel blocks + gemm(): 19 GFLOP/s with
// the current gemm against ~105 for the direct kernel (benchmarks/RESULTS.md), and the direct
// kernel never copies the patches. Re-measure with KILNET_CONV_PATH=gemm when gemm() changes.
// With AVX-512 the same design runs on 16-lane vectors (conv2d_avx512.cpp: tiles of 24 zmm
// accumulators, masked K tails), except for very narrow outputs (K <= 8, or dx column groups
// under 16), which it hands to the AVX2 kernels; KILNET_SIMD=avx2 selects the AVX2 kernels.
// Without AVX2 (or with KILNET_SIMD=scalar) the general im2col + gemm path runs.
// The activation is fused on every path: applied to each tile (AVX2) or chunk (general) as it
// is stored, and its derivative applied to each chunk of dy as the backward kernels read it.
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    Act act) {
  if (act == Act::Softmax) throw std::invalid_argument("conv2d_forward: softmax is not elementwise; use softmax_forward");
  if (s.N == 0 || s.P == 0 || s.Q == 0 || s.K == 0) return;   // nothing to write; the tiled paths divide by these
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512() && !force_general()) return avx512::conv2d_forward(s, x, w, b, y, act);
#endif
#if defined(KILNET_HAVE_AVX2_BUILD)
  if (use_avx2() && !force_general()) return avx2::conv2d_forward(s, x, w, b, y, act);
#endif
  general_forward(s, x, w, b, y, act);
}

void conv2d_backward(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                     float* dx, float* dw, float* db, Act act, const float* y) {
  if (act == Act::Softmax) throw std::invalid_argument("conv2d_backward: softmax is not elementwise; use softmax_backward");
  if (act != Act::Linear && !y) throw std::invalid_argument("conv2d_backward: y (the forward output) is required unless act is Linear");
  if (s.N == 0 || s.P == 0 || s.Q == 0 || s.K == 0) {   // no output gradient: dx = 0, dw and db unchanged
    if (dx) std::fill(dx, dx + s.N * s.H * s.W * s.C, 0.f);
    return;
  }
  if (s.R * s.S * s.C == 0)   // no taps (no input channel): dw is empty, dx zero, db the sums;
    return conv2d_backward_ref(s, dy, x, w, dx, dw, db, act, y);   // the fast kernels divide by them
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512() && !force_general()) return avx512::conv2d_backward(s, dy, x, w, dx, dw, db, act, y);
#endif
#if defined(KILNET_HAVE_AVX2_BUILD)
  if (use_avx2() && !force_general()) return avx2::conv2d_backward(s, dy, x, w, dx, dw, db, act, y);
#endif
  general_backward(s, dy, x, w, dx, dw, db, act, y);
}

void conv2d_backward_input(const Conv2dShape& s, const float* dy, const float* w, float* dx, Act act,
                           const float* y) {
  if (act == Act::Softmax) throw std::invalid_argument("conv2d_backward_input: softmax is not elementwise; use softmax_backward");
  if (act != Act::Linear && !y) throw std::invalid_argument("conv2d_backward_input: y (the forward output) is required unless act is Linear");
  if (s.N == 0 || s.P == 0 || s.Q == 0 || s.K == 0) {
    std::fill(dx, dx + s.N * s.H * s.W * s.C, 0.f);
    return;
  }
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512() && !force_general()) return avx512::conv2d_backward_input(s, dy, w, dx, act, y);
#endif
#if defined(KILNET_HAVE_AVX2_BUILD)
  if (use_avx2() && !force_general()) return avx2::conv2d_backward_input(s, dy, w, dx, act, y);
#endif
  general_backward_input(s, dy, w, dx, act, y);
}

// ------------------------------------------------------------------------------ per example
namespace {
// The examples split between nt threads, each running bwd (conv2d_backward or its reference) on
// one example at a time alone.
template <class Bwd>
void per_example(const Conv2dShape& s, const float* dy, const float* x, const float* w, float* per, bool bias,
                 Act act, const float* y, int nt, Bwd bwd) {
  Conv2dShape one = s;
  one.N = 1;
  const index_t xs = s.H * s.W * s.C, ys = s.P * s.Q * s.K, kel = s.R * s.S * s.C * s.K, row = kel + (bias ? s.K : 0);
  each_thread_alone(nt, [&](int t, int n) {
    for (index_t i = s.N * t / n; i < s.N * (t + 1) / n; ++i)
      bwd(one, dy + i * ys, x + i * xs, w, nullptr, per + i * row, bias ? per + i * row + kel : nullptr, act,
          y ? y + i * ys : nullptr);
  });
}
}  // namespace

void conv2d_backward_per_example(const Conv2dShape& s, const float* dy, const float* x, const float* w, float* per,
                                 bool bias, Act act, const float* y) {
  const int nt = int(std::min<index_t>(omp_get_max_threads(), s.N));
#if defined(KILNET_HAVE_AVX512_BUILD)
  if (use_avx512() && avx512::per_example_fits(s) && (act == Act::Relu || act == Act::Linear)) {
    each_thread_alone(nt, [&](int t, int n) {
      avx512::conv2d_per_example(s, dy, x, y, act == Act::Relu, per, bias, s.N * t / n, s.N * (t + 1) / n);
    });
    return;
  }
#endif
  per_example(s, dy, x, w, per, bias, act, y, nt, conv2d_backward);
}

void conv2d_backward_per_example_ref(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                                     float* per, bool bias, Act act, const float* y) {
  per_example(s, dy, x, w, per, bias, act, y, 1, conv2d_backward_ref);
}

}  // namespace kilnet::cpu
