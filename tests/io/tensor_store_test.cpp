#include <gtest/gtest.h>

#include "io/io_test_helpers.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"

using namespace lowrank;
using namespace lowrank::io;
using lowrank::io::testing::expect_error;
using lowrank::io::testing::ScratchDir;

namespace {

// Two shards plus an index, as transformers writes them.
void write_sharded_model(const ScratchDir& dir) {
  write_safetensors(dir.file("model-00001-of-00002.safetensors"),
                    {{"embed", Tensor::from_vector({1, 2, 3, 4}, {2, 2})},
                     {"layer.0", Tensor::from_vector({5}, {1})}},
                    {{"format", "pt"}});
  write_safetensors(dir.file("model-00002-of-00002.safetensors"),
                    {{"layer.1", Tensor::from_vector({6, 7}, {2})}}, {{"format", "pt"}});
  write_json_atomic(dir.file("model.safetensors.index.json"),
                    {{"metadata", {{"total_size", 32}}},
                     {"weight_map",
                      {{"embed", "model-00001-of-00002.safetensors"},
                       {"layer.0", "model-00001-of-00002.safetensors"},
                       {"layer.1", "model-00002-of-00002.safetensors"}}}});
}

void write_index(const ScratchDir& dir, const nlohmann::json& weight_map) {
  write_json_atomic(dir.file("model.safetensors.index.json"), {{"weight_map", weight_map}});
}

}  // namespace

TEST(TensorStore, OpensSingleFilePath) {
  ScratchDir dir;
  const std::string path = dir.file("anything.safetensors");
  write_safetensors(path, {{"b", Tensor::from_vector({1}, {1})}, {"a", Tensor::zeros({2})}});
  const TensorStore store = TensorStore::open(path);
  EXPECT_EQ(store.source(), path);
  EXPECT_EQ(store.names(), (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(store.file_of("a"), path);
  EXPECT_EQ(store.get("b").item(0), 1.0f);
  EXPECT_EQ(store.info("a").shape, (Shape{2}));
}

TEST(TensorStore, OpensFolderWithModelSafetensors) {
  ScratchDir dir;
  write_safetensors(dir.file("model.safetensors"), {{"w", Tensor::from_vector({3, 4}, {2})}},
                    {{"format", "pt"}});
  const TensorStore store = TensorStore::open(dir.path());
  EXPECT_EQ(store.names(), std::vector<std::string>{"w"});
  EXPECT_EQ(store.get("w").item(1), 4.0f);
  EXPECT_EQ(store.metadata().at("format"), "pt");
  EXPECT_FALSE(store.contains("v"));
  expect_error([&] { store.get("v"); }, dir.path(), {"'v'"});
  expect_error([&] { store.info("v"); }, dir.path(), {"'v'"});
  expect_error([&] { store.file_of("v"); }, dir.path(), {"'v'"});
}

TEST(TensorStore, OpensShardedFolder) {
  ScratchDir dir;
  write_sharded_model(dir);
  const TensorStore store = TensorStore::open(dir.path());
  EXPECT_EQ(store.names(), (std::vector<std::string>{"embed", "layer.0", "layer.1"}));
  EXPECT_EQ(store.file_of("layer.1"), dir.file("model-00002-of-00002.safetensors"));
  EXPECT_EQ(TensorStore::open(dir.path() + "/").file_of("embed"),
            dir.file("model-00001-of-00002.safetensors"));
  EXPECT_EQ(store.get("embed").item(3), 4.0f);
  EXPECT_EQ(store.get("layer.1").item(1), 7.0f);
  EXPECT_EQ(store.info("layer.0").dtype, DType::F32);
  EXPECT_EQ(store.metadata().at("format"), "pt");
}

TEST(TensorStore, MissingShard) {
  ScratchDir dir;
  write_sharded_model(dir);
  std::filesystem::remove(dir.file("model-00002-of-00002.safetensors"));
  expect_error([&] { TensorStore::open(dir.path()); }, dir.file("model.safetensors.index.json"),
               {"model-00002-of-00002.safetensors", "does not exist"});
}

TEST(TensorStore, NameListedButNotInShard) {
  ScratchDir dir;
  write_sharded_model(dir);
  write_index(dir, {{"embed", "model-00001-of-00002.safetensors"},
                    {"layer.0", "model-00002-of-00002.safetensors"}});
  expect_error([&] { TensorStore::open(dir.path()); }, dir.file("model.safetensors.index.json"),
               {"'layer.0'", "model-00002-of-00002.safetensors", "does not contain"});
}

TEST(TensorStore, NameInTwoShards) {
  ScratchDir dir;
  write_sharded_model(dir);
  write_safetensors(dir.file("model-00002-of-00002.safetensors"),
                    {{"layer.1", Tensor::zeros({2})}, {"embed", Tensor::zeros({1})}});
  expect_error([&] { TensorStore::open(dir.path()); }, dir.path(), {"'embed'", "two shards"});
}

TEST(TensorStore, ShardPathLeavingTheFolder) {
  ScratchDir dir;
  write_sharded_model(dir);
  const std::string index = dir.file("model.safetensors.index.json");
  write_index(dir, {{"embed", "../model-00001-of-00002.safetensors"}});
  expect_error([&] { TensorStore::open(dir.path()); }, index, {"'embed'", "'..'"});
  write_index(dir, {{"embed", "sub/../../x.safetensors"}});
  expect_error([&] { TensorStore::open(dir.path()); }, index, {"'embed'", "'..'"});
  write_index(dir, {{"embed", dir.file("model-00001-of-00002.safetensors")}});
  expect_error([&] { TensorStore::open(dir.path()); }, index, {"'embed'", "absolute"});
  write_index(dir, {{"embed", 3}});
  expect_error([&] { TensorStore::open(dir.path()); }, index, {"'embed'", "file name"});
}

TEST(TensorStore, ShardInSubfolderIsFine) {
  ScratchDir dir;
  std::filesystem::create_directories(dir.file("shards"));
  write_safetensors(dir.file("shards/a.safetensors"), {{"x", Tensor::zeros({1})}});
  write_index(dir, {{"x", "./shards/a.safetensors"}});
  EXPECT_TRUE(TensorStore::open(dir.path()).contains("x"));
}

TEST(TensorStore, BadIndexJson) {
  ScratchDir dir;
  const std::string index = dir.write("model.safetensors.index.json", "{\"weight_map\": ");
  expect_error([&] { TensorStore::open(dir.path()); }, index, {"invalid JSON"});
  dir.write("model.safetensors.index.json", "{\"weight_map\": []}");
  expect_error([&] { TensorStore::open(dir.path()); }, index, {"weight_map"});
}

TEST(TensorStore, FolderWithoutWeightsListsWhatWasLookedFor) {
  ScratchDir dir;
  expect_error([&] { TensorStore::open(dir.path()); }, dir.path(),
               {"model.safetensors.index.json", "model.safetensors"});
  expect_error([&] { TensorStore::open(dir.file("missing")); }, dir.file("missing"),
               {"no such file"});
  dir.write("pytorch_model.bin", "a pickle");  // never unpickled: said why it is not read
  expect_error([&] { TensorStore::open(dir.path()); }, dir.path(), {"pickle", "safe_serialization=True"});
}

TEST(TensorStore, BadShardErrorNamesTheShard) {
  ScratchDir dir;
  write_sharded_model(dir);
  const std::string shard = dir.write("model-00002-of-00002.safetensors", "junk");
  expect_error([&] { TensorStore::open(dir.path()); }, shard, {"too short"});
}
