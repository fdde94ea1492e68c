#include "lowrank/io/files.h"

#include <gtest/gtest.h>

#include "io/io_test_helpers.h"
#include "lowrank/io/atomic_file.h"
#include "lowrank/io/jsonl.h"

using namespace lowrank;
using namespace lowrank::io;
using lowrank::io::testing::expect_error;
using lowrank::io::testing::ScratchDir;

TEST(Files, WriteAndReadBack) {
  ScratchDir dir;
  const std::string path = dir.file("a.bin");
  const std::string bytes("a\0b\xff\n", 5);
  write_file_atomic(path, bytes);
  EXPECT_EQ(read_file(path), bytes);
  write_file_atomic(path, "");
  EXPECT_EQ(read_file(path), "");
}

TEST(Files, AtomicWriteReplacesExistingFileAndLeavesNoTempFiles) {
  ScratchDir dir;
  const std::string path = dir.write("config.json", "old contents that are longer");
  write_file_atomic(path, "new");
  EXPECT_EQ(read_file(path), "new");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"config.json"});
}

TEST(Files, AtomicWriteFailureLeavesNoTempFiles) {
  ScratchDir dir;
  std::filesystem::create_directories(dir.file("target"));
  std::filesystem::create_directories(dir.file("target/child"));  // rename over it must fail
  expect_error([&] { write_file_atomic(dir.file("target"), "x"); }, dir.file("target"),
               {"rename"});
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"target"});
  expect_error([&] { write_file_atomic(dir.file("no/such/dir/f"), "x"); }, dir.file("no/such/dir/f"),
               {"temporary file"});
}

TEST(Files, AtomicFileWithoutCommitLeavesTargetUntouched) {
  ScratchDir dir;
  const std::string path = dir.write("model.safetensors", "original");
  {
    AtomicFile file(path);
    EXPECT_EQ(file.temp_path().rfind(dir.path() + "/.model.safetensors.tmp.", 0), 0u);
    file.write("partial");
    EXPECT_EQ(dir.entries().size(), 2u);
  }
  EXPECT_EQ(read_file(path), "original");
  EXPECT_EQ(dir.entries(), std::vector<std::string>{"model.safetensors"});
}

TEST(Files, AtomicFileStreamsPieces) {
  ScratchDir dir;
  const std::string path = dir.file("out.bin");
  AtomicFile file(path);
  file.write("abc");
  file.write(std::string(100000, 'z'));
  file.commit();
  EXPECT_EQ(read_file(path), "abc" + std::string(100000, 'z'));
  expect_error([&] { file.write("more"); }, path, {"after"});
}

TEST(Files, ReadMissingFileNamesIt) {
  ScratchDir dir;
  expect_error([&] { read_file(dir.file("missing.txt")); }, dir.file("missing.txt"),
               {"cannot read"});
  expect_error([&] { read_file(dir.path()); }, dir.path(), {"cannot read"});
}

TEST(Files, ReadJsonReportsFileAndPosition) {
  ScratchDir dir;
  const std::string path = dir.write("config.json", R"({"a": 1, "b": tru})");
  const std::string msg = expect_error([&] { read_json(path); }, path + ": invalid JSON at byte ", {});
  EXPECT_EQ(msg.find("[json.exception"), std::string::npos) << msg;
  EXPECT_EQ(read_json(dir.write("ok.json", R"({"a": [1, 2]})"))["a"][1], 2);
  expect_error([&] { read_json(dir.file("none.json")); }, dir.file("none.json"), {"cannot read"});
}

