// bind_optim.cpp — Python bindings of the optimizer updates over flat buffers.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <string>
#include "checks.h"
#include "kilnet/optim.h"

namespace py = pybind11;
using namespace kilnet;
using namespace kilnet::bind;
using py::arg;

void kilnet::bind::bind_optim(py::module_& m, bool ref) {
  const auto sgd = ref ? &cpu::sgd_update_ref : &cpu::sgd_update;
  const auto adam = ref ? &cpu::adam_update_ref : &cpu::adam_update;
  m.def("sgd_update", [=](py::object p_, py::object g_, py::object v_, float lr, float momentum, bool nesterov) {
    const char* fn = "sgd_update";
    Arr p = out_f32(fn, "param", p_), g = in_f32(fn, "grad", g_);
    expect_shape(fn, "grad", g, p.shape);
    no_alias(fn, "param", p, "grad", g);
    float* vp = nullptr;
    Arr v;
    if (!v_.is_none()) { v = out_f32(fn, "velocity", v_); expect_shape(fn, "velocity", v, p.shape); no_alias(fn, "velocity", v, "param", p); no_alias(fn, "velocity", v, "grad", g); vp = v.f(); }
    else if (momentum != 0.f) fail_value("sgd_update: momentum != 0 needs a 'velocity' buffer");
    py::gil_scoped_release nogil;
    sgd(p.size, p.f(), g.f(), vp, lr, momentum, nesterov);
  }, arg("param"), arg("grad"), arg("velocity"), arg("lr"), arg("momentum") = 0.0f, arg("nesterov") = false);

  m.def("adam_update", [=](py::object p_, py::object g_, py::object m_, py::object v_, float lr,
                           float b1, float b2, float eps, index_t step) {
    const char* fn = "adam_update";
    Arr p = out_f32(fn, "param", p_), g = in_f32(fn, "grad", g_), mm = out_f32(fn, "m", m_), v = out_f32(fn, "v", v_);
    expect_shape(fn, "grad", g, p.shape); expect_shape(fn, "m", mm, p.shape); expect_shape(fn, "v", v, p.shape);
    no_alias(fn, "param", p, "grad", g); no_alias(fn, "m", mm, "param", p); no_alias(fn, "v", v, "param", p);
    no_alias(fn, "m", mm, "v", v); no_alias(fn, "m", mm, "grad", g); no_alias(fn, "v", v, "grad", g);
    if (step < 1) fail_value("adam_update: step counts from 1, got " + std::to_string(step));
    py::gil_scoped_release nogil;
    adam(p.size, p.f(), g.f(), mm.f(), v.f(), lr, b1, b2, eps, step);
  }, arg("param"), arg("grad"), arg("m"), arg("v"), arg("lr"), arg("beta1") = 0.9f,
     arg("beta2") = 0.999f, arg("eps") = 1e-7f, arg("step") = 1);
}
