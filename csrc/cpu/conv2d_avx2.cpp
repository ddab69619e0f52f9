// conv2d_avx2.cpp — direct AVX2/FMA convolution, forward and backward (built with -mavx2 -mfma;
// conv2d.cpp calls it only when kilnet::cpu::use_avx2() is true).
//
// The idea. In NHWC with RSCK weights a convolution is a GEMM: one "A" row per output pixel (its
// input window, R*S*C values), B = w viewed as (R*S*C) x K, C = y viewed as (N*P*Q) x K. A window
// is not one contiguous row of x, but it is a few contiguous runs ("segments"): with
// dilation_w == 1 the S*C values under kernel row r lie side by side in x. So the micro-kernel
// reads A straight from the input, segment by segment, broadcasting one value at a time against
// a vector of 8 output channels of w — no im2col matrix. Padding is handled by copying the rows a
// thread needs into a small zero-padded per-thread buffer ("stage"); a 'valid' convolution
// reads x in place.
//
//   forward  y[pixel, k]   = sum_rsc window[pixel, rsc] * w[rsc, k]      (tile over pixels x k)
//   dw       dw[rsc, k]   += sum_pixel window[pixel, rsc] * dy[pixel, k] (tile over rsc x k,
//                                                                        per-thread partial dw)
//   dx       dx[window(pixel) + rsc] += sum_k dy[pixel, k] * w[rsc, k]   (the same tile as forward,
//            with dy as A and w^T as B; the result is added into a padded per-image dx buffer)
//
// Activations are fused: the forward tile applies relu in registers before its store (sigmoid
// and tanh in a scalar epilogue over the tile just stored, still in L1), and the backward passes
// read dz = act'(y) * dy, formed per chunk of pixels in a small per-thread buffer (dz_rows), so
// neither y's activation nor dz ever costs a pass over memory.
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <utility>
#include <vector>

#include "kilnet/conv2d.h"
#include "kilnet/detail/elementwise.h"
#include "parallel.h"

