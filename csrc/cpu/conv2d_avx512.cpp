// conv2d_avx512.cpp — direct AVX-512 convolution, forward and backward (built with the AVX-512
// flags; conv2d.cpp calls it only when kilnet::cpu::use_avx512() is true).
//
// The same design as conv2d_avx2.cpp (read its header comment first): no im2col; the forward
// and dx micro-tiles read A straight from the (staged, zero-padded) input segment by segment
// and broadcast one value at a time against vectors of output channels of a packed panel of w;
// dw accumulates per-thread partials summed in thread order. What changes with AVX-512:
//   - vectors are 16 channels; K % 16 tails use mask registers (masked loads never fault, so
//     the dx tiles add only the valid lanes and can add straight into dx more often);
//   - 32 registers: tiles of 24 accumulators (6 pixels x 64 channels, 8 x 48, 12 x 32,
//     12 x 16) leave room for the B vectors and the broadcast;
//   - dw tiles are 6 rsc rows x 64 channels (K > 48), 8 x 48, 12 x 32 or 12 x 16.
//   - where most of 16 lanes would be padding (forward with K <= 8, dx with column groups
//     narrower than 16, e.g. C <= 5 with 3x3) the AVX2 kernels run instead: measured faster.
// Determinism is as in the AVX2 path: each y and dx element is summed by one tile in a fixed
// order; dw/db partials are per thread and summed in thread order (same thread count, same bits).
//
// This file includes no project header with inline functions and instantiates no std::
// templates (no std::vector, std::min, ...): any such COMDAT copy compiled here with AVX-512
// could be the one the linker keeps for the AVX2/scalar files too. Buffers are the local Buf.
#include "kilnet/conv2d.h"

#if defined(KILNET_HAVE_AVX512_BUILD) && defined(__AVX512F__)
#include <immintrin.h>
#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>

// GCC 12 reports _mm512_undefined_ps inside _mm512_max_ps as "maybe uninitialized" (a false
// positive of the intrinsic header, not of this code).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace kilnet::cpu::avx2 {   // conv2d_avx2.cpp (always built beside this file)
void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    Act act);
void conv2d_backward_input(const Conv2dShape& s, const float* dy, const float* w, float* dx, Act act,
                           const float* y);
}  // namespace kilnet::cpu::avx2

