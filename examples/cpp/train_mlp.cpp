// train_mlp.cpp — train a small MLP in C++ with kilnet's kernels only: 3-class 2-D spirals,
// Dense(64, relu) -> Dense(64, relu) -> Dense(3) + softmax cross-entropy, Adam, mini-batches.
// The training step is kilnet's (as python/kilnet/models.py does it): forward with gemm (+bias)
// and activation_forward, the fused softmax_crossentropy for the loss and its gradient,
// backward with gemm, bias_backward and activation_backward into ONE flat gradient buffer, and
// one adam_update over ONE flat parameter buffer.
//
//   train_mlp [--epochs E] [--threads T] [--seed S]
//
// Prints the loss as it falls and the final accuracy on held-out points; exits 1 if the model
// did not learn (test accuracy < 0.9 or the loss did not fall).
#include <kilnet/kilnet.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace {

using kilnet::Act;
namespace cpu = kilnet::cpu;

// A small deterministic generator (splitmix64), so every platform draws the same data.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform() { return float(next() >> 40) / float(1 << 24); }   // [0, 1)
  float normal() {                                                   // Box-Muller
    const float u = std::max(uniform(), 1e-7f), v = uniform();
    return std::sqrt(-2.f * std::log(u)) * std::cos(6.2831853f * v);
  }
};

// Spirals (the cs231n data set): `per_class` points on each of `classes` arms, noisy angles.
void spirals(Rng& rng, int per_class, int classes, std::vector<float>& x, std::vector<int64_t>& y) {
  for (int c = 0; c < classes; ++c)
    for (int i = 0; i < per_class; ++i) {
      const float r = float(i + 1) / float(per_class);
      const float t = 4.f * (float(c) + r) + 0.2f * rng.normal();
      x.push_back(r * std::sin(t));
      x.push_back(r * std::cos(t));
      y.push_back(c);
    }
}

// One Dense layer's place in the flat buffers: kernel (in, out) then bias (out).
struct Dense {
  int64_t in, out;
  size_t offset;   // into params / grads
  float* w(std::vector<float>& buf) const { return buf.data() + offset; }
  float* b(std::vector<float>& buf) const { return buf.data() + offset + size_t(in * out); }
  int64_t size() const { return in * out + out; }
};

struct Mlp {
  std::vector<Dense> layers;
  std::vector<float> params, grads, m, v;   // flat: every layer's kernel and bias
  // Per-layer activations (outputs, relu applied in place) and gradient scratch, batch-sized.
  std::vector<std::vector<float>> h, dh;

  Mlp(const std::vector<int64_t>& sizes, Rng& rng) {
    size_t off = 0;
    for (size_t i = 0; i + 1 < sizes.size(); ++i) {
      layers.push_back({sizes[i], sizes[i + 1], off});
      off += size_t(layers.back().size());
    }
    params.assign(off, 0.f);
    grads.assign(off, 0.f);
    m.assign(off, 0.f);
    v.assign(off, 0.f);
    for (const Dense& d : layers) {   // Glorot uniform kernels, zero biases (Keras's defaults)
      const float limit = std::sqrt(6.f / float(d.in + d.out));
      float* w = d.w(params);
      for (int64_t i = 0; i < d.in * d.out; ++i) w[i] = limit * (2.f * rng.uniform() - 1.f);
    }
  }

  void reserve(int64_t batch) {
    h.resize(layers.size());
    dh.resize(layers.size());
    for (size_t i = 0; i < layers.size(); ++i) {
      h[i].resize(size_t(batch * layers[i].out));
      dh[i].resize(size_t(batch * layers[i].out));
    }
  }

  // Logits of n rows of x (n x in) in h.back(); hidden layers get relu.
  const float* forward(int64_t n, const float* x) {
    const float* in = x;
    for (size_t i = 0; i < layers.size(); ++i) {
      const Dense& d = layers[i];
      cpu::gemm(false, false, n, d.out, d.in, 1.f, in, d.in, d.w(params), d.out, 0.f, h[i].data(), d.out,
                d.b(params));
      if (i + 1 < layers.size()) cpu::activation_forward(Act::Relu, n * d.out, h[i].data(), h[i].data());
      in = h[i].data();
    }
    return h.back().data();
  }

  // Gradients of the loss into grads (accumulating: zeroed by the caller), from dlogits.
  void backward(int64_t n, const float* x, const float* dlogits) {
    const float* g = dlogits;
    for (size_t i = layers.size(); i-- > 0;) {
      const Dense& d = layers[i];
      const float* in = i ? h[i - 1].data() : x;
      cpu::gemm(true, false, d.in, d.out, n, 1.f, in, d.in, g, d.out, 1.f, d.w(grads), d.out, nullptr);  // dW += x^T g
      cpu::bias_backward(n, d.out, g, d.b(grads));                                                       // db += colsum(g)
      if (i == 0) break;                                                                                 // no dx for the data
      float* dx = dh[i - 1].data();
      cpu::gemm(false, true, n, d.in, d.out, 1.f, g, d.out, d.w(params), d.out, 0.f, dx, d.in, nullptr);  // dx = g W^T
      cpu::activation_backward(Act::Relu, n * d.in, h[i - 1].data(), dx, dx);                          // through relu
      g = dx;
    }
  }
};