namespace kilnet::cpu::avx2 {
namespace {

constexpr int kMaxAcc = 12;   // accumulators per micro-tile: 12 of the 16 ymm registers

inline __m256i lane_mask(index_t n) {   // the first n (1..8) lanes set
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(int(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// ------------------------------------------------------------------------- input geometry
// The padded input is Hp x Wp x C with the image at row pad_h, column pad_w, big enough that
// every window (including windows that run past the bottom/right edge) lies inside it.
struct Layout {
  index_t Hp, Wp, row_ld;   // row_ld = Wp * C floats between padded rows
  bool in_place;            // no padding needed: windows read x itself
};

Layout layout_of(const Conv2dShape& s) {
  Layout L;
  L.Hp = std::max(s.pad_h + s.H, (s.P - 1) * s.stride_h + (s.R - 1) * s.dilation_h + 1);
  L.Wp = std::max(s.pad_w + s.W, (s.Q - 1) * s.stride_w + (s.S - 1) * s.dilation_w + 1);
  L.in_place = s.pad_h == 0 && s.pad_w == 0 && L.Hp == s.H && L.Wp == s.W;
  L.row_ld = L.Wp * s.C;
  return L;
}

// Copies padded rows [prow0, prow0 + rows) of image xn into buf (rows x row_ld), zeros around.
void stage_rows(const Conv2dShape& s, const Layout& L, const float* xn, index_t prow0,
                index_t rows, float* buf) {
  const index_t C = s.C, left = s.pad_w * C, body = s.W * C;
  for (index_t j = 0; j < rows; ++j) {
    float* d = buf + j * L.row_ld;
    const index_t h = prow0 + j - s.pad_h;
    if (h < 0 || h >= s.H) {
      std::fill(d, d + L.row_ld, 0.f);
      continue;
    }
    std::fill(d, d + left, 0.f);
    std::copy(xn + h * body, xn + (h + 1) * body, d + left);
    std::fill(d + left + body, d + L.row_ld, 0.f);
  }
}

// The windows as contiguous runs, as offsets from a window's top-left corner in the (padded)
// input. Their concatenation is the rsc order of w's rows.
struct Segments {
  std::vector<index_t> off;
  index_t len = 0;
};

Segments segments_of(const Conv2dShape& s, index_t row_ld) {
  Segments g;
  if (s.dilation_w == 1) {   // kernel row r: S*C adjacent values
    g.len = s.S * s.C;
    for (index_t r = 0; r < s.R; ++r) g.off.push_back(r * s.dilation_h * row_ld);
  } else {                   // one (r, s) tap: C adjacent values
    g.len = s.C;
    for (index_t r = 0; r < s.R; ++r)
      for (index_t t = 0; t < s.S; ++t) g.off.push_back(r * s.dilation_h * row_ld + t * s.dilation_w * s.C);
  }
  return g;
}

// Work items: (image, block of output rows). Whole images when the batch alone feeds every
// thread; otherwise images are cut into row blocks so that small batches still use all cores.
// Large images are cut too, to bound the per-thread stage and pixel lists.
struct Items {
  index_t per_image, rows, count;
};

constexpr index_t kItemPixels = 4096;   // most output pixels in one item
constexpr index_t kChunk = 384;         // pixels per sweep of the panels (a multiple of 12)

Items items_of(const Conv2dShape& s, int threads) {
  Items it;
  it.per_image = s.N >= 4 * threads ? 1 : std::min(s.P, (4 * threads + s.N - 1) / s.N);
  it.rows = std::min((s.P + it.per_image - 1) / it.per_image, std::max<index_t>(1, kItemPixels / s.Q));
  it.per_image = (s.P + it.rows - 1) / it.rows;
  it.count = s.N * it.per_image;
  return it;
}

int threads_of(const Conv2dShape& s, index_t items) {
  const index_t flops = 2 * s.N * s.P * s.Q * s.K * s.R * s.S * s.C;
  return int(std::min<index_t>(threads_for(flops, index_t(1) << 18), items));
}

// ------------------------------------------------------------------------- micro-kernel: A·B tile
// QB pixels x NV vectors of 8 columns. A row i is read from a[i] + seg_off[g] + j (j < seg_len);
// B (packed) is seg_count*seg_len rows of 8*NV floats, zero past `valid` columns. The result
// goes to out[i] + out_off: stored (+ bias, then act) in the forward pass, where lanes past
// `valid` are not written; added in the dx pass, where they add zeros.
struct Tile {
  const float* const* a;
  const index_t* seg_off;
  index_t seg_count, seg_len;
  const float* b;
  float* const* out;
  index_t out_off;
  const float* bias;   // 8*NV floats or nullptr (forward only)
  index_t valid;       // columns written, 8*(NV-1) < valid <= 8*NV
  Act act;             // forward only
};

template <int QB, int NV, bool ADD>
inline __attribute__((always_inline)) void tile_kernel(const Tile& t) {
  __m256 acc[QB][NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const __m256 init = t.bias ? _mm256_loadu_ps(t.bias + 8 * v) : _mm256_setzero_ps();
#pragma GCC unroll 16
    for (int i = 0; i < QB; ++i) acc[i][v] = init;
  }
  const float* b = t.b;
  for (index_t g = 0; g < t.seg_count; ++g) {
    const float* ap[QB];
#pragma GCC unroll 16
    for (int i = 0; i < QB; ++i) ap[i] = t.a[i] + t.seg_off[g];
    for (index_t j = 0; j < t.seg_len; ++j, b += 8 * NV) {
      __m256 bv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) bv[v] = _mm256_loadu_ps(b + 8 * v);
#pragma GCC unroll 16
      for (int i = 0; i < QB; ++i) {
        const __m256 av = _mm256_broadcast_ss(ap[i] + j);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_fmadd_ps(av, bv[v], acc[i][v]);
      }
    }
  }
  if (!ADD && t.act == Act::Relu) {
    const __m256 zero = _mm256_setzero_ps();
#pragma GCC unroll 16
    for (int i = 0; i < QB; ++i)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm256_max_ps(zero, acc[i][v]);   // max(0, NaN) = NaN
  }
  const bool full = t.valid == 8 * NV;
  const __m256i m = lane_mask(t.valid - 8 * (NV - 1));
#pragma GCC unroll 16
  for (int i = 0; i < QB; ++i) {
    float* o = t.out[i] + t.out_off;
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      if (ADD) {   // into a private dx buffer with slack: lanes past `valid` add exact zeros
        _mm256_storeu_ps(o + 8 * v, _mm256_add_ps(acc[i][v], _mm256_loadu_ps(o + 8 * v)));
      } else if (v < NV - 1 || full) {
        _mm256_storeu_ps(o + 8 * v, acc[i][v]);
      } else {     // into y: the lanes past K belong to the next pixel
        _mm256_maskstore_ps(o + 8 * v, m, acc[i][v]);
      }
    }
  }
  if (!ADD && (t.act == Act::Sigmoid || t.act == Act::Tanh))   // the tile is in L1
    for (int i = 0; i < QB; ++i) {
      float* o = t.out[i] + t.out_off;
      for (index_t j = 0; j < t.valid; ++j) o[j] = detail::act_forward(t.act, o[j]);
    }
}

using TileFn = void (*)(const Tile&);

constexpr int max_qb(int nv) { return kMaxAcc / nv; }   // 12, 6, 4, 3

template <bool ADD, int NV, int... QB>
constexpr std::array<TileFn, 13> row_of(std::integer_sequence<int, QB...>) {
  return {{nullptr, &tile_kernel<QB + 1, NV, ADD>...}};
}

// table[nv][qb] for 1 <= nv <= 4, 1 <= qb <= max_qb(nv)
template <bool ADD>
TileFn tile_fn(int nv, index_t qb) {
  static constexpr std::array<TileFn, 13> t1 = row_of<ADD, 1>(std::make_integer_sequence<int, max_qb(1)>{});
  static constexpr std::array<TileFn, 13> t2 = row_of<ADD, 2>(std::make_integer_sequence<int, max_qb(2)>{});
  static constexpr std::array<TileFn, 13> t3 = row_of<ADD, 3>(std::make_integer_sequence<int, max_qb(3)>{});
  static constexpr std::array<TileFn, 13> t4 = row_of<ADD, 4>(std::make_integer_sequence<int, max_qb(4)>{});
  switch (nv) {
    case 1: return t1[size_t(qb)];
    case 2: return t2[size_t(qb)];
    case 3: return t3[size_t(qb)];
    default: return t4[size_t(qb)];
  }
}

// Full tiles in one loop, with the micro-kernel inlined into it.
template <int NV, bool ADD>
void full_tiles(Tile t, index_t ntiles) {
  constexpr int QB = max_qb(NV);
  for (index_t n = 0; n < ntiles; ++n, t.a += QB, t.out += QB) tile_kernel<QB, NV, ADD>(t);
}

// Runs tiles over npix pixels for one packed panel (nv vectors, `valid` columns).
template <bool ADD>
void tile_sweep(Tile t, index_t npix, int nv) {
  const index_t qmax = max_qb(nv), ntiles = npix / qmax, rest = npix % qmax;
  switch (nv) {
    case 1: full_tiles<1, ADD>(t, ntiles); break;
    case 2: full_tiles<2, ADD>(t, ntiles); break;
    case 3: full_tiles<3, ADD>(t, ntiles); break;
    default: full_tiles<4, ADD>(t, ntiles); break;
  }
  if (rest) {
    t.a += ntiles * qmax;
    t.out += ntiles * qmax;
    tile_fn<ADD>(nv, rest)(t);
  }
}

// Column panels of a matrix with `cols` columns: widths of nv_max vectors, the last narrower.
struct Panel {
  index_t col0, valid;
  int nv;
};

std::vector<Panel> panels_of(index_t cols, int nv_max) {
  std::vector<Panel> ps;
  for (index_t c0 = 0; c0 < cols; c0 += 8 * nv_max) {
    const index_t valid = std::min<index_t>(8 * nv_max, cols - c0);
    ps.push_back({c0, valid, int((valid + 7) / 8)});
  }
  return ps;
}

// Packs rows [0, rows) x columns [col0, col0 + 8*nv) of a matrix given by elem(row, col) into
// rows x 8*nv floats, zeros past `cols`.
template <class F>
void pack_panel(index_t rows, index_t cols, const Panel& p, F elem, float* dst) {
  const index_t width = 8 * p.nv;
  for (index_t r = 0; r < rows; ++r)
    for (index_t j = 0; j < width; ++j)
      dst[r * width + j] = p.col0 + j < cols ? elem(r, p.col0 + j) : 0.f;
}

// ------------------------------------------------------------------------- micro-kernel: dw tile
// acc[m][v] = dw[rsc0 + m, k0 + 8v ..] accumulated over the npix pixels of an item. Pixel i reads
// x at x + pix_off[i] + moff[m] and dy at dy + i*K (an item's pixels are consecutive in dy). One
// flat loop over pixels: no short per-row loops whose exits the branch predictor would miss.
struct DwTile {
  const float* x;          // staged input of the item
  const index_t* pix_off;  // npix window corners in x
  const float* dy;         // dy of the item's first pixel, at column k0
  index_t npix, K;
  const index_t* moff;     // MR window offsets (rsc rows)
  float* acc;              // partial dw at (rsc0, k0); row stride ld
  index_t ld;
  index_t valid;           // dy columns in this panel: the last vector is masked to them
};

template <int MR, int NV, bool FULL>
void dw_kernel(const DwTile& t) {
  __m256 acc[MR][NV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[m][v] = _mm256_loadu_ps(t.acc + m * t.ld + 8 * v);
  const __m256i mask = lane_mask(t.valid - 8 * (NV - 1));
  const float* xm[MR];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) xm[m] = t.x + t.moff[m];
  const float* g = t.dy;
  const index_t* pix_off = t.pix_off;
  const index_t npix = t.npix, K = t.K;
  for (index_t i = 0; i < npix; ++i, g += K) {
    const index_t o = pix_off[i];
    if constexpr (MR * NV + MR + 1 <= 16) {
      // Few rows, wide panel (3 x 32): broadcast the x values once, stream dy a vector at a time.
      __m256 xv[MR];
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) xv[m] = _mm256_broadcast_ss(xm[m] + o);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) {
        const __m256 d = (v < NV - 1 || FULL) ? _mm256_loadu_ps(g + 8 * v) : _mm256_maskload_ps(g + 8 * v, mask);
#pragma GCC unroll 16
        for (int m = 0; m < MR; ++m) acc[m][v] = _mm256_fmadd_ps(xv[m], d, acc[m][v]);
      }
    } else {
      // Many rows, narrow panel (6 x 16): load the dy vectors once, broadcast x per row.
      __m256 d[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) d[v] = (v < NV - 1 || FULL) ? _mm256_loadu_ps(g + 8 * v) : _mm256_maskload_ps(g + 8 * v, mask);
#pragma GCC unroll 16
      for (int m = 0; m < MR; ++m) {
        const __m256 xv = _mm256_broadcast_ss(xm[m] + o);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[m][v] = _mm256_fmadd_ps(xv, d[v], acc[m][v]);
      }
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(t.acc + m * t.ld + 8 * v, acc[m][v]);
}

using DwFn = void (*)(const DwTile&);

// Two tile shapes, each with 12 accumulators: 6 rsc rows x 16 channels or 3 rows x 32 channels.
struct DwShape {
  int mr, nv;
};

template <bool FULL>
DwFn dw_fn(index_t mr, int nv) {
  static constexpr DwFn t[4][6] = {
      {&dw_kernel<1, 1, FULL>, &dw_kernel<2, 1, FULL>, &dw_kernel<3, 1, FULL>, &dw_kernel<4, 1, FULL>,
       &dw_kernel<5, 1, FULL>, &dw_kernel<6, 1, FULL>},
      {&dw_kernel<1, 2, FULL>, &dw_kernel<2, 2, FULL>, &dw_kernel<3, 2, FULL>, &dw_kernel<4, 2, FULL>,
       &dw_kernel<5, 2, FULL>, &dw_kernel<6, 2, FULL>},
      {&dw_kernel<1, 3, FULL>, &dw_kernel<2, 3, FULL>, &dw_kernel<3, 3, FULL>, nullptr, nullptr, nullptr},
      {&dw_kernel<1, 4, FULL>, &dw_kernel<2, 4, FULL>, &dw_kernel<3, 4, FULL>, nullptr, nullptr, nullptr}};
  return t[nv - 1][mr - 1];
}

// db[0 .. 8*NV) += the column sums of a block of dy (row stride ld), with the columns past
// `valid` masked; rows are the outer loop so dy streams through once.
template <int NV>
void col_sums(const float* dy, index_t rows, index_t ld, index_t valid, float* db) {
  __m256 acc[NV];
  const __m256i tail = lane_mask(valid - 8 * (NV - 1));
  const bool full = valid == 8 * NV;
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) acc[v] = _mm256_loadu_ps(db + 8 * v);
  for (index_t i = 0; i < rows; ++i, dy += ld) {
#pragma GCC unroll 16
    for (int v = 0; v < NV - 1; ++v) acc[v] = _mm256_add_ps(acc[v], _mm256_loadu_ps(dy + 8 * v));
    acc[NV - 1] = _mm256_add_ps(acc[NV - 1], full ? _mm256_loadu_ps(dy + 8 * (NV - 1))
                                                  : _mm256_maskload_ps(dy + 8 * (NV - 1), tail));
  }
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) _mm256_storeu_ps(db + 8 * v, acc[v]);
}

// db[0..K) (padded to a multiple of 8) += the sum of `rows` rows of dy (row stride ld).
void add_rows(const float* dy, index_t rows, index_t ld, index_t K, float* db) {
  using Fn = void (*)(const float*, index_t, index_t, index_t, float*);
  static constexpr Fn fns[8] = {&col_sums<1>, &col_sums<2>, &col_sums<3>, &col_sums<4>,
                                &col_sums<5>, &col_sums<6>, &col_sums<7>, &col_sums<8>};
  for (index_t k0 = 0; k0 < K; k0 += 64) {
    const index_t valid = std::min<index_t>(64, K - k0);
    fns[(valid + 7) / 8 - 1](dy + k0, rows, ld, valid, db + k0);
  }
}

// The first 64-byte aligned element of v (v holds 16 floats of slack for this), so that packed
// panels never split a vector load across cache lines.
float* align64(std::vector<float>& v) {
  const auto addr = reinterpret_cast<std::uintptr_t>(v.data());
  return v.data() + ((64 - addr % 64) % 64) / sizeof(float);
}

// A zero-filled, 64-byte aligned array of n floats inside v.
float* aligned_zeros(std::vector<float>& v, index_t n) {
  v.assign(size_t(n + 16), 0.f);
  return align64(v);
}

// Per-thread scratch that survives across calls (no allocation in the steady state).
struct Scratch {
  std::vector<float> stage;
  std::vector<const float*> a;
  std::vector<float*> out;
  std::vector<index_t> off;
  std::vector<float> dy;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// dz = act'(y) * dy on 8 lanes, from the forward output y (detail::act_backward's formulas).
template <Act A>
inline __m256 dz_of(__m256 g, __m256 y) {
  if constexpr (A == Act::Relu) return _mm256_and_ps(g, _mm256_cmp_ps(y, _mm256_setzero_ps(), _CMP_GT_OQ));
  if constexpr (A == Act::Sigmoid) return _mm256_mul_ps(_mm256_mul_ps(g, y), _mm256_sub_ps(_mm256_set1_ps(1.f), y));
  if constexpr (A == Act::Tanh) return _mm256_mul_ps(g, _mm256_fnmadd_ps(y, y, _mm256_set1_ps(1.f)));
  return g;
}

// rows x K values of dz = act'(y) * dy (row stride K) into dst (row stride Kp = K rounded up to
// 8, zero-padded, 32-byte aligned). For Linear it copies dy and y is not read.
template <Act A>
void dz_rows_t(const float* dy, const float* y, index_t rows, index_t K, index_t Kp, float* dst) {
  const __m256i tail = lane_mask(K % 8 ? K % 8 : 8);
  for (index_t i = 0; i < rows; ++i, dy += K, dst += Kp) {
    index_t k = 0;
    for (; k + 8 <= K; k += 8) {
      const __m256 g = _mm256_loadu_ps(dy + k);
      _mm256_store_ps(dst + k, A == Act::Linear ? g : dz_of<A>(g, _mm256_loadu_ps(y + k)));
    }
    if (k < K) {   // masked loads read zeros past K, and dz of zeros is zero for every act
      const __m256 g = _mm256_maskload_ps(dy + k, tail);
      _mm256_store_ps(dst + k, A == Act::Linear ? g : dz_of<A>(g, _mm256_maskload_ps(y + k, tail)));
    }
    if constexpr (A != Act::Linear) y += K;
  }
}

void dz_rows(Act act, const float* dy, const float* y, index_t rows, index_t K, index_t Kp, float* dst) {
  switch (act) {
    case Act::Relu: return dz_rows_t<Act::Relu>(dy, y, rows, K, Kp, dst);
    case Act::Sigmoid: return dz_rows_t<Act::Sigmoid>(dy, y, rows, K, Kp, dst);
    case Act::Tanh: return dz_rows_t<Act::Tanh>(dy, y, rows, K, Kp, dst);
    default: return dz_rows_t<Act::Linear>(dy, y, rows, K, Kp, dst);
  }
}

// The calling thread's 64-byte aligned buffer for n floats of dy.
float* dy_chunk(index_t n) {
  std::vector<float>& v = scratch().dy;
  if (v.size() < size_t(n + 16)) v.resize(size_t(n + 16));
  return align64(v);
}

}  // namespace

// ------------------------------------------------------------------------- forward
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    Act act) {
  const Layout L = layout_of(s);
  const Segments seg = segments_of(s, L.row_ld);
  const index_t RSC = s.R * s.S * s.C, Kp = (s.K + 7) / 8 * 8;
  // Panel width: 32 output channels (3 pixels x 4 vectors) while the packed w panel stays in L1
  // (small C, e.g. the first layer), else 16 channels (6 pixels x 2 vectors).
  const int nv_max = RSC * 32 * 4 <= 16 * 1024 ? 4 : 2;
  const std::vector<Panel> panels = panels_of(s.K, nv_max);
  std::vector<float> wbuf, bbuf;   // per call: w is small
  float* wp = aligned_zeros(wbuf, RSC * Kp);
  float* bp = aligned_zeros(bbuf, Kp);
  for (const Panel& p : panels)
    pack_panel(RSC, s.K, p, [&](index_t r, index_t k) { return w[r * s.K + k]; }, wp + RSC * p.col0);
  if (b) std::copy(b, b + s.K, bp);

  const Items it = items_of(s, omp_get_max_threads());
  const int nt = threads_of(s, it.count);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (index_t item = 0; item < it.count; ++item) {
    const index_t n = item / it.per_image, p0 = (item % it.per_image) * it.rows;
    const index_t p1 = std::min(s.P, p0 + it.rows), npix = (p1 - p0) * s.Q;
    const index_t prow0 = p0 * s.stride_h;
    const index_t nrows = (p1 - 1) * s.stride_h + (s.R - 1) * s.dilation_h + 1 - prow0;
    Scratch& sc = scratch();
    const float* xn = x + n * s.H * s.W * s.C;
    const float* base = xn + prow0 * L.row_ld;
    if (!L.in_place) {
      sc.stage.resize(size_t(nrows * L.row_ld));
      stage_rows(s, L, xn, prow0, nrows, sc.stage.data());
      base = sc.stage.data();
    }
    sc.a.resize(size_t(npix));
    sc.out.resize(size_t(npix));
    for (index_t p = p0, i = 0; p < p1; ++p)
      for (index_t q = 0; q < s.Q; ++q, ++i) {
        sc.a[size_t(i)] = base + (p - p0) * s.stride_h * L.row_ld + q * s.stride_w * s.C;
        sc.out[size_t(i)] = y + ((n * s.P + p) * s.Q + q) * s.K;
      }
    for (index_t i0 = 0; i0 < npix; i0 += kChunk)   // the chunk's windows stay in cache
      for (const Panel& p : panels) {
        Tile t{sc.a.data() + i0, seg.off.data(), index_t(seg.off.size()), seg.len, wp + RSC * p.col0,
               sc.out.data() + i0, p.col0, bp + p.col0, p.valid, act};
        tile_sweep<false>(t, std::min(kChunk, npix - i0), p.nv);
      }
  }
}

