// cpu_module.cpp — kilnet._cpu: the CPU kernels for Python. Each family's checks and bindings
// live in bind_<family>.cpp; kilnet._cpu.ref holds the same functions bound to the naive
// reference kernels, so tests compare fast and plain inside one build.
#include <omp.h>
#include <pybind11/pybind11.h>
#include "checks.h"
#include "kilnet/common.h"

namespace py = pybind11;
using namespace kilnet;

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "kilnet CPU kernels (C++, OpenMP, AVX2/FMA chosen at run time)";
#ifdef KILNET_VERSION
  m.attr("__version__") = KILNET_VERSION;
#endif
  m.def("simd_level", &cpu::simd_level, "'avx512', 'avx2' or 'scalar': the kernel path in use");
  m.def("stages_store_ahead", &cpu::stages_store_ahead,
        "Whether outputs just ahead of an input modulo 2 MiB go through staging buffers (Intel; "
        "KILNET_STAGING=on|off overrides)");
  m.def("machine_simd_level", [] { return cpu::simd_name(cpu::machine_simd()); },
        "the best level this build runs on this machine (what KILNET_SIMD can lower)");
  cpu::set_num_threads(cpu::get_num_threads());   // the default at import, held from now on
  cpu::tune_malloc();   // freed arrays kept for the next step (kilnet/common.h)
  m.def("malloc_policy", &cpu::tune_malloc,
        "How freed large arrays are kept: 'kept (...)' (kilnet's glibc thresholds) or 'system (...)'");
  m.def("get_num_threads", &cpu::get_num_threads);
  m.def("set_num_threads", [](int n) {
    // The cap of KILNET_NUM_THREADS (kilnet/backend.py): a count far beyond any machine only
    // exhausts the address space when the next parallel region starts its threads (a crash).
    if (n < 1 || n > 4096)
      bind::fail_value("set_num_threads: n must be in [1, 4096], got " + std::to_string(n));
    // kilnet's count only: the calling thread's OpenMP count, which a PyTorch in the same process
    // shares, stays as it was (the kernels apply kilnet's around each call: checks.h KernelCall)
    const int had = omp_get_max_threads();
    cpu::set_num_threads(n);
    cpu::restore_num_threads(had);
  }, py::arg("n"));
  m.def("build_info", &cpu::build_info);
  bind::bind_peak(m);   // no ref variant: on the main module only
  py::module_ ref = m.def_submodule("ref", "naive reference kernels: plain loops, for tests");
  for (auto [mod, is_ref] : {std::pair<py::module_*, bool>{&m, false}, {&ref, true}}) {
    bind::bind_gemm(*mod, is_ref);
    bind::bind_gemm_bf16(*mod, is_ref);
    bind::bind_conv2d(*mod, is_ref);
    bind::bind_conv_dense(*mod, is_ref);
    bind::bind_activation(*mod, is_ref);
    bind::bind_loss(*mod, is_ref);
    bind::bind_optim(*mod, is_ref);
    bind::bind_rnn(*mod, is_ref);
    bind::bind_pool2d(*mod, is_ref);
    bind::bind_normalization(*mod, is_ref);
    bind::bind_dropout(*mod, is_ref);
    bind::bind_attention(*mod, is_ref);
    bind::bind_embedding(*mod, is_ref);
    bind::bind_layernorm(*mod, is_ref);
    bind::bind_gelu(*mod, is_ref);
    bind::bind_depthwise(*mod, is_ref);
    bind::bind_random(*mod, is_ref);
  }
}
