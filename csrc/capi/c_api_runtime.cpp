// c_api_runtime.cpp — the C API's error state, version and runtime facts (kilnet/c_api.h).
#include <cstdio>
#include <cstring>
#include <omp.h>
#include "capi_internal.h"
#include "kilnet/version.h"

namespace kilnet::capi {
namespace {
// One message per thread; a fixed buffer so that recording an error can never fail.
thread_local char last_error[1024] = "";
}  // namespace

void set_error(const char* fn, const char* message) noexcept {
  std::snprintf(last_error, sizeof last_error, "%s: %s", fn, message);
}

void clear_error() noexcept { last_error[0] = '\0'; }

}  // namespace kilnet::capi

using namespace kilnet;
using namespace kilnet::capi;

extern "C" {

const char* kilnet_last_error(void) { return last_error; }

const char* kilnet_status_name(int status) {
  switch (status) {
    case KILNET_OK: return "KILNET_OK";
    case KILNET_ERR_NULL_POINTER: return "KILNET_ERR_NULL_POINTER";
    case KILNET_ERR_INVALID_VALUE: return "KILNET_ERR_INVALID_VALUE";
    case KILNET_ERR_SHAPE: return "KILNET_ERR_SHAPE";
    case KILNET_ERR_OVERLAP: return "KILNET_ERR_OVERLAP";
    case KILNET_ERR_OUT_OF_MEMORY: return "KILNET_ERR_OUT_OF_MEMORY";
    case KILNET_ERR_INTERNAL: return "KILNET_ERR_INTERNAL";
    default: return "unknown status";
  }
}

const char* kilnet_version(void) { return KILNET_VERSION_STRING; }
int kilnet_c_api_version(void) { return KILNET_C_API_VERSION; }
const char* kilnet_simd_level(void) { return cpu::simd_level(); }
const char* kilnet_build_info(void) {
  try {
    return cpu::build_info();
  } catch (...) {   // builds a string once: only out of memory could stop it
    return "unavailable";
  }
}
int kilnet_get_num_threads(void) { return cpu::get_num_threads(); }

int kilnet_set_num_threads(int n) {
  return guarded("kilnet_set_num_threads", [&] {
    // a count far beyond any machine only exhausts the address space when the next parallel
    // region starts its threads (the cap of the Python API too)
    if (n < 1 || n > 4096) fail(KILNET_ERR_INVALID_VALUE, "'n' must be in [1, 4096], got ", n);
    // kilnet's count only: the caller's own OpenMP count stays as it was (guarded() applies
    // kilnet's around every call)
    const int had = omp_get_max_threads();
    cpu::set_num_threads(n);
    cpu::restore_num_threads(had);
  });
}

}  // extern "C"
