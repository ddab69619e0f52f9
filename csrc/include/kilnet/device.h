// device.h — what the CUDA backend can see. No CUDA types here: C++ users without CUDA can
// include every kilnet header. Defined only when kilnet is built with CUDA.
#pragma once
#include <string>

namespace kilnet::cuda {

int device_count();                 // 0 when there is no driver or no GPU (never throws)
std::string device_name(int device);  // throws std::runtime_error for a bad index
int runtime_version();              // e.g. 13000 for CUDA 13.0
std::string compiled_architectures(); // the SM list nvcc built for

// TF32 tensor cores for matmul and conv: off by default, so float32 results stay float32
// (TF32 rounds the inputs to 10 mantissa bits: relative error ~1e-3).
void set_tf32(bool on);
bool tf32();
// Wait for all work on the current device (used by tests and benchmarks).
void synchronize();

}  // namespace kilnet::cuda
