// conv_dense.cpp — Conv2D -> Flatten -> Dense fused over blocks of output rows (conv_dense.h).
//
// Threads take contiguous runs of row blocks. Inside the parallel region each thread sets its
// own OpenMP thread count to 1, so the conv2d and gemm kernels it calls run on it alone with their
// per-thread (thread_local) scratch; the Dense weight rows of a block are disjoint between
// blocks, so dW needs no reduction, while the logits and the convolution's weight gradient are
// per-thread partials summed in thread order (deterministic for a thread count).
#include "kilnet/conv_dense.h"

#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "kilnet/gemm.h"
#include "parallel.h"

namespace kilnet::cpu::avx512 {   // conv_dense_avx512.cpp
void narrow_forward(index_t N, index_t kb, index_t U, const float* h, const float* w, float* z, bool accumulate);
void narrow_weight_grad(index_t N, index_t kb, index_t U, const float* h, const float* dz, float* dw,
                        bool overwrite);
void narrow_input_grad(index_t N, index_t kb, index_t U, const float* dz, const float* w, float* dh);
int pixel_max_taps();
bool lanes_fit(const Conv2dShape& s);                                     // conv_dense_lanes_avx512.cpp
void images_in_lanes(index_t N, index_t F, const float* x, float* xt);
void pixel_forward(const Conv2dShape& s, bool relu, const float* xt, const float* wc, const float* bc, index_t U,
                   const float* wd, index_t pix0, index_t pix1, float* z);
void pixel_backward(const Conv2dShape& s, bool relu, const float* x, const float* wc, const float* bc, index_t U,
                    const float* wd, const float* dz, index_t pix0, index_t pix1, float* dwc, float* dbc,
                    float* dwd, bool overwrite, float* h);
int per_example_max_taps();                                               // conv_dense_per_example_avx512.cpp
index_t per_example_images_size(const Conv2dShape& s);
index_t per_example_scratch(const Conv2dShape& s);
void per_example_images(const Conv2dShape& s, const float* x, float* xt);
void per_example_channels(const Conv2dShape& s, bool relu, const float* xt, const float* wc, const float* bc,
                          index_t U, const float* wd, const float* dz, index_t k0, index_t k1, float* per, float* hsq,
                          float* scratch);
}  // namespace kilnet::cpu::avx512