// JSON that parses but does not fit a double (nlohmann's out_of_range.406, not a parse_error):
// a clear Error naming the file (or file:line), never an internal error.
TEST(Files, NumberOverflowIsAnErrorNamingTheSource) {
  ScratchDir dir;
  const std::string path = dir.write("config.json", R"({"hidden_size": 1E400})");
  const std::string msg = expect_error([&] { read_json(path); }, path + ": invalid JSON", {"overflow", "1E400"});
  EXPECT_EQ(msg.find("[json.exception"), std::string::npos) << msg;
  expect_error([&] { parse_json(R"({"vocab": {"a": 4E20200}})", "tok.json"); }, "tok.json: invalid JSON",
               {"4E20200"});
  const std::string jsonl = dir.write("data.jsonl", "{\"input_ids\": [1]}\n{\"input_ids\": [1E400]}\n");
  expect_error([&] { for_each_jsonl(jsonl, [](int64_t, const nlohmann::json&) {}); }, jsonl + ":2: invalid JSON",
               {"1E400"});
}

// A .json file of one array of records reads as JSON Lines does (datasets' "json" loader takes both).
TEST(Files, JsonArrayFilesReadAsRecords) {
  ScratchDir dir;
  std::vector<nlohmann::json> seen;
  auto collect = [&](int64_t n, const nlohmann::json& r) {
    EXPECT_EQ(n, static_cast<int64_t>(seen.size()) + 1);
    seen.push_back(r);
  };
  for_each_jsonl(dir.write("a.json", " \n[{\"text\": \"a\"},\n {\"text\": \"b\"}]\n"), collect);
  EXPECT_EQ(seen, (std::vector<nlohmann::json>{{{"text", "a"}}, {{"text", "b"}}}));
  seen.clear();
  for_each_jsonl(dir.write("lines.json", "{\"text\": \"a\"}\n{\"text\": \"b\"}\n"), collect);  // JSON Lines in .json
  EXPECT_EQ(seen.size(), 2u);
  const std::string bad = dir.write("bad.json", "[{\"text\": \"a\"}, 5]");
  expect_error([&] { for_each_jsonl(bad, [](int64_t, const nlohmann::json&) {}); }, bad + ": record 2", {"JSON object"});
  const std::string cut = dir.write("cut.json", "[{\"text\": ");
  expect_error([&] { for_each_jsonl(cut, [](int64_t, const nlohmann::json&) {}); }, cut, {"invalid JSON"});
  const std::string thrown = dir.write("t.json", "[{}, {}]");
  expect_error([&] { for_each_jsonl(thrown, [](int64_t n, const nlohmann::json&) { if (n == 2) throw error("no text"); }); },
               thrown + ": record 2", {"no text"});
  // Only .json: a .jsonl file's "[" line is still an error of that line.
  const std::string arr_lines = dir.write("x.jsonl", "[1]\n");
  expect_error([&] { for_each_jsonl(arr_lines, [](int64_t, const nlohmann::json&) {}); }, arr_lines + ":1", {"JSON object"});
}

TEST(Files, WriteJsonRoundTrip) {
  ScratchDir dir;
  const std::string path = dir.file("x.json");
  const nlohmann::json j = {{"r", 8}, {"targets", {"q_proj", "v_proj"}}, {"name", "ü"}};
  write_json_atomic(path, j);
  EXPECT_EQ(read_json(path), j);
  EXPECT_EQ(read_file(path).back(), '\n');
  write_json_atomic(path, j, -1);
  EXPECT_EQ(read_file(path).find('\n'), read_file(path).size() - 1);  // compact: one line
  expect_error([&] { write_json_atomic(path, nlohmann::json("\xff")); }, path, {"JSON"});
  EXPECT_EQ(read_json(path), j);  // the failed write changed nothing
}

TEST(Files, ExistsAndIsDirectory) {
  ScratchDir dir;
  const std::string f = dir.write("f", "x");
  EXPECT_TRUE(file_exists(f));
  EXPECT_FALSE(is_directory(f));
  EXPECT_FALSE(file_exists(dir.path()));
  EXPECT_TRUE(is_directory(dir.path()));
  EXPECT_FALSE(file_exists(dir.file("nope")));
  EXPECT_FALSE(is_directory(dir.file("nope")));
}

TEST(Files, FsyncDirectory) {
  ScratchDir dir;
  fsync_directory(dir.path());
  expect_error([&] { fsync_directory(dir.file("nope")); }, dir.file("nope"), {"fsync"});
}
