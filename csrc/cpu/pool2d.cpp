// pool2d.cpp — max / average / global average pooling, forward and backward (see pool2d.h).
// Memory-bound loops over the channel axis, which is contiguous in NHWC, so the inner loops
// vectorize. Forward runs in parallel over output rows (n, p); backward over images n, because
// overlapping windows of neighbouring rows add into the same dx rows.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>
#include "kilnet/pool2d.h"
#include "parallel.h"

namespace kilnet::cpu {

namespace {

// The real (unpadded) input range [lo, hi) of the window starting at `start` of length `len`.
struct Range { index_t lo, hi; };
inline Range clip(index_t start, index_t len, index_t size) {
  return {std::max<index_t>(start, 0), std::min<index_t>(start + len, size)};
}
inline Range rows(const Pool2dShape& s, index_t p) { return clip(p * s.stride_h - s.pad_h, s.R, s.H); }
inline Range cols(const Pool2dShape& s, index_t q) { return clip(q * s.stride_w - s.pad_w, s.S, s.W); }

// The forward's comparison, shared by both maxpool passes: strictly greater keeps the first
// maximum; a NaN always wins (so NaN propagates, as in PyTorch).
inline bool takes(float v, float best) { return v > best || v != v; }

inline int pool_threads(const Pool2dShape& s) {
  return threads_for(s.N * s.P * s.Q * s.C * s.R * s.S, 1 << 16);
}

}  // namespace

// ------------------------------------------------------------------------- max pooling
void maxpool2d_forward(const Pool2dShape& s, const float* x, float* y) {
  const index_t C = s.C;
#pragma omp parallel for num_threads(pool_threads(s)) schedule(static)
  for (index_t np = 0; np < s.N * s.P; ++np) {
    const index_t n = np / s.P, p = np % s.P;
    const Range hr = rows(s, p);
    const float* xn = x + n * s.H * s.W * C;
    for (index_t q = 0; q < s.Q; ++q) {
      const Range wr = cols(s, q);
      float* yo = y + (np * s.Q + q) * C;
      std::copy(xn + (hr.lo * s.W + wr.lo) * C, xn + (hr.lo * s.W + wr.lo + 1) * C, yo);
      for (index_t h = hr.lo; h < hr.hi; ++h)
        for (index_t w = (h == hr.lo ? wr.lo + 1 : wr.lo); w < wr.hi; ++w) {
          const float* xi = xn + (h * s.W + w) * C;
          for (index_t c = 0; c < C; ++c) yo[c] = takes(xi[c], yo[c]) ? xi[c] : yo[c];
        }
    }
  }
}

// Per output pixel, the winning window position of every channel is tracked as a small int
// (its number k in scan order within the clipped window) with branch-free selects, so the
// channel loop vectorizes; the gradient is added at the winners afterwards.
void maxpool2d_backward(const Pool2dShape& s, const float* x, const float* dy, float* dx) {
  const index_t C = s.C, HWC = s.H * s.W * s.C;
#pragma omp parallel num_threads(threads_for(s.N * s.P * s.Q * s.C * s.R * s.S, 1 << 16))
  {
    std::vector<float> best(static_cast<size_t>(C));
    std::vector<std::int32_t> win(static_cast<size_t>(C));
    float* bp = best.data();
    std::int32_t* kp = win.data();
#pragma omp for schedule(static)
    for (index_t n = 0; n < s.N; ++n) {
      const float* xn = x + n * HWC;
      float* dxn = dx + n * HWC;
      std::fill(dxn, dxn + HWC, 0.f);
      for (index_t p = 0; p < s.P; ++p) {
        const Range hr = rows(s, p);
        for (index_t q = 0; q < s.Q; ++q) {
          const Range wr = cols(s, q);
          const index_t width = wr.hi - wr.lo;
          const float* first = xn + (hr.lo * s.W + wr.lo) * C;
          for (index_t c = 0; c < C; ++c) { bp[c] = first[c]; kp[c] = 0; }
          std::int32_t k = 0;
          for (index_t h = hr.lo; h < hr.hi; ++h)
            for (index_t w = wr.lo; w < wr.hi; ++w, ++k) {
              if (k == 0) continue;
              const float* xi = xn + (h * s.W + w) * C;
              for (index_t c = 0; c < C; ++c) {
                const bool t = takes(xi[c], bp[c]);
                bp[c] = t ? xi[c] : bp[c];
                kp[c] = t ? k : kp[c];
              }
            }
          const float* dyo = dy + ((n * s.P + p) * s.Q + q) * C;
          for (index_t c = 0; c < C; ++c) {
            const index_t h = hr.lo + kp[c] / width, w = wr.lo + kp[c] % width;
            dxn[(h * s.W + w) * C + c] += dyo[c];
          }
        }
      }
    }
  }
}

// ------------------------------------------------------------------------- average pooling
void avgpool2d_forward(const Pool2dShape& s, const float* x, float* y) {
  const index_t C = s.C;
#pragma omp parallel for num_threads(pool_threads(s)) schedule(static)
  for (index_t np = 0; np < s.N * s.P; ++np) {
    const index_t n = np / s.P, p = np % s.P;
    const Range hr = rows(s, p);
    const float* xn = x + n * s.H * s.W * C;
    for (index_t q = 0; q < s.Q; ++q) {
      const Range wr = cols(s, q);
      float* yo = y + (np * s.Q + q) * C;
      std::fill(yo, yo + C, 0.f);
      for (index_t h = hr.lo; h < hr.hi; ++h)
        for (index_t w = wr.lo; w < wr.hi; ++w) {
          const float* xi = xn + (h * s.W + w) * C;
          for (index_t c = 0; c < C; ++c) yo[c] += xi[c];
        }
      const float count = float((hr.hi - hr.lo) * (wr.hi - wr.lo));
      for (index_t c = 0; c < C; ++c) yo[c] /= count;
    }
  }
}

void avgpool2d_backward(const Pool2dShape& s, const float* dy, float* dx) {
  const index_t C = s.C, HWC = s.H * s.W * s.C;
#pragma omp parallel for num_threads(pool_threads(s)) schedule(static)
  for (index_t n = 0; n < s.N; ++n) {
    float* dxn = dx + n * HWC;
    std::fill(dxn, dxn + HWC, 0.f);
    for (index_t p = 0; p < s.P; ++p) {
      const Range hr = rows(s, p);
      for (index_t q = 0; q < s.Q; ++q) {
        const Range wr = cols(s, q);
        const float count = float((hr.hi - hr.lo) * (wr.hi - wr.lo));
        const float* dyo = dy + ((n * s.P + p) * s.Q + q) * C;
        for (index_t h = hr.lo; h < hr.hi; ++h)
          for (index_t w = wr.lo; w < wr.hi; ++w) {
            float* d = dxn + (h * s.W + w) * C;
            for (index_t c = 0; c < C; ++c) d[c] += dyo[c] / count;
          }
      }
    }
  }
}

// ------------------------------------------------------------------------- global average
void global_avgpool2d_forward(index_t N, index_t HW, index_t C, const float* x, float* y) {
#pragma omp parallel for num_threads(threads_for(N * HW * C)) schedule(static)
  for (index_t n = 0; n < N; ++n) {
    float* yn = y + n * C;
    std::fill(yn, yn + C, 0.f);
    for (index_t i = 0; i < HW; ++i) {
      const float* xi = x + (n * HW + i) * C;
      for (index_t c = 0; c < C; ++c) yn[c] += xi[c];
    }
    for (index_t c = 0; c < C; ++c) yn[c] /= float(HW);
  }
}

void global_avgpool2d_backward(index_t N, index_t HW, index_t C, const float* dy, float* dx) {
#pragma omp parallel for num_threads(threads_for(N * HW * C)) schedule(static)
  for (index_t n = 0; n < N; ++n)
    for (index_t i = 0; i < HW; ++i) {
      float* d = dx + (n * HW + i) * C;
      for (index_t c = 0; c < C; ++c) d[c] = dy[n * C + c] / float(HW);
    }
}

// ------------------------------------------------------------------------- reference (plain loops)
// One output element at a time, scanning its whole nominal window and skipping padded
// positions explicitly; sums in double.
void maxpool2d_forward_ref(const Pool2dShape& s, const float* x, float* y) {
  for (index_t n = 0; n < s.N; ++n)
    for (index_t p = 0; p < s.P; ++p)
      for (index_t q = 0; q < s.Q; ++q)
        for (index_t c = 0; c < s.C; ++c) {
          bool have = false;
          float best = 0.f;
          for (index_t r = 0; r < s.R; ++r)
            for (index_t t = 0; t < s.S; ++t) {
              const index_t h = p * s.stride_h - s.pad_h + r, w = q * s.stride_w - s.pad_w + t;
              if (h < 0 || h >= s.H || w < 0 || w >= s.W) continue;
              const float v = x[((n * s.H + h) * s.W + w) * s.C + c];
              if (!have || v > best || std::isnan(v)) { best = v; have = true; }
            }
          y[((n * s.P + p) * s.Q + q) * s.C + c] = best;
        }
}

void maxpool2d_backward_ref(const Pool2dShape& s, const float* x, const float* dy, float* dx) {
  std::fill(dx, dx + s.N * s.H * s.W * s.C, 0.f);
  for (index_t n = 0; n < s.N; ++n)
    for (index_t p = 0; p < s.P; ++p)
      for (index_t q = 0; q < s.Q; ++q)
        for (index_t c = 0; c < s.C; ++c) {
          index_t at = -1;
          float best = 0.f;
          for (index_t r = 0; r < s.R; ++r)
            for (index_t t = 0; t < s.S; ++t) {
              const index_t h = p * s.stride_h - s.pad_h + r, w = q * s.stride_w - s.pad_w + t;
              if (h < 0 || h >= s.H || w < 0 || w >= s.W) continue;
              const index_t i = ((n * s.H + h) * s.W + w) * s.C + c;
              if (at < 0 || x[i] > best || std::isnan(x[i])) { best = x[i]; at = i; }
            }
          dx[at] += dy[((n * s.P + p) * s.Q + q) * s.C + c];
        }
}

static index_t window_count(const Pool2dShape& s, index_t p, index_t q) {
  index_t count = 0;
  for (index_t r = 0; r < s.R; ++r)
    for (index_t t = 0; t < s.S; ++t) {
      const index_t h = p * s.stride_h - s.pad_h + r, w = q * s.stride_w - s.pad_w + t;
      count += (h >= 0 && h < s.H && w >= 0 && w < s.W);
    }
  return count;
}

void avgpool2d_forward_ref(const Pool2dShape& s, const float* x, float* y) {
  for (index_t n = 0; n < s.N; ++n)
    for (index_t p = 0; p < s.P; ++p)
      for (index_t q = 0; q < s.Q; ++q)
        for (index_t c = 0; c < s.C; ++c) {
          double sum = 0;
          for (index_t r = 0; r < s.R; ++r)
            for (index_t t = 0; t < s.S; ++t) {
              const index_t h = p * s.stride_h - s.pad_h + r, w = q * s.stride_w - s.pad_w + t;
              if (h >= 0 && h < s.H && w >= 0 && w < s.W) sum += x[((n * s.H + h) * s.W + w) * s.C + c];
            }
          y[((n * s.P + p) * s.Q + q) * s.C + c] = float(sum / double(window_count(s, p, q)));
        }
}

void avgpool2d_backward_ref(const Pool2dShape& s, const float* dy, float* dx) {
  std::vector<double> acc(size_t(s.N * s.H * s.W * s.C), 0.0);
  for (index_t n = 0; n < s.N; ++n)
    for (index_t p = 0; p < s.P; ++p)
      for (index_t q = 0; q < s.Q; ++q) {
        const double count = double(window_count(s, p, q));
        for (index_t c = 0; c < s.C; ++c)
          for (index_t r = 0; r < s.R; ++r)
            for (index_t t = 0; t < s.S; ++t) {
              const index_t h = p * s.stride_h - s.pad_h + r, w = q * s.stride_w - s.pad_w + t;
              if (h >= 0 && h < s.H && w >= 0 && w < s.W)
                acc[size_t(((n * s.H + h) * s.W + w) * s.C + c)] += dy[((n * s.P + p) * s.Q + q) * s.C + c] / count;
            }
      }
  for (size_t i = 0; i < acc.size(); ++i) dx[i] = float(acc[i]);
}

void global_avgpool2d_forward_ref(index_t N, index_t HW, index_t C, const float* x, float* y) {
  for (index_t n = 0; n < N; ++n)
    for (index_t c = 0; c < C; ++c) {
      double sum = 0;
      for (index_t i = 0; i < HW; ++i) sum += x[(n * HW + i) * C + c];
      y[n * C + c] = float(sum / double(HW));
    }
}

void global_avgpool2d_backward_ref(index_t N, index_t HW, index_t C, const float* dy, float* dx) {
  for (index_t n = 0; n < N; ++n)
    for (index_t i = 0; i < HW; ++i)
      for (index_t c = 0; c < C; ++c) dx[(n * HW + i) * C + c] = float(double(dy[n * C + c]) / double(HW));
}

}  // namespace kilnet::cpu
