#pragma once
// A fixture adapter copied into a scratch folder for a test to change its adapter_config.json (or
// its tensors), and the check that loading a folder fails with an Error naming what is wrong.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "io/io_test_helpers.h"
#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/lora/adapter.h"
#include "lowrank/model/model.h"
#include "test_paths.h"

namespace lowrank::test {

struct AdapterCopy {
  io::testing::ScratchDir dir;
  nlohmann::json config;

  explicit AdapterCopy(const std::string& fixture_case = "llama_all_linear") {
    const std::string src = fixture("lora/" + fixture_case + "/adapter");
    config = io::read_json(src + "/adapter_config.json");
    std::filesystem::copy_file(src + "/adapter_model.safetensors", dir.file("adapter_model.safetensors"));
  }
  std::string write() {  // the config as it now is; returns the folder
    io::write_json_atomic(dir.file("adapter_config.json"), config);
    return dir.path();
  }
};

inline void expect_load_error(const std::string& dir, const model::Model& m, const std::vector<std::string>& fragments) {
  try {
    (void)lora::Adapter::load(dir, m);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    for (const auto& f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
  }
}

}  // namespace lowrank::test
