#include "lowrank/io/safetensors.h"

#include <gtest/gtest.h>

#include <cstring>
#include <limits>

#include "io/io_test_helpers.h"
#include "lowrank/io/files.h"

using namespace lowrank;
using namespace lowrank::io;
using lowrank::io::testing::expect_error;
using lowrank::io::testing::le64;
using lowrank::io::testing::safetensors_bytes;
using lowrank::io::testing::ScratchDir;

namespace {

Tensor iota(const Shape& shape, DType dtype) {
  Tensor t = Tensor::zeros(shape, dtype);
  auto* bytes = static_cast<unsigned char*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i) bytes[i] = static_cast<unsigned char>(i * 7 + 3);
  return t;
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace

TEST(Safetensors, RoundTripDTypesAndMetadata) {
  ScratchDir dir;
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"z.f32", Tensor::from_vector({1.5f, -2.0f, 3.25f, 0.0f, 1e-3f, 7.0f}, {2, 3})},
      {"a.bf16", iota({4}, DType::BF16)},
      {"m.f16", iota({2, 2}, DType::F16)},
      {"ids", iota({3}, DType::I64)},
      {"empty", Tensor::zeros({0, 5}, DType::F32)},
      {"scalar", iota({}, DType::F32)},
  };
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"note", "héllo"}};
  const std::string path = dir.file("model.safetensors");
  write_safetensors(path, tensors, metadata);

  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_EQ(file.path(), path);
  EXPECT_EQ(file.metadata(), metadata);
  ASSERT_EQ(file.tensors().size(), tensors.size());
  // Zero-size tensors sit at the offset where they were written; the others keep their order.
  std::vector<std::string> order;
  for (const auto& t : file.tensors()) order.push_back(t.name);
  EXPECT_EQ(order, (std::vector<std::string>{"z.f32", "a.bf16", "m.f16", "ids", "empty", "scalar"}));
  for (const auto& [name, expected] : tensors) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(file.contains(name));
    const Tensor got = file.get(name);
    EXPECT_EQ(got.dtype(), expected.dtype());
    EXPECT_EQ(got.shape(), expected.shape());
    EXPECT_TRUE(got.device().is_cpu());
    EXPECT_TRUE(same_bytes(got, expected));
  }
  EXPECT_EQ(file.get("z.f32").item(2), 3.25f);
  EXPECT_EQ(file.find("missing"), nullptr);
  expect_error([&] { file.get("missing"); }, path, {"'missing'"});

  // Header padded with spaces to a multiple of 8, so the data is 8-byte aligned in the map.
  const std::string bytes = read_file(path);
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(file.get("z.f32").raw()) % 8, 0u);
}

TEST(Safetensors, EmptyFileWithNoTensors) {
  ScratchDir dir;
  const std::string path = dir.file("empty.safetensors");
  write_safetensors(path, {});
  const SafetensorsFile file = SafetensorsFile::open(path);
  EXPECT_TRUE(file.tensors().empty());
  EXPECT_TRUE(file.metadata().empty());
  EXPECT_EQ(read_file(path).size(), 16u);  // length + "{}" padded to 8

  write_safetensors(path, {}, {{"k", "v"}});
  EXPECT_EQ(SafetensorsFile::open(path).metadata().at("k"), "v");
}

TEST(Safetensors, OnlyZeroSizeTensorsMeansEmptyDataSection) {
  ScratchDir dir;
  const std::string path = dir.file("zeros.safetensors");
  write_safetensors(path, {{"a", Tensor::zeros({0}, DType::BF16)}, {"b", Tensor::zeros({3, 0})}});
  const SafetensorsFile file = SafetensorsFile::open(path);
  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.get("b").shape(), (Shape{3, 0}));
  EXPECT_EQ(file.get("a").numel(), 0);
}

TEST(Safetensors, GetIsZeroCopyAndOutlivesTheFile) {
  ScratchDir dir;
  const std::string path = dir.file("w.safetensors");
  write_safetensors(path, {{"w", Tensor::from_vector({1, 2, 3, 4}, {2, 2})}});
  Tensor kept;
  {
    const SafetensorsFile file = SafetensorsFile::open(path);
    EXPECT_EQ(file.get("w").raw(), file.get("w").raw());
    kept = file.get("w");
  }
  EXPECT_EQ(kept.item(3), 4.0f);  // the mapping lives as long as a tensor uses it
}

