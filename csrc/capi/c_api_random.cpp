// c_api_random.cpp — the C API of the counter-based normal stream (kilnet/c_api.h, kilnet/random.h).
#include "capi_internal.h"
#include "kilnet/random.h"

using namespace kilnet;
using namespace kilnet::capi;

extern "C" {

int kilnet_normal_fill(int64_t n, uint64_t key, uint64_t counter, float scale, int add, float* out) {
  return guarded("kilnet_normal_fill", [&] {
    positive("n", n);
    need("out", out);
    cpu::normal_fill(n, key, counter, out, scale, add != 0);
  });
}

int kilnet_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
  return guarded("kilnet_philox4x32_10", [&] {
    need("ctr", ctr); need("key", key); need("out", out);
    cpu::philox4x32_10(ctr, key, out);
  });
}

}  // extern "C"
