// PEFT's modules_to_save: an adapter's whole trained copies of the output layer (on a tied Qwen2,
// where the copy unties the pair) and of both embedding layers (Llama) are used instead of the
// model's, as PEFT's load does; merged, the model is written untied and scores the same; names and
// tensors that lowrank cannot apply as PEFT would are errors; the server refuses such an adapter.
#include <gtest/gtest.h>

#include <filesystem>

#include "cli/cli_test_helpers.h"
#include "io/io_test_helpers.h"
#include "lora/adapter_copy.h"
#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/lora/adapter.h"
#include "lowrank/lora/adapter_set.h"
#include "lowrank/lora/mixable_adapter.h"
#include "lowrank/serve/adapter_registry.h"
#include "lowrank/train/evaluate.h"
#include "lowrank/train/sequences.h"
#include "same_values.h"
#include "test_paths.h"

using namespace lowrank;
namespace fs = std::filesystem;

namespace {

struct Case {
  std::string adapter, base;
  double peft_eval;
};

Case fixture_case(const std::string& name) {
  const std::string dir = test::fixture("lora/" + name);
  const auto expected = io::read_json(dir + "/expected.json");
  return {dir + "/adapter", test::model_fixture(expected["base"].get<std::string>()),
          expected["eval_loss"].get<double>()};
}

double eval_loss(model::Model& m, const std::string& base, model::ProjectionHook* hook) {
  return train::evaluate(m, train::read_token_sequences(base + "/eval.jsonl", m.config().vocab_size), hook).loss;
}


class ModulesToSave : public ::testing::TestWithParam<const char*> {};

TEST_P(ModulesToSave, EvalLossEqualsPeftsAndTheMergedModelScoresTheSame) {
  const Case c = fixture_case(GetParam());
  model::Model m = model::Model::load(c.base);
  lora::AdapterSet set({c.adapter}, m);
  ASSERT_FALSE(set.adapters().front()->saved_modules.empty());
  EXPECT_NEAR(eval_loss(m, c.base, set.hook()), c.peft_eval, 1e-5 * c.peft_eval);

  io::testing::ScratchDir out;
  const auto r = test::run_cli("merge --model " + c.base + " --adapter " + c.adapter + " --out " + out.path() +
                               "/merged --dtype f32");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_FALSE(io::read_json(out.path() + "/merged/config.json")["tie_word_embeddings"].get<bool>());
  model::Model merged = model::Model::load(out.path() + "/merged");
  EXPECT_NE(merged.weights().lm_head_name, merged.weights().embed_name);
  EXPECT_NEAR(eval_loss(merged, c.base, nullptr), c.peft_eval, 1e-5 * c.peft_eval);
}

INSTANTIATE_TEST_SUITE_P(Peft, ModulesToSave, ::testing::Values("qwen2_save_lm_head", "llama_save_embed_lm_head"));

TEST(ModulesToSaveTied, TheLmHeadCopyUntiesItAndTheEmbeddingKeepsTheBase) {
  const Case c = fixture_case("qwen2_save_lm_head");
  model::Model m = model::Model::load(c.base);
  ASSERT_EQ(m.weights().lm_head.raw(), m.weights().embed.raw());  // the fixture is tied
  const Tensor base_embed = m.weights().embed.clone();
  lora::AdapterSet set({c.adapter}, m);
  const lora::SavedModule& saved = set.adapters().front()->saved_modules.front();
  EXPECT_EQ(saved.module, "lm_head");
  EXPECT_NE(m.weights().lm_head.raw(), m.weights().embed.raw());
  EXPECT_FALSE(m.config().tie_word_embeddings);
  EXPECT_TRUE(test::same_values(m.weights().embed, base_embed));
  EXPECT_TRUE(test::same_values(m.weights().lm_head, saved.value));
  EXPECT_FALSE(test::same_values(m.weights().lm_head, base_embed));
  // Not a batch member: it would change the base model for every other request.
  EXPECT_FALSE(lora::is_mixable(*set.adapters().front(), static_cast<int>(m.config().num_layers)));
}

const model::Model& qwen2() {
  static const model::Model m = model::Model::load(test::model_fixture("qwen2"));
  return m;
}

// A copy of the qwen2_save_lm_head adapter that a test changes.
struct AdapterCopy : test::AdapterCopy {
  AdapterCopy() : test::AdapterCopy("qwen2_save_lm_head") {}
};

void expect_load_error(const std::string& dir, const std::vector<std::string>& fragments) {
  test::expect_load_error(dir, qwen2(), fragments);
}

TEST(ModulesToSaveErrors, ACopyTheConfigDoesNotNameIsRefused) {
  AdapterCopy a;
  a.config["modules_to_save"] = nullptr;
  expect_load_error(a.write(), {"base_model.model.lm_head.weight", "modules_to_save does not name"});
}

TEST(ModulesToSaveErrors, NamesOtherThanTheEmbeddingLayersAreRefused) {
  AdapterCopy a;
  a.config["modules_to_save"] = {"lm_head", "q_proj"};
  expect_load_error(a.write(), {"modules_to_save \"q_proj\" selects model.layers.0.self_attn.q_proj"});
  a.config["modules_to_save"] = {"lm_head", "norm"};  // PEFT would copy every norm: lowrank holds no such copy
  expect_load_error(a.write(), {"modules_to_save \"norm\" selects neither", "model.embed_tokens", "lm_head"});
  a.config["modules_to_save"] = "lm_head";  // one name, not a list: taken as PEFT's list of one
  EXPECT_NO_THROW((void)lora::Adapter::load(a.write(), qwen2()));
  a.config["modules_to_save"] = {"lm_head", 3};
  expect_load_error(a.write(), {"modules_to_save must be a list of module names"});
}

TEST(ModulesToSaveErrors, ACopyOfAnotherShapeIsRefused) {
  AdapterCopy a;
  std::vector<std::pair<std::string, Tensor>> tensors;
  {
    const auto file = io::SafetensorsFile::open(a.dir.file("adapter_model.safetensors"));
    for (const auto& info : file.tensors())
      tensors.emplace_back(info.name, info.name == "base_model.model.lm_head.weight" ? Tensor::zeros({3, 4})
                                                                                   : file.get(info.name).clone());
  }
  io::write_safetensors(a.dir.file("adapter_model.safetensors"), tensors, {});
  expect_load_error(a.write(), {"has shape [3, 4]", "lm_head is [320, 96]"});
}

TEST(ModulesToSaveServe, TheServerRefusesTheAdapter) {
  const Case c = fixture_case("qwen2_save_lm_head");
  const model::Model m = model::Model::load(c.base);
  serve::AdapterRegistry registry(m, "", false);
  try {
    registry.load("a", c.adapter);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("replaces lm_head (modules_to_save)"), std::string::npos) << e.what();
  }
  EXPECT_EQ(registry.find("a"), nullptr);
}

}  // namespace
