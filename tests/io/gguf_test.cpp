#include "lowrank/io/gguf.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "io/io_test_helpers.h"
#include "lowrank/io/files.h"

using namespace lowrank;
using namespace lowrank::io;
using lowrank::io::testing::expect_error;
using lowrank::io::testing::le64;
using lowrank::io::testing::ScratchDir;

namespace {

std::string le32(uint32_t v) {
  std::string s(4, '\0');
  for (int i = 0; i < 4; ++i) s[i] = static_cast<char>(v >> (8 * i));
  return s;
}
std::string gstr(const std::string& s) { return le64(s.size()) + s; }

// A file with one u32 key and one f32 [2] tensor, built by hand: what ggml's reader expects.
std::string tiny_file(uint64_t offset = 0, uint32_t type = 0, uint64_t ne0 = 2) {
  std::string b = "GGUF" + le32(3) + le64(1) + le64(1);
  b += gstr("general.answer") + le32(4) + le32(42);
  b += gstr("t") + le32(1) + le64(ne0) + le32(type) + le64(offset);
  b.resize((b.size() + 31) / 32 * 32, '\0');
  float v[2] = {1.5f, -2.0f};
  b.append(reinterpret_cast<const char*>(v), 8);
  return b;
}

}  // namespace

TEST(Gguf, ReadsAHandBuiltFile) {
  const GgufFile f = GgufFile::from_bytes(tiny_file());
  EXPECT_EQ(f.version(), 3u);
  EXPECT_EQ(f.get_integer("general.answer"), 42);
  ASSERT_EQ(f.tensors().size(), 1u);
  EXPECT_EQ(f.tensors()[0].shape(), (Shape{2}));
  const Tensor t = f.get_f32("t");
  EXPECT_EQ(t.item(0), 1.5f);
  EXPECT_EQ(t.item(1), -2.0f);
}

TEST(Gguf, WriterRoundTripsKeysTensorsAndTypes) {
  ScratchDir dir;
  GgufWriter w;
  w.set("general.architecture", GgufValue::string("llama"));
  w.set("a.u32", GgufValue::u32(7));
  w.set("a.f32", GgufValue::f32(0.25f));
  w.set("a.bool", GgufValue::boolean(true));
  w.set("a.tokens", GgufValue::string_array({"x", "", "yz"}));
  w.set("a.types", GgufValue::i32_array({1, 3, -6}));
  w.set("a.u32", GgufValue::u32(8));  // replaced in place
  std::vector<float> values(3 * 64);
  for (size_t i = 0; i < values.size(); ++i) values[i] = std::sin(0.37f * static_cast<float>(i)) * 3.0f;
  const Tensor m = Tensor::from_vector(values, {3, 64});
  w.add_tensor("m.f32", m, GgmlType::F32);
  w.add_tensor("m.f16", m, GgmlType::F16);
  w.add_tensor("m.bf16", m.to(DType::BF16), GgmlType::BF16);  // any float source type
  w.add_tensor("m.q8", m, GgmlType::Q8_0);
  w.add_tensor("v", Tensor::from_vector({1, 2, 3}, {3}), GgmlType::F32);
  const std::string path = dir.file("x.gguf");
  w.write(path);

  const GgufFile f = GgufFile::open(path);
  ASSERT_EQ(f.metadata().size(), 6u);
  EXPECT_EQ(f.metadata()[1].first, "a.u32");
  EXPECT_EQ(f.get_integer("a.u32"), 8);
  EXPECT_EQ(f.get_real("a.f32"), 0.25);
  EXPECT_EQ(f.find("a.bool")->integer, 1);
  EXPECT_EQ(f.find("a.tokens")->texts, (std::vector<std::string>{"x", "", "yz"}));
  EXPECT_EQ(f.find("a.types")->integers, (std::vector<int64_t>{1, 3, -6}));
  ASSERT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.find_tensor("m.f32")->ne, (std::vector<int64_t>{64, 3}));  // innermost first
  EXPECT_EQ(f.find_tensor("m.q8")->bytes, 3u * 2 * 34);
  for (const auto& t : f.tensors()) EXPECT_EQ(t.offset % 32, 0u) << t.name;
  const Tensor f32 = f.get_f32("m.f32"), f16 = f.get_f32("m.f16"), bf = f.get_f32("m.bf16"), q8 = f.get_f32("m.q8");
  EXPECT_EQ(f32.shape(), (Shape{3, 64}));
  for (int64_t i = 0; i < m.numel(); ++i) {
    EXPECT_EQ(f32.item(i), m.item(i));
    EXPECT_EQ(f16.item(i), f16_to_f32(f32_to_f16(m.item(i))));
    EXPECT_EQ(bf.item(i), bf16_to_f32(f32_to_bf16(m.item(i))));
    EXPECT_NEAR(q8.item(i), m.item(i), 3.0 / 127 / 2 + 3.0 / 2048);  // half a step; d rounded to f16
  }
  EXPECT_EQ(f.get_f32("v").item(2), 3.0f);
}