namespace kilnet::cpu {
namespace {

// Up to 16 units a row of the Dense weights is one zmm: the AVX-512 narrow products, no packing.
bool narrow(index_t U) {
#ifdef KILNET_HAVE_AVX512_BUILD
  return U <= 16 && use_avx512();
#else
  (void)U;
  return false;
#endif
}

// z (+)= h · w (N x kb times kb x U)
void block_forward(index_t N, index_t kb, index_t U, const float* h, const float* w, float* z, bool accumulate) {
#ifdef KILNET_HAVE_AVX512_BUILD
  if (narrow(U)) return avx512::narrow_forward(N, kb, U, h, w, z, accumulate);
#endif
  gemm(false, false, N, U, kb, 1.0f, h, kb, w, U, accumulate ? 1.0f : 0.0f, z, U, nullptr);
}

// dw (+)= h^T dz
void block_weight_grad(index_t N, index_t kb, index_t U, const float* h, const float* dz, float* dw, bool overwrite) {
#ifdef KILNET_HAVE_AVX512_BUILD
  if (narrow(U)) return avx512::narrow_weight_grad(N, kb, U, h, dz, dw, overwrite);
#endif
  gemm(true, false, kb, U, N, 1.0f, h, kb, dz, U, overwrite ? 0.0f : 1.0f, dw, U, nullptr);
}

// dh = dz w^T
void block_input_grad(index_t N, index_t kb, index_t U, const float* dz, const float* w, float* dh) {
#ifdef KILNET_HAVE_AVX512_BUILD
  if (narrow(U)) return avx512::narrow_input_grad(N, kb, U, dz, w, dh);
#endif
  gemm(false, true, N, kb, U, 1.0f, dz, U, w, U, 0.0f, dh, kb, nullptr);
}

// The pixel path (conv_dense_avx512.cpp: one output pixel of all images at a time, all in L1)
// where it applies: AVX-512, K = 16 or 32 channels, up to 16 units, few taps, ReLU or linear.
// KILNET_CONV_DENSE_PATH=blocks forces the block path (for the tests and for measuring).
bool blocks_forced() {
  const char* v = std::getenv("KILNET_CONV_DENSE_PATH");
  return v != nullptr && std::strcmp(v, "blocks") == 0;
}

bool pixel_path(const Conv2dShape& s, Act act, index_t U) {
#ifdef KILNET_HAVE_AVX512_BUILD
  return narrow(U) && (s.K == 16 || s.K == 32) && s.R * s.S * s.C <= avx512::pixel_max_taps() &&
         avx512::lanes_fit(s) && (act == Act::Relu || act == Act::Linear) && !blocks_forced();
#else
  (void)s, (void)act, (void)U;
  return false;
#endif
}

// The per-example pass's AVX-512 kernel (conv_dense_per_example_avx512.cpp) where it applies;
// else each example through the general kernels (KILNET_CONV_DENSE_PATH=blocks forces that too).
bool per_example_path(index_t taps, Act act, index_t U) {
#ifdef KILNET_HAVE_AVX512_BUILD
  return narrow(U) && taps <= avx512::per_example_max_taps() && (act == Act::Relu || act == Act::Linear) &&
         !blocks_forced();
#else
  (void)taps, (void)act, (void)U;
  return false;
#endif
}

// A block of h (all images x pb rows) and the slab of x it reads stay in L2 with the Dense rows.
constexpr index_t kBlockBytes = 256 * 1024;

struct Plan {
  index_t pb, nb;   // output rows per block, blocks
  int nt;           // threads
};

Plan plan_of(const Conv2dShape& s) {
  const index_t row = s.N * s.Q * s.K * index_t(sizeof(float));
  index_t pb = kBlockBytes / (row > 0 ? row : 1);
  if (pb < 1) pb = 1;
  if (pb > s.P) pb = s.P;
  index_t nb = (s.P + pb - 1) / pb;
  const int maxt = omp_get_max_threads();
  int nt = maxt < nb ? maxt : static_cast<int>(nb);
  // as many blocks per thread where smaller blocks allow it (26 rows on 2 threads: 26 blocks of
  // one row rather than 13 of two, 7 on one thread and 6 on the other)
  while (nt > 1 && nb % nt && pb > 1) {
    --pb;
    nb = (s.P + pb - 1) / pb;
  }
  return {pb, nb, nt < 1 ? 1 : nt};
}

// The pixel path's plan: the output pixels split evenly between the threads.
Plan pixel_plan(const Conv2dShape& s) {
  const index_t pixels = s.P * s.Q;
  const int maxt = omp_get_max_threads();
  const int nt = maxt < pixels ? maxt : static_cast<int>(pixels);
  return {1, pixels, nt < 1 ? 1 : nt};
}

// Output rows [p0, p1) as a convolution of their own: the input rows they read (from *row0), with
// the padding at the top of this slab only where the image's own padding is above it.
Conv2dShape slab_of(const Conv2dShape& s, index_t p0, index_t p1, index_t* row0) {
  Conv2dShape t = s;
  const index_t first = p0 * s.stride_h - s.pad_h;
  const index_t last = (p1 - 1) * s.stride_h - s.pad_h + (s.R - 1) * s.dilation_h;
  const index_t lo = first < 0 ? 0 : first;
  const index_t hi = last > s.H - 1 ? s.H - 1 : last;
  if (hi < lo) throw std::invalid_argument("conv_dense: an output row reads only padding rows (padding beyond the kernel); use conv2d_forward and gemm");
  t.pad_h = lo - first;
  t.H = hi - lo + 1;
  t.P = p1 - p0;
  *row0 = lo;
  return t;
}

struct Scratch {
  std::vector<float> slab, h, dh, z, dwc, dbc, xt, wdt;
};

float* grown(std::vector<float>& v, index_t n) {
  if (static_cast<index_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
  return v.data();
}

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// The slab of every image into one buffer (N x t.H x W x C), so the block is one conv call.
void stage(const Conv2dShape& s, const Conv2dShape& t, index_t row0, const float* x, float* dst) {
  const index_t img = s.H * s.W * s.C, rows = t.H * s.W * s.C;
  for (index_t n = 0; n < s.N; ++n)
    std::memcpy(dst + n * rows, x + n * img + row0 * s.W * s.C, static_cast<size_t>(rows) * sizeof(float));
}

// Block b of the plan, made ready: its rows of x staged into the thread's slab, and room for
// its h (N x kb). The forward and the backward start each block the same way.
struct Block {
  Conv2dShape ts;   // the block's rows as a convolution of their own
  index_t p0, kb;   // first output row, features of h per image
  float* slab;
  float* h;
};

Block start_block(const Conv2dShape& s, const Plan& p, index_t b, const float* x, Scratch& sc) {
  Block k;
  k.p0 = b * p.pb;
  const index_t p1 = k.p0 + p.pb < s.P ? k.p0 + p.pb : s.P;
  index_t row0;
  k.ts = slab_of(s, k.p0, p1, &row0);
  k.slab = grown(sc.slab, s.N * k.ts.H * s.W * s.C);
  k.kb = (p1 - k.p0) * s.Q * s.K;
  k.h = grown(sc.h, s.N * k.kb);
  stage(s, k.ts, row0, x, k.slab);
  return k;
}

// Runs body(thread, first block, end block) on plan.nt threads, each running its kernels alone;
// rethrows the first exception after the region.
template <class Body>
void run_blocks(const Plan& p, Body body) {
  each_thread_alone(p.nt, [&](int t, int nt) { body(t, p.nb * t / nt, p.nb * (t + 1) / nt); });
}

}  // namespace

void conv_dense_forward(const Conv2dShape& s, Act act, const float* x, const float* wc, const float* bc,
                        index_t U, const float* wd, const float* bd, float* z) {
  const bool pixels = pixel_path(s, act, U);
  const Plan p = pixels ? pixel_plan(s) : plan_of(s);
  std::vector<float*> parts(static_cast<size_t>(p.nt), nullptr);
  const float* xt = nullptr;   // the pixel path's x with 16 images in the lanes (all threads read it)
#ifdef KILNET_HAVE_AVX512_BUILD
  if (pixels) {
    const index_t F = s.H * s.W * s.C;
    float* buf = grown(scratch().xt, (s.N + 15) / 16 * 16 * F);
    avx512::images_in_lanes(s.N, F, x, buf);
    xt = buf;
  }
#endif
  run_blocks(p, [&](int t, index_t b0, index_t b1) {
    Scratch& sc = scratch();
    float* zp = t == 0 ? z : grown(sc.z, s.N * U);
    parts[static_cast<size_t>(t)] = zp;
#ifdef KILNET_HAVE_AVX512_BUILD
    if (pixels) {   // the "blocks" are output pixels here
      std::memset(zp, 0, static_cast<size_t>(s.N * U) * sizeof(float));
      avx512::pixel_forward(s, act == Act::Relu, xt, wc, bc, U, wd, b0, b1, zp);
      return;
    }
#endif
    if (b0 == b1) std::memset(zp, 0, static_cast<size_t>(s.N * U) * sizeof(float));
    for (index_t b = b0; b < b1; ++b) {
      const Block k = start_block(s, p, b, x, sc);
      conv2d_forward(k.ts, k.slab, wc, bc, k.h, act);
      block_forward(s.N, k.kb, U, k.h, wd + k.p0 * s.Q * s.K * U, zp, b != b0);
    }
  });
  for (int t = 1; t < p.nt; ++t)
    for (index_t i = 0; i < s.N * U; ++i) z[i] += parts[static_cast<size_t>(t)][i];
  if (bd)
    for (index_t n = 0; n < s.N; ++n)
      for (index_t u = 0; u < U; ++u) z[n * U + u] += bd[u];
}

void conv_dense_backward(const Conv2dShape& s, Act act, const float* x, const float* wc, const float* bc,
                         index_t U, const float* wd, const float* dz, float* dwc, float* dbc, float* dwd,
                         float* dbd, bool overwrite_dwd) {
  const bool pixels = pixel_path(s, act, U);
  const Plan p = pixels ? pixel_plan(s) : plan_of(s);
  const bool conv = dwc != nullptr;   // else the Dense's gradients only (DP-SGD's clipped sum)
  if (!conv) dbc = nullptr;
  const index_t nw = s.R * s.S * s.C * s.K;
  std::vector<float*> wparts(static_cast<size_t>(p.nt), nullptr), bparts(static_cast<size_t>(p.nt), nullptr);
  run_blocks(p, [&](int t, index_t b0, index_t b1) {
    Scratch& sc = scratch();
    // thread 0 adds straight into dwc/dbc; the others into zeroed partials added after
    float* dw = !conv ? nullptr : t == 0 ? dwc : grown(sc.dwc, nw);
    float* db = dbc == nullptr ? nullptr : t == 0 ? dbc : grown(sc.dbc, s.K);
    if (t != 0) {
      if (dw) std::memset(dw, 0, static_cast<size_t>(nw) * sizeof(float));
      if (db) std::memset(db, 0, static_cast<size_t>(s.K) * sizeof(float));
    }
    wparts[static_cast<size_t>(t)] = dw;
    bparts[static_cast<size_t>(t)] = db;
#ifdef KILNET_HAVE_AVX512_BUILD
    if (pixels) {   // the "blocks" are output pixels here
      avx512::pixel_backward(s, act == Act::Relu, x, wc, bc, U, wd, dz, b0, b1, dw, db, dwd, overwrite_dwd,
                             grown(sc.h, s.N * s.K));
      return;
    }
#endif
    for (index_t b = b0; b < b1; ++b) {
      const Block k = start_block(s, p, b, x, sc);
      conv2d_forward(k.ts, k.slab, wc, bc, k.h, act);                        // h again, in cache
      const index_t row = k.p0 * s.Q * s.K * U;                              // the block's Dense rows
      block_weight_grad(s.N, k.kb, U, k.h, dz, dwd + row, overwrite_dwd);    // dW rows
      if (!conv) continue;
      float* dh = grown(sc.dh, s.N * k.kb);
      block_input_grad(s.N, k.kb, U, dz, wd + row, dh);                      // dh = dz W^T
      conv2d_backward(k.ts, dh, k.slab, wc, nullptr, dw, db, act, k.h);      // act'(h) applied inside
    }
  });
  for (int t = 1; conv && t < p.nt; ++t) {
    const float* w = wparts[static_cast<size_t>(t)];
    for (index_t i = 0; i < nw; ++i) dwc[i] += w[i];
    if (dbc)
      for (index_t k = 0; k < s.K; ++k) dbc[k] += bparts[static_cast<size_t>(t)][k];
  }
  if (dbd) bias_backward(s.N, U, dz, dbd);
}

bool conv_dense_per_example_direct(index_t taps, Act act, index_t U) { return per_example_path(taps, act, U); }

void conv_dense_per_example(const Conv2dShape& s, Act act, const float* x, const float* wc, const float* bc,
                            index_t U, const float* wd, const float* dz, float* per, float* hsq) {
  const index_t nw = s.R * s.S * s.C * s.K, row = nw + (bc ? s.K : 0), F = s.P * s.Q * s.K;
  const index_t img = s.H * s.W * s.C;
  const int maxt = omp_get_max_threads();
  const int nt = maxt < s.N ? maxt : static_cast<int>(s.N);
#ifdef KILNET_HAVE_AVX512_BUILD
  if (per_example_path(s.R * s.S * s.C, act, U)) {   // 16 examples in the lanes; the channels split between the threads
    float* xt = grown(scratch().xt, avx512::per_example_images_size(s));
    avx512::per_example_images(s, x, xt);
    const int ct = maxt < s.K ? maxt : static_cast<int>(s.K);
    std::vector<float> parts(static_cast<size_t>(ct * s.N), 0.0f);   // |h|^2 per thread, summed in thread order
    each_thread_alone(ct, [&](int t, int n) {
      float* sc = grown(scratch().slab, avx512::per_example_scratch(s));
      avx512::per_example_channels(s, act == Act::Relu, xt, wc, bc, U, wd, dz, s.K * t / n, s.K * (t + 1) / n, per,
                                   parts.data() + t * s.N, sc);
    });
    for (index_t i = 0; i < s.N; ++i) {
      float q = 0.0f;
      for (int t = 0; t < ct; ++t) q += parts[static_cast<size_t>(t * s.N + i)];
      hsq[i] = q;
    }
    return;
  }
#endif
  // Each example as a batch of one through the general kernels: h, |h|^2, dh = dz_n W^T, then
  // the convolution's weight gradient of that example alone.
  Conv2dShape one = s;
  one.N = 1;
  each_thread_alone(nt, [&](int t, int n) {
    Scratch& sc = scratch();
    float* h = grown(sc.h, F);
    float* dh = grown(sc.dh, F);
    for (index_t i = s.N * t / n; i < s.N * (t + 1) / n; ++i) {
      const float* xi = x + i * img;
      float* pr = per + i * row;
      conv2d_forward(one, xi, wc, bc, h, act);
      double q = 0.0;
      for (index_t j = 0; j < F; ++j) q += double(h[j]) * h[j];
      hsq[i] = static_cast<float>(q);
      gemm(false, true, 1, F, U, 1.0f, dz + i * U, U, wd, U, 0.0f, dh, F, nullptr);
      std::memset(pr, 0, static_cast<size_t>(row) * sizeof(float));
      conv2d_backward(one, dh, xi, wc, nullptr, pr, bc ? pr + nw : nullptr, act, h);
    }
  });
}

// ------------------------------------------------------------------------------ reference
void conv_dense_forward_ref(const Conv2dShape& s, Act act, const float* x, const float* wc, const float* bc,
                            index_t U, const float* wd, const float* bd, float* z) {
  std::vector<float> h(static_cast<size_t>(s.N * s.P * s.Q * s.K));
  conv2d_forward_ref(s, x, wc, bc, h.data(), act);
  const index_t F = s.P * s.Q * s.K;
  gemm_ref(false, false, s.N, U, F, 1.0f, h.data(), F, wd, U, 0.0f, z, U, bd);
}

void conv_dense_backward_ref(const Conv2dShape& s, Act act, const float* x, const float* wc, const float* bc,
                             index_t U, const float* wd, const float* dz, float* dwc, float* dbc, float* dwd,
                             float* dbd, bool overwrite_dwd) {
  const index_t F = s.P * s.Q * s.K;
  std::vector<float> h(static_cast<size_t>(s.N * F)), dh(static_cast<size_t>(s.N * F));
  conv2d_forward_ref(s, x, wc, bc, h.data(), act);
  gemm_ref(true, false, F, U, s.N, 1.0f, h.data(), F, dz, U, overwrite_dwd ? 0.0f : 1.0f, dwd, U, nullptr);
  gemm_ref(false, true, s.N, F, U, 1.0f, dz, U, wd, U, 0.0f, dh.data(), F, nullptr);
  if (dwc) conv2d_backward_ref(s, dh.data(), x, wc, nullptr, dwc, dbc, act, h.data());
  if (dbd) bias_backward_ref(s.N, U, dz, dbd);
}

void conv_dense_per_example_ref(const Conv2dShape& s, Act act, const float* x, const float* wc, const float* bc,
                                index_t U, const float* wd, const float* dz, float* per, float* hsq) {
  const index_t nw = s.R * s.S * s.C * s.K, row = nw + (bc ? s.K : 0), F = s.P * s.Q * s.K;
  Conv2dShape one = s;
  one.N = 1;
  std::vector<float> h(static_cast<size_t>(F)), dh(static_cast<size_t>(F));
  for (index_t i = 0; i < s.N; ++i) {
    const float* xi = x + i * s.H * s.W * s.C;
    float* pr = per + i * row;
    conv2d_forward_ref(one, xi, wc, bc, h.data(), act);
    double q = 0.0;
    for (index_t j = 0; j < F; ++j) q += double(h[j]) * h[j];
    hsq[i] = static_cast<float>(q);
    gemm_ref(false, true, 1, F, U, 1.0f, dz + i * U, U, wd, U, 0.0f, dh.data(), F, nullptr);
    for (index_t j = 0; j < row; ++j) pr[j] = 0.0f;
    conv2d_backward_ref(one, dh.data(), xi, wc, nullptr, pr, bc ? pr + nw : nullptr, act, h.data());
  }
}

}  // namespace kilnet::cpu
