// npy.h — read and write float32 arrays in numpy's .npy format (versions 1-3, C order), so the
// examples exchange inputs and outputs with Python: np.save("x.npy", x) / np.load("y.npy").
// Little-endian hosts only (x86-64, ARM64), like kilnet's exported weights.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace npy {

struct Array {
  std::vector<int64_t> shape;
  std::vector<float> data;   // prod(shape) values, C order
};

namespace detail {

inline void require_little_endian() {
  const uint16_t one = 1;
  unsigned char low;
  std::memcpy(&low, &one, 1);
  if (low != 1) throw std::runtime_error("npy: this reader supports little-endian hosts only");
}

// The text after 'key': in numpy's header dict, leading spaces skipped.
inline std::string after_key(const std::string& header, const std::string& key, const std::string& path) {
  const size_t k = header.find("'" + key + "'");
  const size_t colon = k == std::string::npos ? k : header.find(':', k);
  if (colon == std::string::npos) throw std::runtime_error(path + ": .npy header has no '" + key + "'");
  return header.substr(header.find_first_not_of(' ', colon + 1));
}

}  // namespace detail

inline Array load(const std::string& path) {
  detail::require_little_endian();
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0)
    throw std::runtime_error(path + ": not a .npy file");
  uint32_t header_len = 0;
  unsigned char b[4] = {0, 0, 0, 0};
  if (magic[6] == 1) {
    f.read(reinterpret_cast<char*>(b), 2);
    header_len = uint32_t(b[0]) | uint32_t(b[1]) << 8;
  } else if (magic[6] == 2 || magic[6] == 3) {
    f.read(reinterpret_cast<char*>(b), 4);
    header_len = uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24;
  } else {
    throw std::runtime_error(path + ": unsupported .npy version " + std::to_string(int(magic[6])));
  }
  if (!f || header_len > (1u << 20)) throw std::runtime_error(path + ": bad .npy header");
  std::string header(header_len, '\0');
  if (!f.read(&header[0], header_len)) throw std::runtime_error(path + ": truncated .npy header");

  const std::string descr = detail::after_key(header, "descr", path);
  if (descr.compare(0, 5, "'<f4'") != 0)
    throw std::runtime_error(path + ": expected float32 data ('<f4'), got " + descr.substr(0, descr.find(',')) +
                             " (save with x.astype(np.float32))");
  if (detail::after_key(header, "fortran_order", path).compare(0, 5, "False") != 0)
    throw std::runtime_error(path + ": Fortran-order arrays are not supported (save np.ascontiguousarray(x))");
  const std::string shape_text = detail::after_key(header, "shape", path);
  const size_t close = shape_text.find(')');
  if (shape_text.empty() || shape_text[0] != '(' || close == std::string::npos)
    throw std::runtime_error(path + ": bad shape in .npy header");

  Array a;
  int64_t count = 1;
  for (size_t i = 1; i < close;) {
    const size_t end = std::min(shape_text.find(',', i), close);
    const std::string item = shape_text.substr(i, end - i);
    if (item.find_first_not_of(' ') != std::string::npos) {
      const int64_t dim = std::stoll(item);
      if (dim < 0 || (dim > 0 && count > INT64_MAX / 4 / dim))
        throw std::runtime_error(path + ": bad dimension in .npy shape");
      a.shape.push_back(dim);
      count *= dim;
    }
    i = end + 1;
  }
  a.data.resize(size_t(count));
  if (!f.read(reinterpret_cast<char*>(a.data.data()), std::streamsize(count * 4)))
    throw std::runtime_error(path + ": truncated .npy data (expected " + std::to_string(count) + " floats)");
  return a;
}

inline void save(const std::string& path, const std::vector<int64_t>& shape, const float* data) {
  detail::require_little_endian();
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  int64_t count = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    dict += std::to_string(shape[i]) + (shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : ""));
    count *= shape[i];
  }
  dict += "), }";
  // Pad so that the data starts at a multiple of 64 bytes; the header ends with '\n'.
  const size_t total = 10 + dict.size() + 1;
  dict.append((64 - total % 64) % 64, ' ');
  dict += '\n';
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  if (!f) throw std::runtime_error("cannot write " + path);
  const unsigned char pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0,
                                 (unsigned char)(dict.size() & 0xff), (unsigned char)(dict.size() >> 8)};
  f.write(reinterpret_cast<const char*>(pre), 10);
  f.write(dict.data(), std::streamsize(dict.size()));
  f.write(reinterpret_cast<const char*>(data), std::streamsize(count * 4));
  if (!f) throw std::runtime_error("error writing " + path);
}

}  // namespace npy
