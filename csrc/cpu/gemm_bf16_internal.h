// gemm_bf16_internal.h — private to gemm_bf16.cpp (driver, dispatch), gemm_bf16_avx512bf16.cpp
// (packing, the VDPBF16PS kernel) and gemm_bf16_amx.cpp (the AMX tile kernel). Declarations only (see gemm_internal.h for why).
#pragma once
#include <cstdint>
#include "kilnet/common.h"

namespace kilnet::cpu::bf16_detail {

// Packed layouts, in k steps of 32 (K padded with zeros to a multiple of 32):
//   A block of 32 rows: for each k step, two 16 x 32 tiles (rows 0-15, then 16-31), each row 32
//     bfloat16 = 64 bytes: 1024 values per k step.
//   B block of 32 columns: for each k step, two tiles (columns 0-15, then 16-31) in the pair
//     ("VNNI") layout: row p holds, for each of the 16 columns, op(B)[2p][c] and op(B)[2p+1][c]:
//     16 rows x 64 bytes, 1024 values per k step.
constexpr int kStep = 32;        // k per tile step
constexpr int kBlock = 32;       // rows (columns) of C per A (B) block
constexpr int kStepValues = 1024;

#if defined(KILNET_HAVE_AVX512_BUILD)
// bf16_convert_avx512.cpp: the conversions of gemm_bf16.h (float_to_bf16 / bf16_to_float) on
// one thread's range, with the same bits as the scalar loops; and add_bf16's.
void to_bf16_avx512(index_t n, const float* x, std::uint16_t* y);
void from_bf16_avx512(index_t n, const std::uint16_t* x, float* y);
void add_bf16_avx512(index_t n, const std::uint16_t* a, const std::uint16_t* b, std::uint16_t* y);
#endif

#if defined(KILNET_HAVE_AVX512BF16_BUILD)
// Where the two A tiles of each k step are: a packed block (stride 64 bytes, second tile 512
// values on, 1024 values per step) or a bfloat16 A read in place (stride lda*2 bytes, second
// tile 16 rows on, 32 values per step; AMX only).
struct BlockA {
  const std::uint16_t* p;
  index_t stride;   // bytes between the rows of a tile
  index_t half;     // values from the first tile to the second
  index_t step;     // values per k step
};
// What the accumulators start from: zero, the 32x32 block of C itself, or the bias row.
enum class BlockInit { Zero, LoadC, Bias };

// gemm_bf16_avx512bf16.cpp (AVX512-BF16, no AMX needed):
// Packers into the layouts above, for k in [k0, k0+kc) (kc a multiple of 32), zeros past
// `rows` (`cols`) and past K. src: float32 (rounded to nearest even by VCVTNEPS2BF16, which
// flushes denormals) or bfloat16 bits, row-major with row stride ld, read as op(src) (trans);
// a transposed operand through 16x16 transposes of bfloat16 pairs.
void pack_a(const void* src, bool bf16, bool trans, index_t ld, index_t i0, index_t rows,
            index_t K, index_t k0, index_t kc, std::uint16_t* dst);
// sums (not null, B not transposed only): the 32 column sums of op(B)'s rows [k0, k0+kc) of the
// block, in float32 before rounding, each column summed in k order (written, not added).
void pack_b(const void* src, bool bf16, bool trans, index_t ld, index_t j0, index_t cols,
            index_t K, index_t k0, index_t kc, std::uint16_t* dst, float* sums = nullptr);
// The bfloat16 output of a block: rows x cols of the 32x32 float32 block t (+ bias[c] when
// bias is given) rounded to nearest even (the bits of float_to_bf16) into c (row stride ldc).
void store_bf16(const float* t, index_t rows, index_t cols, const float* bias, std::uint16_t* c,
                index_t ldc);
// The 32x32 float32 block init + op(A)·op(B) over `steps` k steps with VDPBF16PS (A packed:
// stride 64, half 512, step 1024), stored to c (row stride ldc).
void dp_block_32x32(const BlockA& a, const std::uint16_t* b, index_t steps, float* c, index_t ldc,
                    BlockInit init, const float* bias);
#endif

#if defined(KILNET_HAVE_AMX_BUILD)
// gemm_bf16_amx.cpp:
// Loads this thread's tile configuration (4 accumulators, 2 A and 2 B tiles); once per call.
void amx_begin();
// Releases the tile state (so that the OS need not save 8 KB on each switch).
void amx_end();
// The same block as dp_block_32x32 on AMX tiles (A packed or read in place).
void amx_block_32x32(const BlockA& a, const std::uint16_t* b, index_t steps, float* c, index_t ldc,
                     BlockInit init, const float* bias);
#endif

}  // namespace kilnet::cpu::bf16_detail
