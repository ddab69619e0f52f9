// infer.cpp — run a kilnet model in C++, without Python: read the layers and weights that
// Python's model.export_weights(path) wrote (format: python/kilnet/export.py, docs/cpp.md),
// then run them with kilnet's C++ kernels: conv2d_forward, gemm with bias, activation_forward,
// softmax_forward.
//
//   infer MODEL X.npy [Y.npy] [--batch-size B] [--threads T]
//
// X.npy holds float32 samples of shape (n, *input_shape); the outputs (n, *output_shape) go to
// Y.npy when given. Prints the model, the time, and each sample's argmax for the first few.
#include <kilnet/kilnet.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "npy.h"

namespace {

using Shape = std::vector<int64_t>;

int64_t numel(const Shape& s) { return std::accumulate(s.begin(), s.end(), int64_t{1}, std::multiplies<>()); }

std::string str(const Shape& s) {
  std::string out = "(";
  for (size_t i = 0; i < s.size(); ++i)
    out += std::to_string(s[i]) + (s.size() == 1 ? "," : (i + 1 < s.size() ? ", " : ""));
  return out + ")";
}

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

// ---------------------------------------------------------------- the exported file
enum LayerType : uint32_t { kDense = 1, kConv2D = 2, kFlatten = 3, kActivation = 4 };
const char* type_name(uint32_t t) {
  switch (t) {
    case kDense: return "Dense";
    case kConv2D: return "Conv2D";
    case kFlatten: return "Flatten";
    case kActivation: return "Activation";
    default: return "unknown";
  }
}

struct Tensor {
  Shape shape;
  std::vector<float> data;
};

struct Layer {
  uint32_t type = 0;
  std::string name;
  std::vector<int64_t> config;
  std::vector<Tensor> weights;
  // Filled by plan(): the per-sample output shape, the activation, and for Conv2D the shape
  // (N is set per batch).
  Shape out_shape;
  int activation = 0;
  kilnet::Conv2dShape conv{};
};

struct Model {
  Shape input_shape;
  std::vector<Layer> layers;
};

// Little-endian reads with bounds: a short or corrupt file is an error, never a crash.
class Reader {
 public:
  explicit Reader(const std::string& path) : path_(path), f_(path, std::ios::binary) {
    if (!f_) fail("cannot open " + path);
  }
  void bytes(void* dst, size_t n) {
    if (!f_.read(static_cast<char*>(dst), std::streamsize(n))) fail(path_ + ": truncated file");
  }
  template <class T>
  T get() {
    unsigned char b[sizeof(T)];
    bytes(b, sizeof(T));
    uint64_t v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= uint64_t(b[i]) << (8 * i);
    T out;
    std::memcpy(&out, &v, sizeof(T));
    return out;
  }
  uint32_t count(const char* what, uint32_t max) {
    const uint32_t n = get<uint32_t>();
    if (n > max) fail(path_ + ": implausible " + what + " " + std::to_string(n) + " (corrupt file?)");
    return n;
  }
  Shape shape(const char* what) {
    Shape s(count(what, 8));
    for (auto& d : s) {
      d = get<int64_t>();
      if (d < 1 || d > (int64_t(1) << 32)) fail(path_ + ": bad " + what + " dimension " + std::to_string(d));
    }
    return s;
  }
  bool at_end() { return f_.peek() == std::char_traits<char>::eof(); }

