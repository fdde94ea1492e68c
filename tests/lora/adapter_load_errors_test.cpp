// Bad adapter folders: an adapter_config.json that does not describe its tensors, or asks for
// what lowrank does not compute, is an Error naming the file, never a silently other adapter.
#include <gtest/gtest.h>

#include <filesystem>
#include <limits>
#include <cmath>

#include "io/io_test_helpers.h"
#include "lora/adapter_copy.h"
#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/lora/adapter.h"
#include "lowrank/model/model.h"
#include "test_paths.h"

using namespace lowrank;
namespace fs = std::filesystem;

namespace {

using test::AdapterCopy;
using test::expect_load_error;

const model::Model& llama() {
  static const model::Model m = model::Model::load(test::model_fixture("llama"));
  return m;
}

TEST(AdapterLoad, TheUnchangedCopyLoads) {
  AdapterCopy a;
  EXPECT_EQ(lora::Adapter::load(a.write(), llama()).pairs.size(), 14u);
}

// An adapter saved in PyTorch's pickle format (PEFT before safetensors): refused, saying how to convert.
TEST(AdapterLoad, APickledAdapterIsRefusedWithTheWayOut) {
  AdapterCopy a;
  const std::string dir = a.write();
  fs::rename(a.dir.file("adapter_model.safetensors"), a.dir.file("adapter_model.bin"));
  expect_load_error(dir, llama(), {"no adapter_model.safetensors", "pickle", "safe_serialization=True"});
}

// PEFT puts LoRA layers only where target_modules points (and refuses an adapter whose
// target_modules matches nothing): tensors for other modules were applied all the same.
TEST(AdapterLoad, TensorsOfModulesTargetModulesDoesNotSelectAreRefused) {
  for (const nlohmann::json& targets : {nlohmann::json::array({"foo"}), nlohmann::json::array({"q_proj"}),
                                        nlohmann::json("zzz")}) {
    AdapterCopy a;
    a.config["target_modules"] = targets;
    expect_load_error(a.write(), llama(), {"adapter_model.safetensors", "target_modules does not select"});
  }
  AdapterCopy bad_regex;
  bad_regex.config["target_modules"] = "((";
  expect_load_error(bad_regex.write(), llama(), {"target_modules", "invalid regular expression"});
}

// The same for modules exclude_modules takes out (PEFT creates no layer there either).
TEST(AdapterLoad, TensorsOfExcludedModulesAreRefused) {
  for (const nlohmann::json& exclude : {nlohmann::json::array({"v_proj"}), nlohmann::json(".*layers\\.0\\..*")}) {
    AdapterCopy a;
    a.config["exclude_modules"] = exclude;
    expect_load_error(a.write(), llama(), {"adapter_model.safetensors", "exclude_modules"});
  }
  AdapterCopy none;  // null and an exclusion that matches nothing change nothing
  none.config["exclude_modules"] = nlohmann::json::array({"zzz"});
  EXPECT_NO_THROW((void)lora::Adapter::load(none.write(), llama()));
}

// An alpha beyond the f32 range made the scale infinite and every logit NaN.
TEST(AdapterLoad, AlphaBeyondTheF32RangeIsRefused) {
  AdapterCopy a;
  a.config["lora_alpha"] = 1e308;
  expect_load_error(a.write(), llama(), {"adapter_config.json", "lora_alpha", "f32 range"});
  AdapterCopy p;
  p.config["alpha_pattern"] = {{"q_proj", 1e300}};
  expect_load_error(p.write(), llama(), {"adapter_config.json", "alpha_pattern", "f32 range"});
}

// PEFT options that change the adapter's computation were ignored.
TEST(AdapterLoad, OptionsThatChangeTheComputationAreRefused) {
  const std::vector<std::pair<std::string, nlohmann::json>> cases = {
      {"lora_bias", true},
      {"use_qalora", true},
      {"alora_invocation_tokens", {1, 2}},
      {"target_parameters", {"mlp.experts.down_proj"}},
      {"trainable_token_indices", {5, 7}},
  };
  for (const auto& [key, value] : cases) {
    AdapterCopy a;
    a.config[key] = value;
    expect_load_error(a.write(), llama(), {"adapter_config.json", key, "not supported"});
  }
}

// A pattern map of another type was ignored: every module got r and lora_alpha.
TEST(AdapterLoad, PatternsOfTheWrongTypeAreRefused) {
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    AdapterCopy a;
    a.config[key] = "q_proj";
    expect_load_error(a.write(), llama(), {"adapter_config.json", key, "object"});
  }
}

// A NaN or inf in an adapter's tensor made every output it touched NaN, silently.
TEST(AdapterLoad, NonFiniteValuesAreRefusedNamingTheTensor) {
  for (const float bad : {std::nanf(""), std::numeric_limits<float>::infinity()}) {
    AdapterCopy a;
    const std::string file = a.dir.file("adapter_model.safetensors");
    std::vector<std::pair<std::string, Tensor>> tensors;
    {
      auto f = io::SafetensorsFile::open(file);
      for (const auto& info : f.tensors()) tensors.emplace_back(info.name, f.get(info.name).clone());
    }
    const std::string name = tensors[3].first;
    Tensor t = tensors[3].second.to(DType::F32).clone();
    t.f32()[t.numel() / 2] = bad;
    tensors[3].second = t.to(tensors[3].second.dtype());
    io::write_safetensors(file, tensors);
    expect_load_error(a.write(), llama(), {name, std::isnan(bad) ? "NaN" : "inf"});
  }
}

TEST(AdapterLoad, AnAdapterForAnotherModelIsNamedAsSuch) {
  const model::Model other = model::Model::load(test::model_fixture("qwen2"));
  AdapterCopy a;
  expect_load_error(a.write(), other, {"adapter_model.safetensors", "another base model"});
}

}  // namespace
