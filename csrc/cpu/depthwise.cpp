// depthwise.cpp — depthwise 2-D convolution, NHWC, forward and backward, and the reference loops.
// Each output row (n, p) is a sum over the R*S taps of a channel-wise product of an input row
// segment and one tap of w; the inner loop runs over the C*M contiguous output channels, so the
// compiler vectorizes it. Work is split by output rows (forward, dw) and by images (dx, whose
// scatter would race across rows of one image).
#include <algorithm>
#include <vector>
#include "kilnet/depthwise.h"
#include "parallel.h"

namespace kilnet::cpu {

namespace {

index_t flops_of(const Depthwise2dShape& s) { return 2 * s.N * s.P * s.Q * s.C * s.M * s.R * s.S; }

// acc[c*M + m] += xv[c] * wv[c*M + m] over the C*M channels of one tap.
inline void tap_fma(index_t C, index_t M, const float* xv, const float* wv, float* acc) {
  if (M == 1) {
    for (index_t c = 0; c < C; ++c) acc[c] += xv[c] * wv[c];
  } else {
    for (index_t c = 0; c < C; ++c)
      for (index_t m = 0; m < M; ++m) acc[c * M + m] += xv[c] * wv[c * M + m];
  }
}

// dx[c] += sum_m g[c*M + m] * wv[c*M + m]
inline void tap_dx(index_t C, index_t M, const float* g, const float* wv, float* dxv) {
  if (M == 1) {
    for (index_t c = 0; c < C; ++c) dxv[c] += g[c] * wv[c];
  } else {
    for (index_t c = 0; c < C; ++c) {
      float a = 0.f;
      for (index_t m = 0; m < M; ++m) a += g[c * M + m] * wv[c * M + m];
      dxv[c] += a;
    }
  }
}

}  // namespace

// ------------------------------------------------------------------------- reference
void depthwise2d_forward_ref(const Depthwise2dShape& s, const float* x, const float* w, const float* b,
                             float* y) {
  const index_t K = s.C * s.M;
  for (index_t n = 0; n < s.N; ++n)
    for (index_t p = 0; p < s.P; ++p)
      for (index_t q = 0; q < s.Q; ++q)
        for (index_t c = 0; c < s.C; ++c)
          for (index_t m = 0; m < s.M; ++m) {
            double acc = b ? b[c * s.M + m] : 0.0;
            for (index_t r = 0; r < s.R; ++r) {
              const index_t h = p * s.stride_h - s.pad_h + r * s.dilation_h;
              if (h < 0 || h >= s.H) continue;
              for (index_t t = 0; t < s.S; ++t) {
                const index_t ww = q * s.stride_w - s.pad_w + t * s.dilation_w;
                if (ww < 0 || ww >= s.W) continue;
                acc += double(x[((n * s.H + h) * s.W + ww) * s.C + c]) * w[((r * s.S + t) * s.C + c) * s.M + m];
              }
            }
            y[((n * s.P + p) * s.Q + q) * K + c * s.M + m] = float(acc);
          }
}

void depthwise2d_backward_ref(const Depthwise2dShape& s, const float* dy, const float* x, const float* w,
                              float* dx, float* dw, float* db) {
  const index_t K = s.C * s.M;
  if (dx) std::fill(dx, dx + s.N * s.H * s.W * s.C, 0.f);
  std::vector<double> dwd(size_t(s.R * s.S * K), 0.0), dbd(size_t(K), 0.0);
  for (index_t n = 0; n < s.N; ++n)
    for (index_t p = 0; p < s.P; ++p)
      for (index_t q = 0; q < s.Q; ++q)
        for (index_t c = 0; c < s.C; ++c)
          for (index_t m = 0; m < s.M; ++m) {
            const float g = dy[((n * s.P + p) * s.Q + q) * K + c * s.M + m];
            dbd[size_t(c * s.M + m)] += g;
            for (index_t r = 0; r < s.R; ++r) {
              const index_t h = p * s.stride_h - s.pad_h + r * s.dilation_h;
              if (h < 0 || h >= s.H) continue;
              for (index_t t = 0; t < s.S; ++t) {
                const index_t ww = q * s.stride_w - s.pad_w + t * s.dilation_w;
                if (ww < 0 || ww >= s.W) continue;
                const index_t xi = ((n * s.H + h) * s.W + ww) * s.C + c;
                const index_t wi = ((r * s.S + t) * s.C + c) * s.M + m;
                dwd[size_t(wi)] += double(g) * x[xi];
                if (dx) dx[xi] += g * w[wi];
              }
            }
          }
  for (size_t i = 0; i < dwd.size(); ++i) dw[i] += float(dwd[i]);
  if (db) for (index_t k = 0; k < K; ++k) db[k] += float(dbd[size_t(k)]);
}

// ------------------------------------------------------------------------- fast
void depthwise2d_forward(const Depthwise2dShape& s, const float* x, const float* w, const float* b, float* y) {
  const index_t K = s.C * s.M, rows = s.N * s.P;
  const int nt = int(std::min<index_t>(threads_for(flops_of(s), index_t(1) << 16), std::max<index_t>(rows, 1)));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (index_t np = 0; np < rows; ++np) {
    const index_t n = np / s.P, p = np % s.P;
    const float* xn = x + n * s.H * s.W * s.C;
    for (index_t q = 0; q < s.Q; ++q) {
      float* acc = y + (np * s.Q + q) * K;
      if (b) std::copy(b, b + K, acc);
      else std::fill(acc, acc + K, 0.f);
      for (index_t r = 0; r < s.R; ++r) {
        const index_t h = p * s.stride_h - s.pad_h + r * s.dilation_h;
        if (h < 0 || h >= s.H) continue;
        for (index_t t = 0; t < s.S; ++t) {
          const index_t ww = q * s.stride_w - s.pad_w + t * s.dilation_w;
          if (ww < 0 || ww >= s.W) continue;
          tap_fma(s.C, s.M, xn + (h * s.W + ww) * s.C, w + (r * s.S + t) * K, acc);
        }
      }
    }
  }
}

void depthwise2d_backward(const Depthwise2dShape& s, const float* dy, const float* x, const float* w,
                          float* dx, float* dw, float* db) {
  const index_t K = s.C * s.M, RSK = s.R * s.S * K, rows = s.N * s.P;
  const int nt = int(std::min<index_t>(threads_for(flops_of(s), index_t(1) << 16), std::max<index_t>(rows, 1)));
  // dw, db: per-thread partial sums over a static split of the output rows, added in thread order.
  std::vector<float> part(size_t(nt) * size_t(RSK + K), 0.f);
#pragma omp parallel num_threads(nt)
  {
    float* pdw = part.data() + size_t(omp_get_thread_num()) * size_t(RSK + K);
    float* pdb = pdw + RSK;
#pragma omp for schedule(static)
    for (index_t np = 0; np < rows; ++np) {
      const index_t n = np / s.P, p = np % s.P;
      const float* xn = x + n * s.H * s.W * s.C;
      for (index_t q = 0; q < s.Q; ++q) {
        const float* g = dy + (np * s.Q + q) * K;
        for (index_t k = 0; k < K; ++k) pdb[k] += g[k];
        for (index_t r = 0; r < s.R; ++r) {
          const index_t h = p * s.stride_h - s.pad_h + r * s.dilation_h;
          if (h < 0 || h >= s.H) continue;
          for (index_t t = 0; t < s.S; ++t) {
            const index_t ww = q * s.stride_w - s.pad_w + t * s.dilation_w;
            if (ww < 0 || ww >= s.W) continue;
            // dw[tap][c*M + m] += x[c] * g[c*M + m]: the forward's product with g as the weights
            tap_fma(s.C, s.M, xn + (h * s.W + ww) * s.C, g, pdw + (r * s.S + t) * K);
          }
        }
      }
    }
#pragma omp for schedule(static)
    for (index_t i = 0; i < RSK + K; ++i) {
      if (i >= RSK && !db) continue;
      float acc = 0.f;
      for (int th = 0; th < nt; ++th) acc += part[size_t(th) * size_t(RSK + K) + size_t(i)];
      if (i < RSK) dw[i] += acc;
      else db[i - RSK] += acc;
    }
  }
  if (!dx) return;
  const int ntx = int(std::min<index_t>(threads_for(flops_of(s), index_t(1) << 16), std::max<index_t>(s.N, 1)));
#pragma omp parallel for num_threads(ntx) schedule(static)
  for (index_t n = 0; n < s.N; ++n) {   // one writer per image of dx
    float* dxn = dx + n * s.H * s.W * s.C;
    std::fill(dxn, dxn + s.H * s.W * s.C, 0.f);
    for (index_t p = 0; p < s.P; ++p)
      for (index_t q = 0; q < s.Q; ++q) {
        const float* g = dy + ((n * s.P + p) * s.Q + q) * K;
        for (index_t r = 0; r < s.R; ++r) {
          const index_t h = p * s.stride_h - s.pad_h + r * s.dilation_h;
          if (h < 0 || h >= s.H) continue;
          for (index_t t = 0; t < s.S; ++t) {
            const index_t ww = q * s.stride_w - s.pad_w + t * s.dilation_w;
            if (ww < 0 || ww >= s.W) continue;
            tap_dx(s.C, s.M, g, w + (r * s.S + t) * K, dxn + (h * s.W + ww) * s.C);
          }
        }
      }
  }
}

}  // namespace kilnet::cpu