namespace kilnet::cpu::avx512 {
namespace {

constexpr index_t imin(index_t a, index_t b) { return a < b ? a : b; }
constexpr index_t imax(index_t a, index_t b) { return a < b ? b : a; }
constexpr index_t round16(index_t n) { return (n + 15) / 16 * 16; }

inline __mmask16 lane_mask(index_t n) { return __mmask16((1u << unsigned(n)) - 1u); }   // first n (0..16) lanes

// A 64-byte aligned array that only grows (contents are not kept when it grows).
template <class T>
struct Buf {
  T* p = nullptr;
  size_t cap = 0;
  Buf() = default;
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { std::free(p); }
  T* get(index_t n) {
    const size_t want = size_t(n > 0 ? n : 1);
    if (want > cap) {
      std::free(p);
      p = static_cast<T*>(std::aligned_alloc(64, (want * sizeof(T) + 63) / 64 * 64));
      if (!p) {
        cap = 0;
        throw std::bad_alloc();
      }
      cap = want;
    }
    return p;
  }
  T* zeros(index_t n) {   // n elements, all zero (T is a number or a pointer)
    T* q = get(n);
    std::memset(static_cast<void*>(q), 0, size_t(n > 0 ? n : 0) * sizeof(T));
    return q;
  }
};

// detail::act_forward, written out here (see the header comment on inline functions).
float act_scalar(Act a, float x) {
  switch (a) {
    case Act::Relu: return x < 0.f ? 0.f : x;
    case Act::Sigmoid:
      if (x >= 0.f) return 1.f / (1.f + __builtin_expf(-x));
      else {
        const float e = __builtin_expf(x);
        return e / (1.f + e);
      }
    case Act::Tanh: return __builtin_tanhf(x);
    default: return x;
  }
}

// ------------------------------------------------------------------------- input geometry
// As in conv2d_avx2.cpp: the padded input is Hp x Wp x C, big enough for every window.
struct Layout {
  index_t Hp, Wp, row_ld;
  bool in_place;
};

Layout layout_of(const Conv2dShape& s) {
  Layout L;
  L.Hp = imax(s.pad_h + s.H, (s.P - 1) * s.stride_h + (s.R - 1) * s.dilation_h + 1);
  L.Wp = imax(s.pad_w + s.W, (s.Q - 1) * s.stride_w + (s.S - 1) * s.dilation_w + 1);
  L.in_place = s.pad_h == 0 && s.pad_w == 0 && L.Hp == s.H && L.Wp == s.W;
  L.row_ld = L.Wp * s.C;
  return L;
}

void stage_rows(const Conv2dShape& s, const Layout& L, const float* xn, index_t prow0, index_t rows,
                float* buf) {
  const index_t C = s.C, left = s.pad_w * C, body = s.W * C;
  for (index_t j = 0; j < rows; ++j) {
    float* d = buf + j * L.row_ld;
    const index_t h = prow0 + j - s.pad_h;
    if (h < 0 || h >= s.H) {
      std::memset(d, 0, size_t(L.row_ld) * sizeof(float));
      continue;
    }
    std::memset(d, 0, size_t(left) * sizeof(float));
    std::memcpy(d + left, xn + h * body, size_t(body) * sizeof(float));
    std::memset(d + left + body, 0, size_t(L.row_ld - left - body) * sizeof(float));
  }
}

// Work items, as in conv2d_avx2.cpp: (image, block of output rows).
struct Items {
  index_t per_image, rows, count;
};

constexpr index_t kItemPixels = 4096;
constexpr index_t kChunk = 384;   // pixels per sweep of the panels (a multiple of 6, 8 and 12)

// Chunks of about `target` pixels (a multiple of `mult`) that split npix evenly: no short last
// chunk whose tiles would load and store their accumulators for a few pixels only.
index_t balanced_chunk(index_t npix, index_t target, index_t mult) {
  const index_t n = (npix + target - 1) / target;
  const index_t c = (npix + n - 1) / n;
  return imin(target, (c + mult - 1) / mult * mult);
}

Items items_of(const Conv2dShape& s, int threads) {
  Items it;
  it.per_image = s.N >= 4 * threads ? 1 : imin(s.P, (4 * threads + s.N - 1) / s.N);
  it.rows = imin((s.P + it.per_image - 1) / it.per_image, imax(1, kItemPixels / s.Q));
  it.per_image = (s.P + it.rows - 1) / it.rows;
  it.count = s.N * it.per_image;
  return it;
}

// parallel.h's threads_for with the conv grain, written out here (see the header comment).
int threads_of(const Conv2dShape& s, index_t items) {
  const index_t flops = 2 * s.N * s.P * s.Q * s.K * s.R * s.S * s.C;
  index_t t = flops >> 18;
  if (t < 1) t = 1;
  t = imin(t, omp_get_max_threads());
  return int(imin(t, items));
}

// Per-thread scratch that survives across calls.
struct Scratch {
  Buf<float> stage, dy;
  Buf<const float*> a;
  Buf<float*> out;
  Buf<index_t> off;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// ------------------------------------------------------------------------- micro-kernel: A·B tile
// QB pixels x NV vectors of 16 columns; see Tile in conv2d_avx2.cpp. The last vector is masked
// to `valid` columns in both the store (forward) and the add (dx).
struct Tile {
  const float* const* a;
  const index_t* seg_off;
  index_t seg_count, seg_len;
  const float* b;
  float* const* out;
  index_t out_off;
  const float* bias;   // 16*NV floats or nullptr (forward only)
  index_t valid;       // 16*(NV-1) < valid <= 16*NV
  Act act;             // forward only
};

template <int QB, int NV, bool ADD>
inline __attribute__((always_inline)) void tile_kernel(const Tile& t) {
  __m512 acc[QB][NV];
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) {
    const __m512 init = t.bias ? _mm512_loadu_ps(t.bias + 16 * v) : _mm512_setzero_ps();
#pragma GCC unroll 24
    for (int i = 0; i < QB; ++i) acc[i][v] = init;
  }
  const float* b = t.b;
  for (index_t g = 0; g < t.seg_count; ++g) {
    const float* ap[QB];
#pragma GCC unroll 24
    for (int i = 0; i < QB; ++i) ap[i] = t.a[i] + t.seg_off[g];
    for (index_t j = 0; j < t.seg_len; ++j, b += 16 * NV) {
      __m512 bv[NV];
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) bv[v] = _mm512_load_ps(b + 16 * v);   // packed panels are aligned
#pragma GCC unroll 24
      for (int i = 0; i < QB; ++i) {
        const __m512 av = _mm512_set1_ps(ap[i][j]);
#pragma GCC unroll 16
        for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(av, bv[v], acc[i][v]);
      }
    }
  }
  if (!ADD && t.act == Act::Relu) {
    const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 24
    for (int i = 0; i < QB; ++i)
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_max_ps(zero, acc[i][v]);   // max(0, NaN) = NaN
  }
  const bool full = t.valid == 16 * NV;
  const __mmask16 m = lane_mask(t.valid - 16 * (NV - 1));
#pragma GCC unroll 24
  for (int i = 0; i < QB; ++i) {
    float* o = t.out[i] + t.out_off;
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) {
      if (v < NV - 1 || full) {
        if (ADD) _mm512_storeu_ps(o + 16 * v, _mm512_add_ps(acc[i][v], _mm512_loadu_ps(o + 16 * v)));
        else _mm512_storeu_ps(o + 16 * v, acc[i][v]);
      } else if (ADD) {   // only the valid lanes: the rest may be another window's dx
        _mm512_mask_storeu_ps(o + 16 * v, m, _mm512_add_ps(acc[i][v], _mm512_maskz_loadu_ps(m, o + 16 * v)));
      } else {            // into y: the lanes past K belong to the next pixel
        _mm512_mask_storeu_ps(o + 16 * v, m, acc[i][v]);
      }
    }
  }
  if (!ADD && (t.act == Act::Sigmoid || t.act == Act::Tanh))   // the tile is in L1
    for (int i = 0; i < QB; ++i) {
      float* o = t.out[i] + t.out_off;
      for (index_t j = 0; j < t.valid; ++j) o[j] = act_scalar(t.act, o[j]);
    }
}

