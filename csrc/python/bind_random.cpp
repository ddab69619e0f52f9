// bind_random.cpp — Python bindings of the counter-based normal stream (kilnet/random.h).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <array>
#include <cstdint>
#include "checks.h"
#include "kilnet/random.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_random(py::module_& m, bool ref) {
  const auto fill = ref ? &cpu::normal_fill_ref : &cpu::normal_fill;
  m.def("normal_fill", [=](py::object out_, std::uint64_t key, std::uint64_t counter, float scale, bool add) {
    Arr out = out_f32("normal_fill", "out", out_);
    KernelCall nogil;
    fill(out.size, key, counter, out.f(), scale, add);
  }, arg("out"), arg("key"), arg("counter") = 0, arg("scale") = 1.0f, arg("add") = false,
     "out (float32, C-contiguous, any shape) = scale * standard normal values (add=True: out += them): "
     "Philox4x32-10 of (key, "
     "counter + 16 * (j // 32) + j % 16) through Box-Muller (see kilnet/random.h); the same values "
     "at any thread count and SIMD level. Uses counters counter .. counter + 16 * ceil(size / 32) - 1.");
  if (!ref)
    m.def("philox4x32_10", [](std::array<std::uint32_t, 4> ctr, std::array<std::uint32_t, 2> key) {
      std::array<std::uint32_t, 4> out;
      cpu::philox4x32_10(ctr.data(), key.data(), out.data());
      return out;
    }, arg("ctr"), arg("key"), "Philox4x32-10 (Salmon et al. 2011) of one 128-bit counter (four words) and key (two)");
}