// ------------------------------------------------------------------------- backward
// dw tile shape: 3 rsc rows x 32 channels when K >= 32 (7 loads per 12 FMAs), else 6 x 16
// (8 loads per 12 FMAs, less waste on narrow K).
static DwShape dw_shape(const Conv2dShape& s) { return s.K >= 32 ? DwShape{3, 4} : DwShape{6, 2}; }

// dw and db: items as in the forward pass; each thread accumulates into its own partial dw/db,
// summed at the end in thread order (race-free, and the same result for the same thread count).
static void backward_weights(const Conv2dShape& s, const float* dy, const float* x, float* dw, float* db,
                             Act act, const float* y) {
  const Layout L = layout_of(s);
  const index_t RSC = s.R * s.S * s.C, Kp = (s.K + 7) / 8 * 8;
  std::vector<index_t> moff(static_cast<size_t>(RSC));   // window offset of each rsc row
  for (index_t r = 0, i = 0; r < s.R; ++r)
    for (index_t t = 0; t < s.S; ++t)
      for (index_t c = 0; c < s.C; ++c, ++i) moff[size_t(i)] = r * s.dilation_h * L.row_ld + t * s.dilation_w * s.C + c;
  const DwShape ds = dw_shape(s);
  const index_t chunk = 64;   // pixels per pass over the tiles (measured: 32..256 all close)
  const bool copy_dy = RSC >= 32 || act != Act::Linear;   // dz must be formed somewhere: here
  const std::vector<Panel> panels = panels_of(s.K, ds.nv);

  const Items it = items_of(s, omp_get_max_threads());
  const int nt = threads_of(s, it.count);
  const index_t part_size = (RSC * Kp + Kp + 15) / 16 * 16;   // dw rows, then db; 64-byte multiple
  std::vector<float> pbuf;
  float* part = aligned_zeros(pbuf, nt * part_size);
#pragma omp parallel num_threads(nt)
  {
    float* mine = part + omp_get_thread_num() * part_size;
#pragma omp for schedule(static)
    for (index_t item = 0; item < it.count; ++item) {
      const index_t n = item / it.per_image, p0 = (item % it.per_image) * it.rows;
      const index_t p1 = std::min(s.P, p0 + it.rows);
      const index_t prow0 = p0 * s.stride_h;
      const index_t nrows = (p1 - 1) * s.stride_h + (s.R - 1) * s.dilation_h + 1 - prow0;
      const float* xn = x + n * s.H * s.W * s.C;
      const float* base = xn + prow0 * L.row_ld;
      if (!L.in_place) {
        Scratch& sc = scratch();
        sc.stage.resize(size_t(nrows * L.row_ld));
        stage_rows(s, L, xn, prow0, nrows, sc.stage.data());
        base = sc.stage.data();
      }
      const float* dyb = dy + (n * s.P + p0) * s.Q * s.K;
      const float* yb = act != Act::Linear ? y + (n * s.P + p0) * s.Q * s.K : nullptr;
      const index_t npix = (p1 - p0) * s.Q;
      std::vector<index_t>& off = scratch().off;
      off.resize(size_t(npix));
      for (index_t p = p0, i = 0; p < p1; ++p)
        for (index_t q = 0; q < s.Q; ++q, ++i) off[size_t(i)] = (p - p0) * s.stride_h * L.row_ld + q * s.stride_w * s.C;
      // Pixels in chunks so that a chunk's dy and x stay in L1 across all the tiles. With many
      // rsc rows the chunk of dy is first copied to an aligned buffer, rows zero-padded to Kp,
      // so no vector load splits a cache line (numpy arrays are only 16-byte aligned): ~6% on
      // C=32, but a loss when there are only a few rsc rows to reuse each dy vector (C=1).
      // With an activation the copy is where dz = act'(y) * dy is formed, once per chunk.
      float* g = copy_dy ? dy_chunk(chunk * Kp) : nullptr;
      for (index_t i0 = 0; i0 < npix; i0 += chunk) {
        const index_t nc = std::min(chunk, npix - i0);
        const float* gc = dyb + i0 * s.K;
        index_t ld = s.K;
        if (copy_dy) {
          dz_rows(act, gc, yb ? yb + i0 * s.K : nullptr, nc, s.K, Kp, g);
          gc = g;
          ld = Kp;
        }
        if (db) add_rows(gc, nc, ld, s.K, mine + RSC * Kp);
        for (const Panel& p : panels)
          for (index_t m0 = 0; m0 < RSC; m0 += ds.mr) {
            const index_t mr = std::min<index_t>(ds.mr, RSC - m0);
            const index_t valid = copy_dy ? 8 * p.nv : p.valid;
            DwTile t{base, off.data() + i0, gc + p.col0, nc, ld, moff.data() + m0, mine + m0 * Kp + p.col0, Kp, valid};
            (valid == 8 * p.nv ? dw_fn<true>(mr, p.nv) : dw_fn<false>(mr, p.nv))(t);
          }
      }
    }
    // Reduce: each thread sums some rows of dw (and db) over all the partials.
#pragma omp for schedule(static)
    for (index_t i = 0; i < RSC + 1; ++i) {
      if (i == RSC && !db) continue;
      float* dst = i < RSC ? dw + i * s.K : db;
      for (index_t k = 0; k < s.K; ++k) {
        float acc = 0.f;
        for (int t = 0; t < nt; ++t) acc += part[size_t(t * part_size + i * Kp + k)];
        dst[k] += acc;
      }
    }
  }
}