using TileFn = void (*)(const Tile&);

// 24 accumulators, except one vector wide: 12 (each pixel then costs a broadcast per FMA, so
// more pixels would not help, and 12 chains cover the FMA latency).
constexpr int max_qb(int nv) { return nv == 1 ? 12 : 24 / nv; }   // 12, 12, 8, 6

struct FnRow {
  TileFn f[13];
};

template <bool ADD, int NV, int... QB>
constexpr FnRow row_of(std::integer_sequence<int, QB...>) {
  return FnRow{{nullptr, &tile_kernel<QB + 1, NV, ADD>...}};
}

template <bool ADD>
TileFn tile_fn(int nv, index_t qb) {
  static constexpr FnRow t1 = row_of<ADD, 1>(std::make_integer_sequence<int, max_qb(1)>{});
  static constexpr FnRow t2 = row_of<ADD, 2>(std::make_integer_sequence<int, max_qb(2)>{});
  static constexpr FnRow t3 = row_of<ADD, 3>(std::make_integer_sequence<int, max_qb(3)>{});
  static constexpr FnRow t4 = row_of<ADD, 4>(std::make_integer_sequence<int, max_qb(4)>{});
  switch (nv) {
    case 1: return t1.f[qb];
    case 2: return t2.f[qb];
    case 3: return t3.f[qb];
    default: return t4.f[qb];
  }
}

template <int NV, bool ADD>
void full_tiles(Tile t, index_t ntiles) {
  constexpr int QB = max_qb(NV);
  for (index_t n = 0; n < ntiles; ++n, t.a += QB, t.out += QB) tile_kernel<QB, NV, ADD>(t);
}

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

// Column panels: widths of nv_max vectors, the last narrower.
struct Panel {
  index_t col0, valid;
  int nv;
};

struct Panels {
  Buf<Panel> buf;
  index_t n = 0;
  const Panel* begin() const { return buf.p; }
  const Panel* end() const { return buf.p + n; }
};

void panels_of(index_t cols, int nv_max, Panels& ps) {
  const index_t w = 16 * nv_max;
  Panel* p = ps.buf.get((cols + w - 1) / w);
  ps.n = 0;
  for (index_t c0 = 0; c0 < cols; c0 += w) {
    const index_t valid = imin(w, cols - c0);
    p[ps.n++] = Panel{c0, valid, int((valid + 15) / 16)};
  }
}

// Packs rows [0, rows) x columns [col0, col0 + 16*nv) of elem(row, col) into rows x 16*nv floats,
// zeros past `cols`.
template <class F>
void pack_panel(index_t rows, index_t cols, const Panel& p, F elem, float* dst) {
  const index_t width = 16 * p.nv;
  for (index_t r = 0; r < rows; ++r)
    for (index_t j = 0; j < width; ++j) dst[r * width + j] = p.col0 + j < cols ? elem(r, p.col0 + j) : 0.f;
}

// Panel width of the forward tiles (vectors of 16 output channels). Up to 32 channels, one
// panel (12 pixels x 1-2 vectors). Wider K: 4 vectors (6 pixels x 64 channels: 10 loads per 24
// FMAs) while the packed panel (RSC x 64 floats) fits in L1 with the windows, e.g. small C;
// else 2 vectors (12 x 32: 14 loads per 24 FMAs, but a panel half the size).
int forward_nv(index_t RSC, index_t K) {
  const index_t nvec = (K + 15) / 16;
  if (nvec <= 2) return int(nvec);
  if (RSC * 64 * 4 <= 24 * 1024) return nvec == 3 ? 3 : 4;
  return 2;
}

