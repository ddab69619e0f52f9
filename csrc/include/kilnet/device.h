// device.h — what the CUDA backend can see. No CUDA types here: C++ users without CUDA can
// include every kilnet header. Defined only when kilnet is built with CUDA.
#pragma once
#include <string>

namespace kilnet::cuda {

int device_count();                 // 0 when there is no driver or no GPU (never throws)
std::string device_name(int device);  // throws std::runtime_error for a bad index
int runtime_version();              // e.g. 13000 for CUDA 13.0
std::string compiled_architectures(); // the SM list nvcc built for

}  // namespace kilnet::cuda
