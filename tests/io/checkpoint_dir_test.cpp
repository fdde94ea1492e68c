#include "lowrank/io/checkpoint_dir.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <stdexcept>

#include "io/io_test_helpers.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"

using namespace lowrank;
using namespace lowrank::io;
using lowrank::io::testing::expect_error;
using lowrank::io::testing::ScratchDir;
namespace fs = std::filesystem;

namespace {

// Writes one small file per name, with the name as its contents.
std::function<void(const std::string&)> files(std::vector<std::string> names) {
  return [names](const std::string& tmp) {
    for (const auto& n : names) write_file_atomic(tmp + "/" + n, n);
  };
}

std::vector<std::string> listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

const std::string kDeadPid = "999999999";  // above any Linux pid_max

}  // namespace

TEST(CheckpointDir, WritesACompleteFolderAndNoLeftovers) {
  ScratchDir run;
  const std::string ckpt = run.file("checkpoint-5");
  write_checkpoint_dir(ckpt,
                       [&](const std::string& tmp) {
                         EXPECT_NE(tmp, ckpt);
                         EXPECT_EQ(fs::path(tmp).parent_path(), fs::path(ckpt).parent_path());
                         EXPECT_EQ(fs::path(tmp).filename().string().rfind("checkpoint-5.tmp-", 0),
                                   0u);
                         EXPECT_FALSE(is_complete_checkpoint(tmp));  // no manifest yet
                         write_safetensors(tmp + "/adapter_model.safetensors",
                                           {{"w", Tensor::from_vector({1, 2}, {2})}});
                         fs::create_directories(tmp + "/sub");
                         write_file_atomic(tmp + "/sub/rng.json", "{}");
                       },
                       {{"step", 5}, {"files", {"adapter_model.safetensors"}}});
  EXPECT_TRUE(is_complete_checkpoint(ckpt));
  EXPECT_EQ(read_json(ckpt + "/manifest.json").at("step"), 5);
  EXPECT_EQ(listing(ckpt),
            (std::vector<std::string>{"adapter_model.safetensors", "manifest.json", "sub"}));
  EXPECT_EQ(SafetensorsFile::open(ckpt + "/adapter_model.safetensors").get("w").item(1), 2.0f);
  EXPECT_EQ(run.entries(), std::vector<std::string>{"checkpoint-5"});
  EXPECT_EQ(latest_checkpoint(run.path()), ckpt);
}

TEST(CheckpointDir, ThrowingFillLeavesNothing) {
  ScratchDir run;
  const std::string ckpt = run.file("checkpoint-1");
  EXPECT_THROW(write_checkpoint_dir(ckpt,
                                    [](const std::string& tmp) {
                                      write_file_atomic(tmp + "/half.bin", "x");
                                      throw std::runtime_error("disk full");
                                    },
                                    {{"step", 1}}),
               std::runtime_error);
  EXPECT_EQ(run.entries(), std::vector<std::string>{});
  EXPECT_FALSE(latest_checkpoint(run.path()).has_value());
}

TEST(CheckpointDir, OverwriteReplacesTheOldCheckpointWhole) {
  ScratchDir run;
  const std::string ckpt = run.file("checkpoint-10");
  write_checkpoint_dir(ckpt, files({"old_a", "old_b"}), {{"version", 1}});
  write_checkpoint_dir(ckpt,
                       [&](const std::string& tmp) {
                         // While the new one is being written, the old one is still complete in
                         // place.
                         EXPECT_TRUE(is_complete_checkpoint(ckpt));
                         EXPECT_EQ(read_json(ckpt + "/manifest.json").at("version"), 1);
                         files({"new"})(tmp);
                       },
                       {{"version", 2}});
  EXPECT_TRUE(is_complete_checkpoint(ckpt));
  EXPECT_EQ(read_json(ckpt + "/manifest.json").at("version"), 2);
  EXPECT_EQ(listing(ckpt), (std::vector<std::string>{"manifest.json", "new"}));
  EXPECT_EQ(run.entries(), std::vector<std::string>{"checkpoint-10"});

  // A failed overwrite keeps the previous checkpoint as it was.
  EXPECT_THROW(
      write_checkpoint_dir(ckpt, [](const std::string&) { throw Error("boom"); }, {{"version", 3}}),
      Error);
  EXPECT_EQ(read_json(ckpt + "/manifest.json").at("version"), 2);
  EXPECT_EQ(run.entries(), std::vector<std::string>{"checkpoint-10"});
}

TEST(CheckpointDir, CreatesParentsAndAcceptsTrailingSlash) {
  ScratchDir root;
  const std::string ckpt = root.file("run/nested/checkpoint-3");
  write_checkpoint_dir(ckpt + "/", files({"a"}), {{"step", 3}});
  EXPECT_TRUE(is_complete_checkpoint(ckpt));
  EXPECT_EQ(listing(root.file("run/nested")), std::vector<std::string>{"checkpoint-3"});
}