// ------------------------------------------------------------------------- micro-kernel: dw tile
// As DwTile in conv2d_avx2.cpp: acc[m][v] = dw[rsc0 + m, k0 + 16v ..] summed over the pixels.
struct DwTile {
  const float* x;
  const index_t* pix_off;
  const float* dy;
  index_t npix, K;
  const index_t* moff;
  float* acc;
  index_t ld;
  index_t valid;
};

template <int MR, int NV, bool FULL>
void dw_kernel(const DwTile& t) {
  __m512 acc[MR][NV];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_loadu_ps(t.acc + m * t.ld + 16 * v);
  const __mmask16 mask = lane_mask(t.valid - 16 * (NV - 1));
  const float* xm[MR];
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m) xm[m] = t.x + t.moff[m];
  const float* g = t.dy;
  const index_t* pix_off = t.pix_off;
  const index_t npix = t.npix, K = t.K;
  for (index_t i = 0; i < npix; ++i, g += K) {
    const index_t o = pix_off[i];
    // load the dy vectors once, broadcast x per rsc row: NV + MR loads per MR*NV FMAs
    __m512 d[NV];
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v)
      d[v] = (v < NV - 1 || FULL) ? _mm512_loadu_ps(g + 16 * v) : _mm512_maskz_loadu_ps(mask, g + 16 * v);
#pragma GCC unroll 16
    for (int m = 0; m < MR; ++m) {
      const __m512 xv = _mm512_set1_ps(xm[m][o]);
#pragma GCC unroll 16
      for (int v = 0; v < NV; ++v) acc[m][v] = _mm512_fmadd_ps(xv, d[v], acc[m][v]);
    }
  }
#pragma GCC unroll 16
  for (int m = 0; m < MR; ++m)
#pragma GCC unroll 16
    for (int v = 0; v < NV; ++v) _mm512_storeu_ps(t.acc + m * t.ld + 16 * v, acc[m][v]);
}

using DwFn = void (*)(const DwTile&);

struct DwShape {
  int mr, nv;
};

// 24 accumulators (12 for one vector): 6 rsc rows x 64 channels (K > 48), 8 x 48, 12 x 32, 12 x 16.
DwShape dw_shape(const Conv2dShape& s) {
  if (s.K > 48) return {6, 4};
  if (s.K > 32) return {8, 3};
  if (s.K > 16) return {12, 2};
  return {12, 1};
}

template <bool FULL>
DwFn dw_fn(index_t mr, int nv) {
  static constexpr DwFn t[4][12] = {
      {&dw_kernel<1, 1, FULL>, &dw_kernel<2, 1, FULL>, &dw_kernel<3, 1, FULL>, &dw_kernel<4, 1, FULL>,
       &dw_kernel<5, 1, FULL>, &dw_kernel<6, 1, FULL>, &dw_kernel<7, 1, FULL>, &dw_kernel<8, 1, FULL>,
       &dw_kernel<9, 1, FULL>, &dw_kernel<10, 1, FULL>, &dw_kernel<11, 1, FULL>, &dw_kernel<12, 1, FULL>},
      {&dw_kernel<1, 2, FULL>, &dw_kernel<2, 2, FULL>, &dw_kernel<3, 2, FULL>, &dw_kernel<4, 2, FULL>,
       &dw_kernel<5, 2, FULL>, &dw_kernel<6, 2, FULL>, &dw_kernel<7, 2, FULL>, &dw_kernel<8, 2, FULL>,
       &dw_kernel<9, 2, FULL>, &dw_kernel<10, 2, FULL>, &dw_kernel<11, 2, FULL>, &dw_kernel<12, 2, FULL>},
      {&dw_kernel<1, 3, FULL>, &dw_kernel<2, 3, FULL>, &dw_kernel<3, 3, FULL>, &dw_kernel<4, 3, FULL>,
       &dw_kernel<5, 3, FULL>, &dw_kernel<6, 3, FULL>, &dw_kernel<7, 3, FULL>, &dw_kernel<8, 3, FULL>,
       nullptr, nullptr, nullptr, nullptr},
      {&dw_kernel<1, 4, FULL>, &dw_kernel<2, 4, FULL>, &dw_kernel<3, 4, FULL>, &dw_kernel<4, 4, FULL>,
       &dw_kernel<5, 4, FULL>, &dw_kernel<6, 4, FULL>, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr}};
  return t[nv - 1][mr - 1];
}