double accuracy(Mlp& net, const std::vector<float>& x, const std::vector<int64_t>& y, int64_t batch) {
  const int64_t n = int64_t(y.size()), k = net.layers.back().out;
  int64_t right = 0;
  for (int64_t i = 0; i < n; i += batch) {
    const int64_t nb = std::min(batch, n - i);
    const float* logits = net.forward(nb, x.data() + i * 2);
    for (int64_t r = 0; r < nb; ++r)
      right += (std::max_element(logits + r * k, logits + (r + 1) * k) - (logits + r * k)) == y[size_t(i + r)];
  }
  return double(right) / double(n);
}

int run(int argc, char** argv) {
  int epochs = 60, threads = 0;
  uint64_t seed = 42;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 < argc && (a == "--epochs" || a == "--threads" || a == "--seed")) {
      const long long v = std::stoll(argv[++i]);
      if (v < (a == "--seed" ? 0 : 1)) { std::fprintf(stderr, "%s must be positive\n", a.c_str()); return 2; }
      if (a == "--epochs") epochs = int(v);
      else if (a == "--threads") threads = int(v);
      else seed = uint64_t(v);
    } else {
      std::fprintf(stderr, "usage: %s [--epochs E] [--threads T] [--seed S]\n", argv[0]);
      return a == "-h" || a == "--help" ? 0 : 2;
    }
  }
  if (threads) cpu::set_num_threads(threads);

  const int classes = 3;
  const int64_t batch = 32;
  Rng rng{seed};
  std::vector<float> x_train, x_test;
  std::vector<int64_t> y_train, y_test;
  spirals(rng, 200, classes, x_train, y_train);
  spirals(rng, 100, classes, x_test, y_test);
  const int64_t n = int64_t(y_train.size());

  Mlp net({2, 64, 64, classes}, rng);
  net.reserve(batch);
  std::printf("kilnet %s (%s kernels, %d threads): MLP 2-64-64-%d, %zu parameters, %lld spiral points, "
              "batch %lld, Adam\n", KILNET_VERSION_STRING, cpu::simd_level(), cpu::get_num_threads(),
              classes, net.params.size(), (long long)n, (long long)batch);

  // Batch buffers, allocated once: shuffled inputs and labels, probabilities, loss gradient.
  std::vector<float> xb(size_t(batch * 2)), probs(size_t(batch * classes)), dlogits(size_t(batch * classes));
  std::vector<int64_t> yb(static_cast<size_t>(batch)), order(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) order[size_t(i)] = i;

  int64_t step = 0;
  double first_loss = 0, last_loss = 0;
  for (int epoch = 1; epoch <= epochs; ++epoch) {
    for (int64_t i = n - 1; i > 0; --i) std::swap(order[size_t(i)], order[size_t(rng.next() % uint64_t(i + 1))]);
    double total = 0;
    for (int64_t i = 0; i < n; i += batch) {
      const int64_t nb = std::min(batch, n - i);
      for (int64_t r = 0; r < nb; ++r) {
        const int64_t j = order[size_t(i + r)];
        xb[size_t(2 * r)] = x_train[size_t(2 * j)];
        xb[size_t(2 * r + 1)] = x_train[size_t(2 * j + 1)];
        yb[size_t(r)] = y_train[size_t(j)];
      }
      const float* logits = net.forward(nb, xb.data());
      const double loss = cpu::softmax_crossentropy(nb, classes, logits, yb.data(), nullptr, probs.data(),
                                                    dlogits.data());
      std::fill(net.grads.begin(), net.grads.end(), 0.f);
      net.backward(nb, xb.data(), dlogits.data());
      cpu::adam_update(int64_t(net.params.size()), net.params.data(), net.grads.data(), net.m.data(),
                       net.v.data(), 0.01f, 0.9f, 0.999f, 1e-7f, ++step);
      total += loss * double(nb);
    }
    last_loss = total / double(n);
    if (epoch == 1) first_loss = last_loss;
    if (epoch == 1 || epoch % 10 == 0 || epoch == epochs)
      std::printf("epoch %3d  loss %.4f  train accuracy %.3f\n", epoch, last_loss, accuracy(net, x_train, y_train, batch));
  }
  const double test_acc = accuracy(net, x_test, y_test, batch);
  std::printf("final loss %.4f (first epoch %.4f)\n", last_loss, first_loss);
  std::printf("test accuracy %.3f\n", test_acc);
  if (!(test_acc >= 0.9 && last_loss < 0.5 * first_loss)) {
    std::printf("FAILED: the MLP did not learn the spirals\n");
    return 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train_mlp: error: %s\n", e.what());
    return 1;
  }
}