 private:
  std::string path_;
  std::ifstream f_;
};

Model load(const std::string& path) {
  Reader r(path);
  char magic[8];
  r.bytes(magic, 8);
  if (std::memcmp(magic, "KILNETW", 8) != 0) fail(path + ": not a kilnet weights file (wrong magic)");
  const uint32_t version = r.get<uint32_t>();
  if (version != 1) fail(path + ": weights format version " + std::to_string(version) + "; this program reads version 1");
  Model m;
  const uint32_t n_layers = r.count("layer count", 10000);
  m.input_shape = r.shape("input");
  for (uint32_t i = 0; i < n_layers; ++i) {
    Layer l;
    l.type = r.get<uint32_t>();
    l.name.resize(r.count("name length", 4096));
    r.bytes(&l.name[0], l.name.size());
    l.config.resize(r.count("config count", 64));
    for (auto& c : l.config) c = r.get<int64_t>();
    l.weights.resize(r.count("weight count", 16));
    for (auto& w : l.weights) {
      w.shape = r.shape("weight");
      if (numel(w.shape) > (int64_t(1) << 34)) fail(path + ": weight too large");
      w.data.resize(size_t(numel(w.shape)));
      r.bytes(w.data.data(), w.data.size() * sizeof(float));   // float32, little-endian host
    }
    m.layers.push_back(std::move(l));
  }
  if (!r.at_end()) fail(path + ": trailing bytes after the last layer");
  return m;
}

// ---------------------------------------------------------------- shapes
// Check every layer's config and weights against the shape that reaches it, and compute the
// output shapes. After this the kernels get only arguments that agree (they trust them).
void plan(Model& m) {
  Shape shape = m.input_shape;
  for (Layer& l : m.layers) {
    const std::string who = std::string("layer '") + l.name + "' (" + type_name(l.type) + ")";
    auto need_config = [&](size_t n) {
      if (l.config.size() != n) fail(who + ": expected " + std::to_string(n) + " config values, got " + std::to_string(l.config.size()));
    };
    auto need_weights = [&](bool bias, const Shape& kernel, int64_t units) {
      if (l.weights.size() != (bias ? 2u : 1u)) fail(who + ": wrong number of weight arrays");
      if (l.weights[0].shape != kernel) fail(who + ": kernel has shape " + str(l.weights[0].shape) + ", expected " + str(kernel));
      if (bias && l.weights[1].shape != Shape{units}) fail(who + ": bias has shape " + str(l.weights[1].shape));
    };
    auto activation = [&](int64_t code) {
      if (code < 0 || code > 4) fail(who + ": unknown activation code " + std::to_string(code));
      return int(code);
    };
    switch (l.type) {
      case kDense: {
        need_config(3);
        const int64_t units = l.config[0];
        need_weights(l.config[2] != 0, {shape.back(), units}, units);
        l.activation = activation(l.config[1]);
        shape.back() = units;
        break;
      }
      case kConv2D: {
        need_config(14);
        if (shape.size() != 3) fail(who + ": needs (height, width, channels) inputs, gets " + str(shape));
        const int64_t* c = l.config.data();
        kilnet::Conv2dShape& s = l.conv;
        s.H = shape[0]; s.W = shape[1]; s.C = shape[2];
        s.K = c[0]; s.R = c[1]; s.S = c[2];
        s.stride_h = c[3]; s.stride_w = c[4]; s.dilation_h = c[5]; s.dilation_w = c[6];
        s.pad_h = c[8]; s.pad_w = c[9]; s.P = c[10]; s.Q = c[11];
        // The padding and output size must be Keras's for this input (layers/conv.py).
        const int64_t same = c[7];
        for (int axis = 0; axis < 2; ++axis) {
          const int64_t size = shape[axis], k = axis ? s.S : s.R, st = axis ? s.stride_w : s.stride_h,
                        dil = axis ? s.dilation_w : s.dilation_h;
          if (k < 1 || st < 1 || dil < 1) fail(who + ": bad kernel size, stride or dilation");
          const int64_t eff = (k - 1) * dil + 1;
          int64_t out, pad;
          if (same) {
            out = (size + st - 1) / st;
            pad = std::max<int64_t>((out - 1) * st + eff - size, 0) / 2;
          } else {
            if (size < eff) fail(who + ": input smaller than the kernel");
            out = (size - eff) / st + 1;
            pad = 0;
          }
          if (out != (axis ? s.Q : s.P) || pad != (axis ? s.pad_w : s.pad_h))
            fail(who + ": output size or padding in the file disagrees with the input " + str(shape));
        }
        need_weights(c[13] != 0, {s.R, s.S, s.C, s.K}, s.K);
        l.activation = activation(c[12]);
        shape = {s.P, s.Q, s.K};
        break;
      }
      case kFlatten:
        need_config(0);
        shape = {numel(shape)};
        break;
      case kActivation:
        need_config(1);
        l.activation = activation(l.config[0]);
        break;
      default:
        fail(who + ": unknown layer type code " + std::to_string(l.type));
    }
    l.out_shape = shape;
  }
}

// ---------------------------------------------------------------- running
// The activation on rows x cols values in place: softmax along the last axis, else elementwise.
void activate(int code, int64_t rows, int64_t cols, float* z) {
  if (code == int(kilnet::Act::Softmax))
    kilnet::cpu::softmax_forward(rows, cols, z, z);
  else if (code != int(kilnet::Act::Linear))
    kilnet::cpu::activation_forward(kilnet::Act(code), rows * cols, z, z);
}

// Runs n samples x (n x input) through the model into out (n x output). a and b are the two
// ping-pong activation buffers, reused across batches.
void forward(const Model& m, int64_t n, const float* x, float* out, std::vector<float>& a,
             std::vector<float>& b) {
  Shape shape = m.input_shape;
  std::copy(x, x + n * numel(shape), a.begin());
  float* cur = a.data();
  float* next = b.data();
  for (const Layer& l : m.layers) {
    switch (l.type) {
      case kDense: {
        const int64_t in = shape.back(), units = l.out_shape.back();
        const int64_t rows = n * numel(shape) / in;   // leading axes are rows
        const float* bias = l.weights.size() > 1 ? l.weights[1].data.data() : nullptr;
        kilnet::cpu::gemm(false, false, rows, units, in, 1.f, cur, in, l.weights[0].data.data(), units,
                          0.f, next, units, bias);
        activate(l.activation, rows, units, next);
        std::swap(cur, next);
        break;
      }
      case kConv2D: {
        kilnet::Conv2dShape s = l.conv;
        s.N = n;
        const float* bias = l.weights.size() > 1 ? l.weights[1].data.data() : nullptr;
        kilnet::cpu::conv2d_forward(s, cur, l.weights[0].data.data(), bias, next);
        activate(l.activation, n * s.P * s.Q, s.K, next);
        std::swap(cur, next);
        break;
      }
      case kFlatten:   // NHWC is already the flattened order
        break;
      case kActivation:
        activate(l.activation, n * numel(shape) / shape.back(), shape.back(), cur);
        break;
    }
    shape = l.out_shape;
  }
  std::copy(cur, cur + n * numel(shape), out);
}

int run(int argc, char** argv) {
  std::vector<std::string> pos;
  int64_t batch = 64;
  int threads = 0;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if ((arg == "--batch-size" || arg == "--threads") && i + 1 < argc) {
      const long long v = std::stoll(argv[++i]);
      if (v < 1) fail(arg + " must be >= 1");
      if (arg == "--threads") threads = int(v);
      else batch = v;
    } else if (arg == "-h" || arg == "--help" || arg.rfind("--", 0) == 0) {
      std::fprintf(stderr, "usage: %s MODEL X.npy [Y.npy] [--batch-size B] [--threads T]\n", argv[0]);
      return arg == "-h" || arg == "--help" ? 0 : 2;
    } else {
      pos.push_back(arg);
    }
  }
  if (pos.size() < 2 || pos.size() > 3) {
    std::fprintf(stderr, "usage: %s MODEL X.npy [Y.npy] [--batch-size B] [--threads T]\n", argv[0]);
    return 2;
  }
  if (threads) kilnet::cpu::set_num_threads(threads);