TEST(Safetensors, ReadsHandWrittenFileWithPaddingAndUnknownFields) {
  // What the Python library writes: metadata first, header padded with spaces.
  std::string header =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},)"
      R"("a":{"dtype":"U8","shape":[2,2],"data_offsets":[0,4],"extra":{"ignored":[1,2]}}})";
  header.append((8 - header.size() % 8) % 8 + 8, ' ');
  float one = 1.0f;
  std::string data = "\x01\x02\x03\x04" + std::string(reinterpret_cast<char*>(&one), 4);
  const SafetensorsFile file = SafetensorsFile::from_bytes(safetensors_bytes(header, data), "mem");
  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.tensors()[0].name, "a");  // file order is offset order
  EXPECT_EQ(file.tensors()[1].name, "b");
  EXPECT_EQ(file.get("b").item(0), 1.0f);
  EXPECT_EQ(file.get("a").data<uint8_t>()[3], 4);
  EXPECT_EQ(file.metadata().at("format"), "pt");
}

TEST(Safetensors, HighRankIsListedButGetThrows) {
  const std::string header =
      R"({"t":{"dtype":"I8","shape":[1,1,1,1,1,2],"data_offsets":[0,2]}})";
  const SafetensorsFile file = SafetensorsFile::from_bytes(safetensors_bytes(header, "xy"), "hr");
  ASSERT_EQ(file.tensors().size(), 1u);
  EXPECT_EQ(file.tensors()[0].shape.size(), 6u);
  expect_error([&] { file.get("t"); }, "hr", {"'t'", "rank 6"});
}

TEST(Safetensors, WriterRejectsBadTensorLists) {
  ScratchDir dir;
  const std::string path = dir.file("bad.safetensors");
  expect_error([&] { write_safetensors(path, {{"x", Tensor::zeros({1})}, {"x", Tensor::zeros({1})}}); },
               path, {"duplicate", "'x'"});
  expect_error([&] { write_safetensors(path, {{"u", Tensor()}}); }, path, {"'u'"});
  expect_error([&] { write_safetensors(path, {{"__metadata__", Tensor::zeros({1})}}); }, path,
               {"__metadata__"});
  EXPECT_TRUE(dir.entries().empty());  // nothing written, no temp file left
}

TEST(Safetensors, OpenRejectsMissingFileAndFolder) {
  ScratchDir dir;
  expect_error([&] { SafetensorsFile::open(dir.file("nope.safetensors")); },
               dir.file("nope.safetensors"), {"cannot open"});
  expect_error([&] { SafetensorsFile::open(dir.path()); }, dir.path(), {"folder"});
}

// ---- Bad input: every case must throw lowrank::Error naming the file and the culprit. ----

namespace {

// Writes `bytes` to a file and checks both open() and from_bytes() reject it with a message
// that starts with the file's name and contains `parts`.
void expect_bad(const std::string& bytes, const std::vector<std::string>& parts) {
  ScratchDir dir;
  const std::string path = dir.write("bad.safetensors", bytes);
  expect_error([&] { SafetensorsFile::open(path); }, path, parts);
  expect_error([&] { SafetensorsFile::from_bytes(bytes, "bytes.safetensors"); },
               "bytes.safetensors", parts);
}

std::string entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  const std::string& offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

}  // namespace

TEST(SafetensorsBadInput, FileShorterThanLengthField) {
  expect_bad("", {"too short"});
  expect_bad(std::string("\x02\0\0\0\0", 5), {"too short", "5 bytes"});
}

TEST(SafetensorsBadInput, DataCutShort) {
  const std::string header = "{" + entry("w", "F32", "[4]", "[0,16]") + "}";
  expect_bad(safetensors_bytes(header, std::string(8, 'x')), {"'w'", "truncated"});
}

TEST(SafetensorsBadInput, HeaderLengthPastEndOfFile) {
  expect_bad(safetensors_bytes("{}", "", 1000), {"header length 1000", "past the end"});
}

TEST(SafetensorsBadInput, AbsurdHeaderLength) {
  expect_bad(safetensors_bytes("{}", "", uint64_t{1} << 63), {"header length 9223372036854775808"});
  expect_bad(safetensors_bytes("{}", "", std::numeric_limits<uint64_t>::max()), {"header length"});
}

