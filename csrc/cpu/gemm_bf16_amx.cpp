// gemm_bf16_amx.cpp — the AMX-BF16 tile kernel of gemm_bf16 (built with -mamx-tile -mamx-bf16;
// gemm_bf16.cpp calls it only when bf16_level() is "amx"; the packers it reads from are in
// gemm_bf16_avx512bf16.cpp). One call computes a 32x32 block of
// C in four 16x16 float32 accumulator tiles: per k step of 32, two A tiles and two B tiles are
// loaded and multiplied four times (TDPBF16PS, 16x16x32 multiply-adds each), so every tile
// loaded is used twice.
#include "gemm_bf16_internal.h"

#if defined(KILNET_HAVE_AMX_BUILD) && defined(__AMX_TILE__) && defined(__AMX_BF16__)
#include <immintrin.h>
#include <cstring>

namespace kilnet::cpu::bf16_detail {

namespace {
struct alignas(64) TileConfig {
  std::uint8_t palette_id;
  std::uint8_t start_row;
  std::uint8_t reserved[14];
  std::uint16_t colsb[16];   // bytes per row of each tile
  std::uint8_t rows[16];
};
}  // namespace

void amx_begin() {
  TileConfig cfg;
  std::memset(&cfg, 0, sizeof cfg);
  cfg.palette_id = 1;
  for (int t = 0; t < 8; ++t) {   // 0-3: C (16 x 16 float32), 4-5: A, 6-7: B (16 x 64 bytes)
    cfg.rows[t] = 16;
    cfg.colsb[t] = 64;
  }
  // Inline asm with the whole struct as its operand: GCC 12 treats _tile_loadconfig's pointer
  // as not read and drops the stores above (the tiles then stay unconfigured: SIGILL).
  __asm__ volatile("ldtilecfg %0" : : "m"(cfg) : "memory");
}

void amx_end() { _tile_release(); }

void amx_block_32x32(const BlockA& a, const std::uint16_t* b, index_t steps, float* c, index_t ldc,
                     BlockInit init, const float* bias) {
  const index_t ld = ldc * index_t(sizeof(float));   // C row stride, bytes
  switch (init) {
    case BlockInit::Zero:
      _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
      break;
    case BlockInit::LoadC:   // accumulate onto C (beta == 1, or a later K block)
      _tile_loadd(0, c, ld); _tile_loadd(1, c + 16, ld);
      _tile_loadd(2, c + 16 * ldc, ld); _tile_loadd(3, c + 16 * ldc + 16, ld);
      break;
    case BlockInit::Bias:    // every row starts as the bias: a row stride of 0 repeats it
      _tile_loadd(0, bias, 0); _tile_loadd(1, bias + 16, 0);
      _tile_loadd(2, bias, 0); _tile_loadd(3, bias + 16, 0);
      break;
  }
  const std::uint16_t* a0 = a.p;
  const std::uint16_t* a1 = a.p + a.half;
  // B's tiles are loaded with the streaming hint (TILELOADDT1): a B block passes once under the
  // A block, and plain loads of it pushed the 32 KB A block (reused by every B block) out of
  // the 48 KB L1, so that both came from L2. (Interleaved runs on a Xeon with AMX, 1 thread:
  // 1024³ 790-830 -> 905-943 GFLOP/s, 2048³ 700-725 -> 816-841.)
  for (index_t s = 0; s < steps; ++s, a0 += a.step, a1 += a.step, b += kStepValues) {
    _tile_loadd(4, a0, a.stride);
    _tile_stream_loadd(6, b, 64);
    _tile_loadd(5, a1, a.stride);
    _tile_stream_loadd(7, b + 512, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, ld);
  _tile_stored(1, c + 16, ld);
  _tile_stored(2, c + 16 * ldc, ld);
  _tile_stored(3, c + 16 * ldc + 16, ld);
}

}  // namespace kilnet::cpu::bf16_detail
#endif