// db[0 .. 16*NV) += the column sums of a block of dy (row stride ld), columns past `valid` masked.
template <int NV>
void col_sums(const float* dy, index_t rows, index_t ld, index_t valid, float* db) {
  __m512 acc[NV];
  const __mmask16 tail = lane_mask(valid - 16 * (NV - 1));
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) acc[v] = _mm512_loadu_ps(db + 16 * v);
  for (index_t i = 0; i < rows; ++i, dy += ld) {
#pragma GCC unroll 16
    for (int v = 0; v < NV - 1; ++v) acc[v] = _mm512_add_ps(acc[v], _mm512_loadu_ps(dy + 16 * v));
    acc[NV - 1] = _mm512_add_ps(acc[NV - 1], _mm512_maskz_loadu_ps(tail, dy + 16 * (NV - 1)));
  }
#pragma GCC unroll 16
  for (int v = 0; v < NV; ++v) _mm512_storeu_ps(db + 16 * v, acc[v]);
}

// db[0..K) (padded to a multiple of 16) += the sum of `rows` rows of dy (row stride ld).
void add_rows(const float* dy, index_t rows, index_t ld, index_t K, float* db) {
  using Fn = void (*)(const float*, index_t, index_t, index_t, float*);
  static constexpr Fn fns[4] = {&col_sums<1>, &col_sums<2>, &col_sums<3>, &col_sums<4>};
  for (index_t k0 = 0; k0 < K; k0 += 64) {
    const index_t valid = imin(64, K - k0);
    fns[(valid + 15) / 16 - 1](dy + k0, rows, ld, valid, db + k0);
  }
}

// dz = act'(y) * dy on 16 lanes, from the forward output y (detail::act_backward's formulas).
template <Act A>
inline __m512 dz_of(__m512 g, __m512 y) {
  if constexpr (A == Act::Relu)
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(y, _mm512_setzero_ps(), _CMP_GT_OQ), g);
  if constexpr (A == Act::Sigmoid) return _mm512_mul_ps(_mm512_mul_ps(g, y), _mm512_sub_ps(_mm512_set1_ps(1.f), y));
  if constexpr (A == Act::Tanh) return _mm512_mul_ps(g, _mm512_fnmadd_ps(y, y, _mm512_set1_ps(1.f)));
  return g;
}

