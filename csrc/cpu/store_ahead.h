// store_ahead.h — when a kernel's output stream runs just ahead of one of its input streams.
//
// Measured on an Intel Xeon (family 6 model 207), arrays on transparent huge pages: a row kernel
// that reads in[j] and writes out[j] runs 2-2.6x slower when out sits 16 to ~256 bytes after in
// modulo 2 MiB (layernorm backward 4096x768: 2.2 -> 5.9 ms; softmax cross-entropy 1024x1000:
// 0.8 -> 2.0 ms); not on 4 KiB pages, not when out is behind in. Each load then follows a store
// to an address equal to it in the bits the core compares (the 2 MiB page offset), and waits.
// numpy hands out exactly this layout: two heap arrays of the same size, a multiple of 2 MiB
// (1024x1024 or 4096x768 floats), allocated one after the other, lie size + 16 bytes apart.
// Kernels check once per call (the rows of all their arrays have the same stride) and then
// write such an output through a staging row (staging_for).
#pragma once
#include <omp.h>
#include <cstdint>
#include <cstring>
#include "kilnet/common.h"

namespace kilnet::cpu {

// True when out lies 1..512 bytes after in, modulo 2 MiB (never for a null pointer), on a CPU
// where that stalls (stages_store_ahead(): Intel; AMD Zen 4 measured no stall, and the staging
// copies made ReLU/GELU/tanh 1.5-2.5x slower there).
inline bool store_ahead(const void* out, const void* in) {
  if (!out || !in || !stages_store_ahead()) return false;
  const std::uintptr_t d = (reinterpret_cast<std::uintptr_t>(out) - reinterpret_cast<std::uintptr_t>(in)) &
                           ((std::uintptr_t(1) << 21) - 1);
  return d != 0 && d <= 512;
}

// True when a lies 1..512 bytes after b modulo 4 KiB: the classic aliasing of a load with an
// earlier store that matches it in the low 12 bits (any page size).
inline bool ahead_4k(const void* a, const void* b) {
  const std::uintptr_t d = (reinterpret_cast<std::uintptr_t>(a) - reinterpret_cast<std::uintptr_t>(b)) & 4095;
  return d != 0 && d <= 512;
}

// Staging rows: a thread's slot holds n + kStageExtra floats (allocate them before the parallel
// region). staging_for() picks, among five places 1040 bytes apart, one where the kernel's
// stores do not run just ahead of its inputs (in0..in2) and the copy out to dst does not run
// just ahead of the staging row: each condition rules out at most one of the five.
constexpr index_t kStageExtra = 4 * 1040 / sizeof(float) + 16;
inline float* staging_for(float* slot, const float* dst, const float* in0, const float* in1 = nullptr,
                          const float* in2 = nullptr) {
  for (int k = 0; k < 5; ++k) {
    float* t = slot + k * (1040 / sizeof(float));
    if (!ahead_4k(dst, t) && !(in0 && ahead_4k(t, in0)) && !(in1 && ahead_4k(t, in1)) &&
        !(in2 && ahead_4k(t, in2)))
      return t;
  }
  return slot;   // unreachable: four conditions cannot rule out five places
}

// The copy out of a staging buffer: 64-byte pieces the compiler inlines as vector moves.
// std::memcpy of these sizes (2-8 KiB) took glibc's `rep movsb` path, which on AMD Zen 4 cost
// more than the kernel itself (GELU 4M floats staged: 5.1 ms against 2.3 unstaged).
inline void copy_out(float* dst, const float* src, index_t n) {
  index_t i = 0;
  for (; i + 16 <= n; i += 16) __builtin_memcpy(dst + i, src + i, 64);
  for (; i < n; ++i) dst[i] = src[i];
}

// Elementwise kernels: out[0, n) computed by block(lo, len, dst) -- the values of out[lo, lo+len)
// into dst, serially on the calling thread -- in blocks of kStageBlock spread over nt threads, each
// block written to a staging buffer on the thread's stack and copied out: one load-after-store
// clash per block instead of one per vector. in0, in1: the arrays the kernel reads.
constexpr index_t kStageBlock = 2048;
template <class Block>
void staged_blocks(index_t n, int nt, float* out, const float* in0, const float* in1, Block block) {
  const index_t nb = (n + kStageBlock - 1) / kStageBlock;
#pragma omp parallel num_threads(nt)
  {
    alignas(64) float buf[kStageBlock + kStageExtra];
#pragma omp for schedule(static)
    for (index_t b = 0; b < nb; ++b) {
      const index_t lo = b * kStageBlock, len = (n - lo < kStageBlock ? n - lo : kStageBlock);
      float* t = staging_for(buf, out + lo, in0 + lo, in1 ? in1 + lo : nullptr);
      block(lo, len, t);
      copy_out(out + lo, t, len);
    }
  }
}

}  // namespace kilnet::cpu
