// conv2d.cpp — NHWC convolution forward and backward, and the reference loops.
#include <algorithm>
#include <vector>
#include "kilnet/conv2d.h"
#include "kilnet/gemm.h"
#include "parallel.h"

namespace kilnet::cpu {

// ------------------------------------------------------------------------- reference (plain loops)
void conv2d_forward_ref(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
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
          y[((n * s.P + p) * s.Q + q) * s.K + k] = float(acc);
        }
}

void conv2d_backward_ref(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                         float* dx, float* dw, float* db) {
  if (dx) std::fill(dx, dx + s.N * s.H * s.W * s.C, 0.f);
  std::vector<double> dwd(size_t(s.R * s.S * s.C * s.K), 0.0), dbd(size_t(s.K), 0.0);
  for (index_t n = 0; n < s.N; ++n)
    for (index_t p = 0; p < s.P; ++p)
      for (index_t q = 0; q < s.Q; ++q)
        for (index_t k = 0; k < s.K; ++k) {
          const float g = dy[((n * s.P + p) * s.Q + q) * s.K + k];
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

// ------------------------------------------------------------------------- fast path
// im2col of one image into a (P*Q) x (R*S*C) matrix, then one GEMM against w viewed as
// (R*S*C) x K. Backward: dw += cols^T · dy, dcols = dy · w^T scattered back (col2im).
static void im2col(const Conv2dShape& s, const float* x, float* col) {
  const index_t RSC = s.R * s.S * s.C;
  for (index_t p = 0; p < s.P; ++p)
    for (index_t q = 0; q < s.Q; ++q) {
      float* dst = col + (p * s.Q + q) * RSC;
      for (index_t r = 0; r < s.R; ++r) {
        const index_t h = p * s.stride_h - s.pad_h + r * s.dilation_h;
        for (index_t t = 0; t < s.S; ++t, dst += s.C) {
          const index_t ww = q * s.stride_w - s.pad_w + t * s.dilation_w;
          if (h < 0 || h >= s.H || ww < 0 || ww >= s.W) std::fill(dst, dst + s.C, 0.f);
          else std::copy(x + (h * s.W + ww) * s.C, x + (h * s.W + ww + 1) * s.C, dst);
        }
      }
    }
}

static void col2im_add(const Conv2dShape& s, const float* col, float* dx) {
  const index_t RSC = s.R * s.S * s.C;
  for (index_t p = 0; p < s.P; ++p)
    for (index_t q = 0; q < s.Q; ++q) {
      const float* src = col + (p * s.Q + q) * RSC;
      for (index_t r = 0; r < s.R; ++r) {
        const index_t h = p * s.stride_h - s.pad_h + r * s.dilation_h;
        for (index_t t = 0; t < s.S; ++t, src += s.C) {
          const index_t ww = q * s.stride_w - s.pad_w + t * s.dilation_w;
          if (h < 0 || h >= s.H || ww < 0 || ww >= s.W) continue;
          float* d = dx + (h * s.W + ww) * s.C;
          for (index_t c = 0; c < s.C; ++c) d[c] += src[c];
        }
      }
    }
}

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y) {
  const index_t PQ = s.P * s.Q, RSC = s.R * s.S * s.C;
  std::vector<float> col(size_t(PQ * RSC));
  for (index_t n = 0; n < s.N; ++n) {
    im2col(s, x + n * s.H * s.W * s.C, col.data());
    gemm(false, false, PQ, s.K, RSC, 1.f, col.data(), RSC, w, s.K, 0.f, y + n * PQ * s.K, s.K, b);
  }
}

void conv2d_backward(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                     float* dx, float* dw, float* db) {
  const index_t PQ = s.P * s.Q, RSC = s.R * s.S * s.C, HWC = s.H * s.W * s.C;
  std::vector<float> col(size_t(PQ * RSC));
  if (db) bias_backward(s.N * PQ, s.K, dy, db);
  for (index_t n = 0; n < s.N; ++n) {
    const float* dyn = dy + n * PQ * s.K;
    im2col(s, x + n * HWC, col.data());
    gemm(true, false, RSC, s.K, PQ, 1.f, col.data(), RSC, dyn, s.K, 1.f, dw, s.K, nullptr);
    if (dx) {
      gemm(false, true, PQ, RSC, s.K, 1.f, dyn, s.K, w, s.K, 0.f, col.data(), RSC, nullptr);
      std::fill(dx + n * HWC, dx + (n + 1) * HWC, 0.f);
      col2im_add(s, col.data(), dx + n * HWC);
    }
  }
}

}  // namespace kilnet::cpu