// rows x K values of dz = act'(y) * dy into dst (row stride Kp = K rounded up to 16, zero-padded,
// 64-byte aligned). For Linear it copies dy and y is not read.
template <Act A>
void dz_rows_t(const float* dy, const float* y, index_t rows, index_t K, index_t Kp, float* dst) {
  const __mmask16 tail = lane_mask(K % 16);
  for (index_t i = 0; i < rows; ++i, dy += K, dst += Kp) {
    index_t k = 0;
    for (; k + 16 <= K; k += 16) {
      const __m512 g = _mm512_loadu_ps(dy + k);
      _mm512_store_ps(dst + k, A == Act::Linear ? g : dz_of<A>(g, _mm512_loadu_ps(y + k)));
    }
    if (k < K) {   // masked loads read zeros past K, and dz of zeros is zero for every act
      const __m512 g = _mm512_maskz_loadu_ps(tail, dy + k);
      _mm512_store_ps(dst + k, A == Act::Linear ? g : dz_of<A>(g, _mm512_maskz_loadu_ps(tail, y + k)));
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

}  // namespace

// ------------------------------------------------------------------------- forward
// Where 16 lanes would mostly hold padding the AVX2 kernels are faster (measured at 1 thread,
// 16x28x28 'same' 3x3): the forward pass with K <= 8 (C=32, K=8: 0.55 ms against 0.66; both
// are bound by the one broadcast per FMA), and dx with column groups (S*C, or C with dilation)
// narrower than 16 (C=3, K=64: 0.83 ms against 0.94; C=7 and wider: AVX-512 is as fast or faster).
bool forward_to_avx2(const Conv2dShape& s) { return s.K <= 8; }
bool dx_to_avx2(const Conv2dShape& s) { return (s.dilation_w == 1 ? s.S * s.C : s.C) < 16; }

void conv2d_forward(const Conv2dShape& s, const float* x, const float* w, const float* b, float* y,
                    Act act) {
  if (forward_to_avx2(s)) return avx2::conv2d_forward(s, x, w, b, y, act);
  const Layout L = layout_of(s);
  const index_t RSC = s.R * s.S * s.C, Kp = round16(s.K);
  // The windows as segments (see conv2d_avx2.cpp): kernel rows when dilation_w == 1, else taps.
  Buf<index_t> segbuf;
  index_t nseg = 0, seg_len;
  index_t* seg = segbuf.get(s.R * s.S);
  if (s.dilation_w == 1) {
    seg_len = s.S * s.C;
    for (index_t r = 0; r < s.R; ++r) seg[nseg++] = r * s.dilation_h * L.row_ld;
  } else {
    seg_len = s.C;
    for (index_t r = 0; r < s.R; ++r)
      for (index_t t = 0; t < s.S; ++t) seg[nseg++] = r * s.dilation_h * L.row_ld + t * s.dilation_w * s.C;
  }
  Panels panels;
  panels_of(s.K, forward_nv(RSC, s.K), panels);
  Buf<float> wbuf, bbuf;   // per call: w is small
  float* wp = wbuf.zeros(RSC * Kp);
  float* bp = bbuf.zeros(Kp);
  for (const Panel& p : panels)
    pack_panel(RSC, s.K, p, [&](index_t r, index_t k) { return w[r * s.K + k]; }, wp + RSC * p.col0);
  if (b) std::memcpy(bp, b, size_t(s.K) * sizeof(float));

  const Items it = items_of(s, omp_get_max_threads());
  const int nt = threads_of(s, it.count);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (index_t item = 0; item < it.count; ++item) {
    const index_t n = item / it.per_image, p0 = (item % it.per_image) * it.rows;
    const index_t p1 = imin(s.P, p0 + it.rows), npix = (p1 - p0) * s.Q;
    const index_t prow0 = p0 * s.stride_h;
    const index_t nrows = (p1 - 1) * s.stride_h + (s.R - 1) * s.dilation_h + 1 - prow0;
    Scratch& sc = scratch();
    const float* xn = x + n * s.H * s.W * s.C;
    const float* base = xn + prow0 * L.row_ld;
    if (!L.in_place) {
      float* st = sc.stage.get(nrows * L.row_ld);
      stage_rows(s, L, xn, prow0, nrows, st);
      base = st;
    }
    const float** a = sc.a.get(npix);
    float** out = sc.out.get(npix);
    for (index_t p = p0, i = 0; p < p1; ++p)
      for (index_t q = 0; q < s.Q; ++q, ++i) {
        a[i] = base + (p - p0) * s.stride_h * L.row_ld + q * s.stride_w * s.C;
        out[i] = y + ((n * s.P + p) * s.Q + q) * s.K;
      }
    const index_t chunk = balanced_chunk(npix, kChunk, 24);
    for (index_t i0 = 0; i0 < npix; i0 += chunk)   // the chunk's windows stay in cache
      for (const Panel& p : panels) {
        Tile t{a + i0, seg, nseg, seg_len, wp + RSC * p.col0, out + i0, p.col0, bp + p.col0, p.valid, act};
        tile_sweep<false>(t, imin(chunk, npix - i0), p.nv);
      }
  }
}

// ------------------------------------------------------------------------- backward
// dw and db: items as in the forward pass; each thread accumulates into its own partial dw/db,
// summed at the end in thread order (race-free, and the same result for the same thread count).
static void backward_weights(const Conv2dShape& s, const float* dy, const float* x, float* dw, float* db,
                             Act act, const float* y) {
  const Layout L = layout_of(s);
  const index_t RSC = s.R * s.S * s.C, Kp = round16(s.K);
  Buf<index_t> moffbuf;
  index_t* moff = moffbuf.get(RSC);   // window offset of each rsc row
  for (index_t r = 0, i = 0; r < s.R; ++r)
    for (index_t t = 0; t < s.S; ++t)
      for (index_t c = 0; c < s.C; ++c, ++i) moff[i] = r * s.dilation_h * L.row_ld + t * s.dilation_w * s.C + c;
  const DwShape ds = dw_shape(s);
  const index_t kDwChunk = 64;   // pixels per pass over the tiles: the chunk's dy and x stay in L1
  // The copy of dy into an aligned, zero-padded buffer: every 64-byte load of an unaligned dy
  // splits a cache line, and the copy is where dz = act'(y) * dy is formed. Skipped for few rsc
  // rows (C=1), where each dy vector is reused only a few times.
  const bool copy_dy = RSC >= 32 || act != Act::Linear;
  Panels panels;
  panels_of(s.K, ds.nv, panels);

  const Items it = items_of(s, omp_get_max_threads());
  const int nt = threads_of(s, it.count);
  const index_t part_size = RSC * Kp + Kp;   // dw rows, then db; a multiple of 16 floats
  Buf<float> pbuf;
  float* part = pbuf.zeros(nt * part_size);
#pragma omp parallel num_threads(nt)
  {
    float* mine = part + omp_get_thread_num() * part_size;
    Scratch& sc = scratch();
#pragma omp for schedule(static)
    for (index_t item = 0; item < it.count; ++item) {
      const index_t n = item / it.per_image, p0 = (item % it.per_image) * it.rows;
      const index_t p1 = imin(s.P, p0 + it.rows);
      const index_t prow0 = p0 * s.stride_h;
      const index_t nrows = (p1 - 1) * s.stride_h + (s.R - 1) * s.dilation_h + 1 - prow0;
      const float* xn = x + n * s.H * s.W * s.C;
      const float* base = xn + prow0 * L.row_ld;
      if (!L.in_place) {
        float* st = sc.stage.get(nrows * L.row_ld);
        stage_rows(s, L, xn, prow0, nrows, st);
        base = st;
      }
      const float* dyb = dy + (n * s.P + p0) * s.Q * s.K;
      const float* yb = act != Act::Linear ? y + (n * s.P + p0) * s.Q * s.K : nullptr;
      const index_t npix = (p1 - p0) * s.Q;
      index_t* off = sc.off.get(npix);
      for (index_t p = p0, i = 0; p < p1; ++p)
        for (index_t q = 0; q < s.Q; ++q, ++i) off[i] = (p - p0) * s.stride_h * L.row_ld + q * s.stride_w * s.C;
      const index_t chunk = balanced_chunk(npix, kDwChunk, 1);
      float* g = copy_dy ? sc.dy.get(chunk * Kp) : nullptr;
      for (index_t i0 = 0; i0 < npix; i0 += chunk) {
        const index_t nc = imin(chunk, npix - i0);
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
            const index_t mr = imin(ds.mr, RSC - m0);
            const index_t valid = copy_dy ? 16 * p.nv : p.valid;
            DwTile t{base, off + i0, gc + p.col0, nc, ld, moff + m0, mine + m0 * Kp + p.col0, Kp, valid};
            (valid == 16 * p.nv ? dw_fn<true>(mr, p.nv) : dw_fn<false>(mr, p.nv))(t);
          }
      }
    }
    // Reduce: each thread sums some rows of dw (and db) over all the partials, in thread order.
#pragma omp for schedule(static)
    for (index_t i = 0; i < RSC + 1; ++i) {
      if (i == RSC && !db) continue;
      float* dst = i < RSC ? dw + i * s.K : db;
      for (index_t k = 0; k < s.K; ++k) {
        float acc = 0.f;
        for (int t = 0; t < nt; ++t) acc += part[t * part_size + i * Kp + k];
        dst[k] += acc;
      }
    }
  }
}

// dx: as backward_input in conv2d_avx2.cpp — the forward tile with dy (or dz) as A and w^T as B,
// per group of columns that lands on contiguous dx (a kernel row when dilation_w == 1, else a
// tap), added into dx itself (no padding, one writer per image), a per-image padded stage, or
// per-thread padded copies summed at the end (batch smaller than the thread count).
static void backward_input(const Conv2dShape& s, const float* dy, const float* w, float* dx, Act act,
                           const float* y) {
  const Layout L = layout_of(s);
  const index_t Kp = round16(s.K);
  const index_t gw = s.dilation_w == 1 ? s.S * s.C : s.C;   // group width (columns)
  const index_t ngroups = s.R * s.S * s.C / gw;
  Buf<index_t> goffbuf;
  index_t* goff = goffbuf.get(ngroups);
  for (index_t g = 0; g < ngroups; ++g) {
    const index_t r = s.dilation_w == 1 ? g : g / s.S, t = s.dilation_w == 1 ? 0 : g % s.S;
    goff[g] = r * s.dilation_h * L.row_ld + t * s.dilation_w * s.C;
  }
  // Panel width: the whole group when it is at most 4 vectors, else panels of 3 or 4 vectors
  // (3 when that divides the group evenly: 96 columns = 2 x (8 pixels x 48)); 2 when a 4-vector
  // panel of K rows would not stay in L1.
  const index_t nvec = (gw + 15) / 16;
  int nv_max = nvec <= 4 ? int(nvec) : (nvec % 4 != 0 && nvec % 3 == 0 ? 3 : 4);
  if (nv_max > 2 && s.K * 16 * nv_max * 4 > 32 * 1024) nv_max = 2;
  Panels panels;
  panels_of(gw, nv_max, panels);
  const index_t gstride = s.K * 16 * nvec;   // packed floats per group
  Buf<float> wtbuf;
  float* wt = wtbuf.zeros(ngroups * gstride);
  for (index_t g = 0; g < ngroups; ++g)
    for (const Panel& p : panels)
      pack_panel(s.K, gw, p, [&](index_t k, index_t col) { return w[(g * gw + col) * s.K + k]; },
                 wt + g * gstride + s.K * p.col0);
  const index_t zero = 0;
  const index_t img = L.Hp * L.row_ld;   // floats of one padded dx image

  const int T = omp_get_max_threads();
  const bool whole_images = s.N >= T;
  const Items it = whole_images ? Items{1, s.P, s.N} : items_of(s, T);
  const int nt = threads_of(s, it.count);
  const bool use_priv = !whole_images && nt > 1;
  Buf<float> privbuf;
  float* priv = use_priv ? privbuf.zeros(nt * s.N * img) : nullptr;
  // The masked tile adds never touch columns past a panel, so without padding the tiles add
  // straight into dx (no stage to zero and copy out).
  const bool direct = !use_priv && L.in_place;

  auto copy_out = [&](const float* src, index_t n) {   // interior of a padded image -> dx[n]
    for (index_t h = 0; h < s.H; ++h)
      std::memcpy(dx + (n * s.H + h) * s.W * s.C, src + (h + s.pad_h) * L.row_ld + s.pad_w * s.C,
                  size_t(s.W * s.C) * sizeof(float));
  };

#pragma omp parallel num_threads(nt)
  {
    Scratch& sc = scratch();
#pragma omp for schedule(static)
    for (index_t item = 0; item < it.count; ++item) {
      const index_t n = item / it.per_image, p0 = (item % it.per_image) * it.rows;
      const index_t p1 = imin(s.P, p0 + it.rows), npix = (p1 - p0) * s.Q;
      float* acc;
      if (direct) {
        acc = dx + n * s.H * s.W * s.C;
        if (p0 == 0) std::memset(acc, 0, size_t(s.H * s.W * s.C) * sizeof(float));
      } else if (!use_priv) {
        if (p0 == 0) sc.stage.zeros(img);   // rows of one image, in order
        acc = sc.stage.p;
      } else {
        acc = priv + (omp_get_thread_num() * s.N + n) * img;
      }
      const float** a = sc.a.get(npix);
      float** out = sc.out.get(npix);
      for (index_t p = p0, i = 0; p < p1; ++p)
        for (index_t q = 0; q < s.Q; ++q, ++i) {
          a[i] = dy + ((n * s.P + p) * s.Q + q) * s.K;
          out[i] = acc + p * s.stride_h * L.row_ld + q * s.stride_w * s.C;
        }
      const index_t chunk = balanced_chunk(npix, kChunk, 24);
      for (index_t i0 = 0; i0 < npix; i0 += chunk) {   // the chunk's rows of dx stay in cache
        const index_t nc = imin(chunk, npix - i0);
        if (act != Act::Linear) {   // the chunk's dz rows, and A reads them instead of dy
          const index_t o = ((n * s.P + p0) * s.Q + i0) * s.K;
          float* dz = sc.dy.get(chunk * Kp);
          dz_rows(act, dy + o, y + o, nc, s.K, Kp, dz);
          for (index_t i = 0; i < nc; ++i) a[i0 + i] = dz + i * Kp;
        }
        for (index_t g = 0; g < ngroups; ++g)
          for (const Panel& p : panels) {
            Tile t{a + i0, &zero, 1, s.K, wt + g * gstride + s.K * p.col0, out + i0, goff[g] + p.col0,
                   nullptr, p.valid, Act::Linear};
            tile_sweep<true>(t, nc, p.nv);
          }
      }
      if (!direct && !use_priv && p1 == s.P) copy_out(acc, n);
    }
    if (use_priv) {   // sum the private copies in thread order (implicit barrier above)
#pragma omp for schedule(static)
      for (index_t nh = 0; nh < s.N * s.H; ++nh) {
        const index_t n = nh / s.H, h = nh % s.H;
        float* d = dx + nh * s.W * s.C;
        const index_t o = n * img + (h + s.pad_h) * L.row_ld + s.pad_w * s.C;
        std::memcpy(d, priv + o, size_t(s.W * s.C) * sizeof(float));
        for (int t = 1; t < nt; ++t) {
          const float* src = priv + t * s.N * img + o;
          for (index_t j = 0; j < s.W * s.C; ++j) d[j] += src[j];
        }
      }
    }
  }
}

void conv2d_backward_input(const Conv2dShape& s, const float* dy, const float* w, float* dx, Act act,
                           const float* y);

void conv2d_backward(const Conv2dShape& s, const float* dy, const float* x, const float* w,
                     float* dx, float* dw, float* db, Act act, const float* y) {
  backward_weights(s, dy, x, dw, db, act, y);
  if (dx) conv2d_backward_input(s, dy, w, dx, act, y);
}

void conv2d_backward_input(const Conv2dShape& s, const float* dy, const float* w, float* dx, Act act,
                           const float* y) {
  if (dx_to_avx2(s)) return avx2::conv2d_backward_input(s, dy, w, dx, act, y);
  backward_input(s, dy, w, dx, act, y);
}

}  // namespace kilnet::cpu::avx512
#endif