TEST(SafetensorsBadInput, OverlappingOffsets) {
  const std::string header = "{" + entry("a", "F32", "[2]", "[0,8]") + "," +
                             entry("b", "F32", "[2]", "[4,12]") + "}";
  expect_bad(safetensors_bytes(header, std::string(12, 'x')), {"'b'", "overlap", "'a'"});
}

TEST(SafetensorsBadInput, SameRangeTwice) {
  const std::string header = "{" + entry("a", "F32", "[2]", "[0,8]") + "," +
                             entry("b", "F32", "[2]", "[0,8]") + "}";
  expect_bad(safetensors_bytes(header, std::string(8, 'x')), {"'b'", "overlap", "'a'"});
}

TEST(SafetensorsBadInput, GapBetweenOffsets) {
  const std::string header = "{" + entry("a", "F32", "[2]", "[0,8]") + "," +
                             entry("b", "F32", "[2]", "[12,20]") + "}";
  expect_bad(safetensors_bytes(header, std::string(20, 'x')), {"'b'", "gap of 4"});
}

TEST(SafetensorsBadInput, GapBeforeFirstTensor) {
  const std::string header = "{" + entry("a", "F32", "[1]", "[4,8]") + "}";
  expect_bad(safetensors_bytes(header, std::string(8, 'x')), {"'a'", "gap of 4"});
}

TEST(SafetensorsBadInput, TrailingBytesAfterLastTensor) {
  const std::string header = "{" + entry("a", "F32", "[2]", "[0,8]") + "}";
  expect_bad(safetensors_bytes(header, std::string(12, 'x')), {"4 trailing bytes", "'a'"});
  expect_bad(safetensors_bytes("{}", "xyz"), {"3 trailing bytes"});
}

TEST(SafetensorsBadInput, ShapeSizeMismatch) {
  const std::string header = "{" + entry("a", "F32", "[3]", "[0,8]") + "}";
  expect_bad(safetensors_bytes(header, std::string(8, 'x')), {"'a'", "needs 12"});
}

TEST(SafetensorsBadInput, UnknownDtype) {
  const std::string header = "{" + entry("a", "F33", "[2]", "[0,8]") + "}";
  expect_bad(safetensors_bytes(header, std::string(8, 'x')), {"'a'", "unknown dtype 'F33'"});
}

TEST(SafetensorsBadInput, DtypeNotAString) {
  expect_bad(safetensors_bytes(R"({"a":{"dtype":4,"shape":[],"data_offsets":[0,4]}})", "abcd"),
             {"'a'", "\"dtype\""});
}

TEST(SafetensorsBadInput, HeaderNotJson) {
  expect_bad(safetensors_bytes("{not json}"), {"not valid JSON", "at byte 3"});
  expect_bad(safetensors_bytes(""), {"not valid JSON"});
  expect_bad(safetensors_bytes("{} x"), {"not valid JSON"});
  expect_bad(safetensors_bytes(std::string("{\"a\xff\":1}")), {"not valid JSON"});  // bad UTF-8
}

TEST(SafetensorsBadInput, HeaderJsonButNotObject) {
  expect_bad(safetensors_bytes("[1, 2]"), {"must be a JSON object", "array"});
  expect_bad(safetensors_bytes("\"str\""), {"must be a JSON object", "string"});
}

TEST(SafetensorsBadInput, EntryNotAnObject) {
  expect_bad(safetensors_bytes(R"({"a":[0,4]})"), {"'a'", "must be an object"});
}

TEST(SafetensorsBadInput, MissingFields) {
  expect_bad(safetensors_bytes(R"({"a":{"shape":[],"data_offsets":[0,4]}})", "abcd"),
             {"'a'", "missing \"dtype\""});
  expect_bad(safetensors_bytes(R"({"a":{"dtype":"F32","data_offsets":[0,4]}})", "abcd"),
             {"'a'", "missing \"shape\""});
  expect_bad(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[]}})", "abcd"),
             {"'a'", "missing \"data_offsets\""});
}

TEST(SafetensorsBadInput, ShapeElementCountOverflows) {
  const std::string header = "{" + entry("a", "F32", "[4294967296,4294967296,4]", "[0,8]") + "}";
  expect_bad(safetensors_bytes(header, std::string(8, 'x')), {"'a'", "overflows 64 bits"});
}