  Model m = load(pos[0]);
  plan(m);
  std::printf("kilnet %s (%s kernels, %d threads): %zu layers, input %s -> output %s\n",
              KILNET_VERSION_STRING, kilnet::cpu::simd_level(), kilnet::cpu::get_num_threads(),
              m.layers.size(), str(m.input_shape).c_str(),
              str(m.layers.empty() ? m.input_shape : m.layers.back().out_shape).c_str());

  const npy::Array x = npy::load(pos[1]);
  if (x.shape.size() != m.input_shape.size() + 1 || !std::equal(m.input_shape.begin(), m.input_shape.end(), x.shape.begin() + 1))
    fail(pos[1] + ": samples have shape " + str(Shape(x.shape.begin() + std::min<size_t>(1, x.shape.size()), x.shape.end())) +
         " but the model takes " + str(m.input_shape));
  const int64_t n = x.shape[0];
  const Shape out_shape = m.layers.empty() ? m.input_shape : m.layers.back().out_shape;
  const int64_t in_size = numel(m.input_shape), out_size = numel(out_shape);

  // Buffers for the largest activation of a batch.
  int64_t widest = in_size;
  for (const Layer& l : m.layers) widest = std::max(widest, numel(l.out_shape));
  const int64_t b = std::max<int64_t>(1, std::min(batch, n));
  std::vector<float> buf_a(size_t(b * widest)), buf_b(size_t(b * widest)), y(size_t(n * out_size));

  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t i = 0; i < n; i += b) {
    const int64_t nb = std::min(b, n - i);
    forward(m, nb, x.data.data() + i * in_size, y.data() + i * out_size, buf_a, buf_b);
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  std::printf("ran %lld samples in %.2f ms (batch size %lld)\n", (long long)n, ms, (long long)b);

  for (int64_t i = 0; i < std::min<int64_t>(n, 5); ++i) {
    const float* yi = y.data() + i * out_size;
    const int64_t arg = std::max_element(yi, yi + out_size) - yi;
    std::printf("sample %lld: argmax %lld (%.4f)\n", (long long)i, (long long)arg, yi[arg]);
  }
  if (pos.size() == 3) {
    Shape full{n};
    full.insert(full.end(), out_shape.begin(), out_shape.end());
    npy::save(pos[2], full, y.data());
    std::printf("wrote %s %s\n", pos[2].c_str(), str(full).c_str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "infer: error: %s\n", e.what());
    return 1;
  }
}
