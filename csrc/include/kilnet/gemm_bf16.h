// gemm_bf16.h — bfloat16 matrix multiply with float32 accumulation (mixed precision).
//   C = alpha * op(A)·op(B) + beta * C (+ bias),  C float32 row-major (M x N, row stride ldc).
// A and B are either float32 (rounded to bfloat16, to nearest even, while they are packed) or
// bfloat16 bit patterns (uint16, the upper half of a float32), row-major with leading dimensions
// lda / ldb, op() transposing when ta / tb. Products of two bfloat16 values are exact in float32;
// the sums are float32 (the AMX unit's or VDPBF16PS's own order inside a 32-long k step).
// Runs on AMX tiles where the CPU and the OS allow it (bf16_level() == "amx"), on VDPBF16PS where
// the CPU has AVX512-BF16 without AMX ("avx512bf16"), else through the float32 GEMM on the rounded operands (same numbers up to float32 summation order).
// beta == 0: C is not read. Kernels trust their arguments (the bindings check them).
#pragma once
#include <cstdint>
#include "kilnet/common.h"

namespace kilnet::cpu {

struct Bf16Matrix {
  const void* data;
  bool bf16;     // true: uint16 bfloat16 bits; false: float32 (rounded while packing)
  index_t ld;    // row stride in elements
};

// colsum (N floats, optional): colsum[j] += the sum over k of op(B)(k, j) in float32 (the values
// before rounding): with B = dz in dW = xᵀ·dz, the bias gradient, taken from B's packing (AMX
// or AVX512-BF16) instead of another pass over dz. Not read or written when null.
void gemm_bf16(bool ta, bool tb, index_t M, index_t N, index_t K, float alpha, Bf16Matrix A,
               Bf16Matrix B, float beta, float* C, index_t ldc, const float* bias, float* colsum = nullptr);
// The same product written as bfloat16: C = round(op(A)·op(B) + bias) (bits of float_to_bf16 on
// the float32 result), C uint16 bits, row stride ldc. On AMX the float32 sum never leaves the
// tiles (half the bytes of a float32 C written, no conversion pass after it).
void gemm_bf16_out(bool ta, bool tb, index_t M, index_t N, index_t K, Bf16Matrix A, Bf16Matrix B,
                   std::uint16_t* C, index_t ldc, const float* bias);
// Plain loops, double accumulation of the bfloat16-rounded operands: the test reference.
void gemm_bf16_ref(bool ta, bool tb, index_t M, index_t N, index_t K, float alpha, Bf16Matrix A,
                   Bf16Matrix B, float beta, float* C, index_t ldc, const float* bias);

// "amx" when the AMX-BF16 tile kernel runs (CPUID, XCR0 and the Linux permission request for
// the tile state all agree, and KILNET_SIMD has not lowered the level below avx512), else
// "avx512bf16" when the CPU has AVX512-BF16 (and the level is avx512), else "fp32".
// KILNET_BF16=avx512bf16|fp32 lowers it (never raises it).
const char* bf16_level();
// The CPU has AVX512-BF16 and the SIMD level in use is avx512 (whatever KILNET_BF16 says).
bool cpu_has_avx512bf16();

// float32 -> bfloat16 bits, round to nearest even; NaN stays NaN (quiet), inf stays inf.
void float_to_bf16(index_t n, const float* x, std::uint16_t* y);
void bf16_to_float(index_t n, const std::uint16_t* x, float* y);
// y = a + b on bfloat16 bits: the float32 sum (exact widening) rounded once to nearest even, as
// a bfloat16 add does; y may be a or b.
void add_bf16(index_t n, const std::uint16_t* a, const std::uint16_t* b, std::uint16_t* y);

}  // namespace kilnet::cpu