TEST(Gguf, Q8_0MatchesGgmlsReferenceRounding) {
  // A block whose max is 127 has d = 1: codes are x rounded half away from zero (roundf).
  std::vector<float> x(32, 0.0f);
  x[0] = 127.0f;
  x[1] = 2.5f;    // → 3 (away from zero, not to even)
  x[2] = -2.5f;   // → -3
  x[3] = 0.49f;   // → 0
  x[4] = -127.0f;
  std::vector<uint8_t> q(34);
  quantize_q8_0(x.data(), 32, q.data());
  uint16_t d;
  std::memcpy(&d, q.data(), 2);
  EXPECT_EQ(f16_to_f32(d), 1.0f);
  EXPECT_EQ(static_cast<int8_t>(q[2]), 127);
  EXPECT_EQ(static_cast<int8_t>(q[3]), 3);
  EXPECT_EQ(static_cast<int8_t>(q[4]), -3);
  EXPECT_EQ(static_cast<int8_t>(q[5]), 0);
  EXPECT_EQ(static_cast<int8_t>(q[6]), -127);
  // An all-zero block: d = 0 and codes 0, not NaN.
  std::vector<float> zeros(32, 0.0f), back(32, 1.0f);
  quantize_q8_0(zeros.data(), 32, q.data());
  dequantize_q8_0(q.data(), 32, back.data());
  for (float v : back) EXPECT_EQ(v, 0.0f);
}

TEST(Gguf, RefusesMalformedFiles) {
  expect_error([] { GgufFile::from_bytes("GGML" + std::string(40, '\0')); }, "<memory>: not a GGUF file", {});
  expect_error([] { GgufFile::from_bytes("GGUF" + le32(1) + std::string(40, '\0')); }, "<memory>: GGUF version 1", {});
  expect_error([] { GgufFile::from_bytes("GGUF" + le32(3)); }, "<memory>: a GGUF header of 8 bytes", {"truncated"});
  // Truncated anywhere: a clear error, never a read past the end.
  const std::string whole = tiny_file();
  for (size_t n = 24; n < whole.size(); ++n)
    EXPECT_THROW(GgufFile::from_bytes(whole.substr(0, n)), Error) << n;
  // Counts that cannot fit are refused before anything is allocated.
  expect_error([] { GgufFile::from_bytes("GGUF" + le32(3) + le64(0) + le64(uint64_t(1) << 60) + std::string(16, '\0')); },
               "<memory>: ", {"keys cannot fit"});
  std::string huge_array = "GGUF" + le32(3) + le64(0) + le64(1) + gstr("k") + le32(9) + le32(4) + le64(uint64_t(1) << 61);
  expect_error([&] { GgufFile::from_bytes(huge_array + std::string(16, '\0')); }, "<memory>: key 'k'", {"runs past the end"});
  std::string nested = "GGUF" + le32(3) + le64(0) + le64(1) + gstr("k") + le32(9) + le32(9) + le64(1);
  expect_error([&] { GgufFile::from_bytes(nested + std::string(16, '\0')); }, "<memory>: key 'k' is an array of arrays", {});
  expect_error([] { GgufFile::from_bytes(tiny_file(32)); }, "<memory>: tensor 't' is at data offset 32, expected 0", {});
  expect_error([] { GgufFile::from_bytes(tiny_file(0, 77)); }, "<memory>: tensor 't' has unknown ggml type 77", {});
  expect_error([] { GgufFile::from_bytes(tiny_file(0, 8, 2)); }, "<memory>: tensor 't': a row of 2 values", {"q8_0"});
  expect_error([] { GgufFile::from_bytes(tiny_file(0, 0, 800)); }, "<memory>: the tensor data needs 3200 bytes", {});
  // 2^62 f32 values: 2^64 bytes would wrap around to 0 (found by fuzz_gguf).
  expect_error([] { GgufFile::from_bytes(tiny_file(0, 0, uint64_t(1) << 62)); }, "<memory>: tensor 't' has 4611686018427387904 values",
               {"more than a file of"});
  expect_error([] { GgufFile::from_bytes(tiny_file()).get_f32("nope"); }, "<memory>: no tensor named 'nope'", {});
  ScratchDir dir;
  expect_error([&] { GgufFile::open(dir.path()); }, dir.path() + ": is a folder, not a GGUF file", {});
}

TEST(Gguf, WriterRefusesLongNamesAndBadQ8Rows) {
  GgufWriter w;
  expect_error([&] { w.add_tensor(std::string(64, 'n'), Tensor::zeros({32}), GgmlType::F32); }, "GGUF tensor name", {});
  expect_error([&] { w.add_tensor("t", Tensor::zeros({2, 20}), GgmlType::Q8_0); }, "tensor 't': rows of 20 values", {});
}