TEST(SafetensorsBadInput, ShapeByteSizeOverflows) {
  const std::string header = "{" + entry("a", "F64", "[4611686018427387904]", "[0,8]") + "}";
  expect_bad(safetensors_bytes(header, std::string(8, 'x')), {"'a'", "64 bits"});
}

TEST(SafetensorsBadInput, ShapeDimensionTooLarge) {
  const std::string header = "{" + entry("a", "U8", "[18446744073709551615]", "[0,8]") + "}";
  expect_bad(safetensors_bytes(header, std::string(8, 'x')), {"'a'", "too large"});
}

TEST(SafetensorsBadInput, NegativeShapeEntry) {
  const std::string header = "{" + entry("a", "F32", "[-1,2]", "[0,8]") + "}";
  expect_bad(safetensors_bytes(header, std::string(8, 'x')), {"'a'", "negative dimension -1"});
}

TEST(SafetensorsBadInput, FractionalShapeEntry) {
  const std::string header = "{" + entry("a", "F32", "[2.0]", "[0,8]") + "}";
  expect_bad(safetensors_bytes(header, std::string(8, 'x')), {"'a'", "integers"});
}

TEST(SafetensorsBadInput, RankAboveEight) {
  const std::string header = "{" + entry("a", "U8", "[1,1,1,1,1,1,1,1,1]", "[0,1]") + "}";
  expect_bad(safetensors_bytes(header, "x"), {"'a'", "rank 9"});
}

TEST(SafetensorsBadInput, DuplicateTensorName) {
  // nlohmann alone would keep the second entry silently.
  const std::string header = "{" + entry("a", "F32", "[1]", "[0,4]") + "," +
                             entry("a", "F32", "[1]", "[4,8]") + "}";
  expect_bad(safetensors_bytes(header, std::string(8, 'x')), {"duplicate tensor name 'a'"});
}

TEST(SafetensorsBadInput, DuplicateKeyInsideEntryOrMetadata) {
  expect_bad(safetensors_bytes(
                 R"({"a":{"dtype":"F32","dtype":"U8","shape":[1],"data_offsets":[0,4]}})", "abcd"),
             {"tensor 'a'", "duplicate key 'dtype'"});
  expect_bad(safetensors_bytes(R"({"__metadata__":{"k":"1","k":"2"}})"),
             {"__metadata__", "duplicate key 'k'"});
}

TEST(SafetensorsBadInput, MetadataValueNotAString) {
  expect_bad(safetensors_bytes(R"({"__metadata__":{"ok":"x","k":1}})"),
             {"__metadata__ key 'k'", "must be a string"});
}

TEST(SafetensorsBadInput, MetadataNotAnObject) {
  expect_bad(safetensors_bytes(R"({"__metadata__":["k"]})"), {"__metadata__", "object"});
}

TEST(SafetensorsBadInput, BeginAfterEnd) {
  const std::string header = "{" + entry("a", "F32", "[0]", "[8,0]") + "}";
  expect_bad(safetensors_bytes(header, std::string(8, 'x')), {"'a'", "begin 8 is after end 0"});
}

TEST(SafetensorsBadInput, OffsetsNotAPairOfNonNegativeIntegers) {
  for (const char* offsets : {"[0]", "[0,4,8]", "[-4,0]", "[0,4.5]", "\"0-4\"", "[0,\"4\"]"}) {
    SCOPED_TRACE(offsets);
    const std::string header = "{" + entry("a", "F32", "[1]", offsets) + "}";
    expect_bad(safetensors_bytes(header, "abcd"), {"'a'", "data_offsets"});
  }
}

TEST(SafetensorsBadInput, OffsetsNearUint64Max) {
  // end - begin matches the size but end is far past the data: no wrap-around may hide it.
  const std::string header =
      "{" + entry("a", "U8", "[4]", "[18446744073709551612,18446744073709551615]") + "}";
  expect_bad(safetensors_bytes(header, "abcd"), {"'a'"});
  const std::string header2 =
      "{" + entry("a", "U8", "[3]", "[18446744073709551612,18446744073709551615]") + "}";
  expect_bad(safetensors_bytes(header2, "abcd"), {"'a'", "past the end"});
}

TEST(SafetensorsBadInput, DeeplyNestedHeader) {
  const std::string header =
      R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":)" + std::string(100000, '[') +
      std::string(100000, ']') + "}}";
  expect_bad(safetensors_bytes(header, "x"), {"nested deeper"});
}