// dx: the forward tile with dy as A and w^T as B, added into a zero-padded dx buffer (the same
// Layout as the input) and copied out. Columns of w^T are grouped so that each group lands on
// contiguous dx: per kernel row r (S*C values) when dilation_w == 1, else per tap (r, s).
// Parallel over images (each thread owns whole images of dx). When the batch is smaller than
// the thread count, images are cut into row blocks and every thread adds into a private
// padded copy of dx, summed at the end.
static void backward_input(const Conv2dShape& s, const float* dy, const float* w, float* dx, Act act,
                           const float* y) {
  const Layout L = layout_of(s);
  const index_t RSC = s.R * s.S * s.C, Kp = (s.K + 7) / 8 * 8;
  const index_t gw = s.dilation_w == 1 ? s.S * s.C : s.C;   // group width (columns)
  const index_t ngroups = RSC / gw;
  std::vector<index_t> goff(static_cast<size_t>(ngroups));
  for (index_t g = 0; g < ngroups; ++g) {
    const index_t r = s.dilation_w == 1 ? g : g / s.S, t = s.dilation_w == 1 ? 0 : g % s.S;
    goff[size_t(g)] = r * s.dilation_h * L.row_ld + t * s.dilation_w * s.C;
  }
  const int nv_max = s.K * 32 * 4 <= 16 * 1024 ? 4 : 2;   // as in the forward pass
  const std::vector<Panel> panels = panels_of(gw, nv_max);
  const index_t gstride = s.K * 8 * ((gw + 7) / 8);   // packed floats per group
  std::vector<float> wtbuf;
  float* wt = aligned_zeros(wtbuf, ngroups * gstride);
  for (index_t g = 0; g < ngroups; ++g)
    for (const Panel& p : panels)
      pack_panel(s.K, gw, p, [&](index_t k, index_t col) { return w[(g * gw + col) * s.K + k]; },
                 wt + g * gstride + s.K * p.col0);
  const index_t zero = 0;
  // Floats of one padded dx image, plus 8 of slack: the dx tiles add whole vectors (the lanes
  // past a panel's valid columns hold exact zeros), so they may run up to 7 floats past the end.
  const index_t img = L.Hp * L.row_ld + 8;

  const int T = omp_get_max_threads();
  const bool whole_images = s.N >= T;
  const Items it = whole_images ? Items{1, s.P, s.N} : items_of(s, T);
  const int nt = threads_of(s, it.count);
  std::vector<float> priv;   // private padded dx per thread (small batches only)
  if (!whole_images && nt > 1) priv.assign(size_t(nt * s.N * img), 0.f);
  // Without padding, and when every panel is whole vectors (so no tile writes past its window),
  // the tiles add into dx itself: no stage to zero and copy out (~5% on 26x26x32->64 valid).
  const bool direct = priv.empty() && L.in_place && gw % 8 == 0;

  auto copy_out = [&](const float* src, index_t n) {   // interior of a padded image -> dx[n]
    for (index_t h = 0; h < s.H; ++h) {
      const float* row = src + (h + s.pad_h) * L.row_ld + s.pad_w * s.C;
      std::copy(row, row + s.W * s.C, dx + (n * s.H + h) * s.W * s.C);
    }
  };

#pragma omp parallel num_threads(nt)
  {
    Scratch& sc = scratch();
#pragma omp for schedule(static)
    for (index_t item = 0; item < it.count; ++item) {
      const index_t n = item / it.per_image, p0 = (item % it.per_image) * it.rows;
      const index_t p1 = std::min(s.P, p0 + it.rows), npix = (p1 - p0) * s.Q;
      float* acc;
      if (direct) {   // no padding and no ragged panels: add straight into dx
        acc = dx + n * s.H * s.W * s.C;
        if (p0 == 0) std::fill(acc, acc + s.H * s.W * s.C, 0.f);
      } else if (priv.empty()) {
        if (p0 == 0) sc.stage.assign(size_t(img), 0.f);   // rows of one image, in order
        acc = sc.stage.data();
      } else {
        acc = priv.data() + (omp_get_thread_num() * s.N + n) * img;
      }
      sc.a.resize(size_t(npix));
      sc.out.resize(size_t(npix));
      for (index_t p = p0, i = 0; p < p1; ++p)
        for (index_t q = 0; q < s.Q; ++q, ++i) {
          sc.a[size_t(i)] = dy + ((n * s.P + p) * s.Q + q) * s.K;
          sc.out[size_t(i)] = acc + p * s.stride_h * L.row_ld + q * s.stride_w * s.C;
        }
      for (index_t i0 = 0; i0 < npix; i0 += kChunk) {   // the chunk's rows of dx stay in cache
        const index_t nc = std::min(kChunk, npix - i0);
        if (act != Act::Linear) {   // the chunk's dz rows, and A reads them instead of dy
          const index_t o = ((n * s.P + p0) * s.Q + i0) * s.K;   // the chunk's pixels are consecutive
          float* dz = dy_chunk(kChunk * Kp);
          dz_rows(act, dy + o, y + o, nc, s.K, Kp, dz);
          for (index_t i = 0; i < nc; ++i) sc.a[size_t(i0 + i)] = dz + i * Kp;
        }
        for (index_t g = 0; g < ngroups; ++g)
          for (const Panel& p : panels) {
            Tile t{sc.a.data() + i0, &zero, 1, s.K, wt + g * gstride + s.K * p.col0, sc.out.data() + i0,
                   goff[size_t(g)] + p.col0, nullptr, p.valid, Act::Linear};
            tile_sweep<true>(t, nc, p.nv);
          }
      }
      if (!direct && priv.empty() && p1 == s.P) copy_out(acc, n);
    }
    if (!priv.empty()) {   // sum the private copies (implicit barrier above)
#pragma omp for schedule(static)
      for (index_t nh = 0; nh < s.N * s.H; ++nh) {
        const index_t n = nh / s.H, h = nh % s.H;
        float* d = dx + nh * s.W * s.C;
        const index_t o = n * img + (h + s.pad_h) * L.row_ld + s.pad_w * s.C;
        std::copy(priv.data() + o, priv.data() + o + s.W * s.C, d);
        for (int t = 1; t < nt; ++t) {
          const float* src = priv.data() + t * s.N * img + o;
          for (index_t j = 0; j < s.W * s.C; ++j) d[j] += src[j];
        }
      }
    }
  }
}

void conv2d_backward(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                     float* dx, float* dw, float* db, Act act, const float* y) {
  backward_weights(s, dy, x, dw, db, act, y);
  if (dx) backward_input(s, dy, w, dx, act, y);
}

void conv2d_backward_input(const Conv2dShape& s, const float* dy, const float* w, float* dx, Act act,
                           const float* y) {
  backward_input(s, dy, w, dx, act, y);
}

}  // namespace kilnet::cpu::avx2
#endif
