#pragma once
// Shared helpers for the io tests: a scratch folder per test and raw safetensors byte builders.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "lowrank/core/error.h"
#include "lowrank/io/safetensors.h"

namespace lowrank::io::testing {

// A fresh folder under the system temp dir, removed with everything in it at the end.
class ScratchDir {
 public:
  ScratchDir() {
    static std::atomic<int> counter{0};
    path_ = (std::filesystem::temp_directory_path() /
             ("lowrank_io_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
                .string();
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~ScratchDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  // Writes raw bytes (non-atomically: these are test inputs) and returns the full path.
  std::string write(const std::string& name, const std::string& bytes) const {
    const std::string p = file(name);
    std::filesystem::create_directories(std::filesystem::path(p).parent_path());
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  }
  std::vector<std::string> entries() const {
    std::vector<std::string> names;
    for (const auto& e : std::filesystem::directory_iterator(path_))
      names.push_back(e.path().filename().string());
    std::sort(names.begin(), names.end());
    return names;
  }

 private:
  std::string path_;
};

inline std::string le64(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}

// A safetensors file from a header text and data bytes; `header_len` overrides the length field.
inline std::string safetensors_bytes(const std::string& header, const std::string& data = "",
                                     std::optional<uint64_t> header_len = std::nullopt) {
  return le64(header_len.value_or(header.size())) + header + data;
}

// Runs `fn`, expects lowrank::Error whose message starts with `prefix` and contains every
// string in `parts`. Returns the message for further checks.
inline std::string expect_error(const std::function<void()>& fn, const std::string& prefix,
                                const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(prefix, 0), 0u) << "message does not start with '" << prefix << "': " << msg;
    for (const auto& part : parts)
      EXPECT_NE(msg.find(part), std::string::npos) << "missing '" << part << "' in: " << msg;
    return msg;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected lowrank::Error, got another exception: " << e.what();
    return {};
  }
  ADD_FAILURE() << "expected lowrank::Error, nothing was thrown";
  return {};
}

// The largest |value| among the tensors of the .safetensors file at `path` whose names contain
// `part`; a failure when none does.
inline float largest_abs(const std::string& path, const std::string& part) {
  const auto file = SafetensorsFile::open(path);
  float m = 0;
  size_t seen = 0;
  for (const auto& info : file.tensors()) {
    if (info.name.find(part) == std::string::npos) continue;
    ++seen;
    const Tensor t = file.get(info.name).to(DType::F32);
    for (int64_t i = 0; i < t.numel(); ++i) m = std::max(m, std::abs(t.f32()[i]));
  }
  EXPECT_GT(seen, 0u) << "no tensor named like '" << part << "' in " << path;
  return m;
}

}  // namespace lowrank::io::testing
