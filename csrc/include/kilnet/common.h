// common.h — types shared by every kernel family.
// Kernels take raw pointers and sizes; all sizes are int64_t so that products never overflow
// 32 bits. Kernels trust their arguments: validation lives in the Python bindings
// (csrc/python/) and in any other front end (the C API).
#pragma once
#include <cstdint>

namespace kilnet {

using index_t = std::int64_t;

// Elementwise activations. Softmax is along the last axis and has its own kernels.
enum class Act : int { Linear = 0, Relu = 1, Sigmoid = 2, Tanh = 3, Softmax = 4 };

}  // namespace kilnet

namespace kilnet::cpu {

// Runtime facts of the CPU backend.
const char* simd_level();          // "avx2" when the CPU has AVX2+FMA (and KILNET_SIMD != scalar), else "scalar"
bool use_avx2();                   // same test as a bool, cached after the first call
int  get_num_threads();
void set_num_threads(int n);       // n >= 1
const char* build_info();          // compiler, flags, OpenMP version

}  // namespace kilnet::cpu