TEST(CheckpointDir, MisuseIsAnErrorWithoutLeftovers) {
  ScratchDir run;
  expect_error([&] { write_checkpoint_dir(run.file("c"), files({}), nlohmann::json::array()); },
               run.file("c"), {"manifest", "object"});
  const std::string file = run.write("checkpoint-2", "not a folder");
  expect_error(
      [&] {
        write_checkpoint_dir(file, files({"a"}), {{"step", 2}});
      },
      file, {"not a folder"});
  EXPECT_THROW(write_checkpoint_dir(run.file("checkpoint-4"), files({"manifest.json"}), {{"s", 4}}),
               InternalError);
  EXPECT_EQ(run.entries(), std::vector<std::string>{"checkpoint-2"});
  expect_error([] { write_checkpoint_dir("", files({}), {{"s", 1}}); }, "checkpoint folder", {});
}

TEST(CheckpointDir, LatestIgnoresIncompleteAndForeignFolders) {
  ScratchDir run;
  EXPECT_FALSE(latest_checkpoint(run.file("missing")).has_value());
  EXPECT_FALSE(latest_checkpoint(run.path()).has_value());
  write_checkpoint_dir(run.file("checkpoint-10"), files({"a"}), {{"step", 10}});
  write_checkpoint_dir(run.file("checkpoint-9"), files({"a"}), {{"step", 9}});
  fs::create_directories(run.file("checkpoint-20"));  // no manifest: a crash mid-copy
  run.write("checkpoint-20/adapter_model.safetensors", "partial");
  run.write("checkpoint-30/manifest.json", "{\"step\": 3");  // cut short
  run.write("checkpoint-40.tmp-" + kDeadPid + "-abcdef/manifest.json", "{}");
  run.write("checkpoint-050/manifest.json", "{}");
  run.write("checkpoint-x/manifest.json", "{}");
  run.write("checkpoint-60", "a file");
  EXPECT_EQ(latest_checkpoint(run.path()), run.file("checkpoint-10"));
  const auto all = list_checkpoints(run.path());
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].first, 9);
  EXPECT_EQ(all[1].first, 10);
  EXPECT_FALSE(is_complete_checkpoint(run.file("checkpoint-20")));
  EXPECT_FALSE(is_complete_checkpoint(run.file("checkpoint-30")));
  EXPECT_FALSE(is_complete_checkpoint(run.file("nope")));
}

TEST(CheckpointDir, ParsesOnlyCanonicalNames) {
  EXPECT_EQ(checkpoint_name(200), "checkpoint-200");
  EXPECT_EQ(parse_checkpoint_name("checkpoint-200"), 200);
  EXPECT_EQ(parse_checkpoint_name("checkpoint-0"), 0);
  for (const char* bad :
       {"checkpoint-", "checkpoint--1", "checkpoint-+1", "checkpoint-01", "checkpoint-1a",
        "checkpoint-1.tmp-5-ab", "ckpt-1", "checkpoint-99999999999999999999"})
    EXPECT_FALSE(parse_checkpoint_name(bad).has_value()) << bad;
}

TEST(CheckpointDir, CleanupRemovesStaleFoldersAndKeepsLiveOnes) {
  ScratchDir run;
  write_checkpoint_dir(run.file("checkpoint-1"), files({"a"}), {{"step", 1}});
  const std::string dead_tmp = "checkpoint-2.tmp-" + kDeadPid + "-0123abcd";
  const std::string dead_old = "checkpoint-1.old-" + kDeadPid + "-0123abcd";
  const std::string live_tmp = "checkpoint-3.tmp-" + std::to_string(::getpid()) + "-ff";
  run.write(dead_tmp + "/half.bin", "x");        // incomplete: removed
  run.write(dead_old + "/manifest.json", "{}");  // complete, but checkpoint-1 exists: removed
  run.write(live_tmp + "/half.bin", "x");        // a writer that is still running: kept
  run.write("notes.tmp-1-2", "a file, not ours");
  EXPECT_EQ(cleanup_stale_tmp(run.path()), 2);
  EXPECT_EQ(run.entries(), (std::vector<std::string>{"checkpoint-1", live_tmp, "notes.tmp-1-2"}));
  EXPECT_EQ(cleanup_stale_tmp(run.file("missing")), 0);
}

TEST(CheckpointDir, CleanupRestoresACheckpointCaughtBetweenRenames) {
  // The fallback path (no RENAME_EXCHANGE) moves the old folder aside before moving the new one
  // in; a crash in between leaves both complete under temporary names and none under the final.
  ScratchDir run;
  run.write("checkpoint-7.old-" + kDeadPid + "-aa/manifest.json", "{\"version\": 1}");
  run.write("checkpoint-7.tmp-" + kDeadPid + "-bb/manifest.json", "{\"version\": 2}");
  EXPECT_FALSE(latest_checkpoint(run.path()).has_value());
  EXPECT_EQ(cleanup_stale_tmp(run.path()), 2);
  EXPECT_EQ(run.entries(), std::vector<std::string>{"checkpoint-7"});
  EXPECT_EQ(read_json(run.file("checkpoint-7/manifest.json")).at("version"), 2);  // the newer
  EXPECT_EQ(latest_checkpoint(run.path()), run.file("checkpoint-7"));
}
