// Bad model folders: each gives an Error that names the file and the tensor or key.
#include <gtest/gtest.h>

#include <filesystem>
#include <limits>
#include <tuple>

#include "io/io_test_helpers.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/model/model.h"
#include "test_paths.h"

using namespace lowrank;
namespace fs = std::filesystem;

namespace {

// A copy of a fixture model folder whose config.json and tensors a test may change.
struct ModelCopy {
  io::testing::ScratchDir dir;
  nlohmann::json config;
  std::vector<std::pair<std::string, Tensor>> tensors;

  explicit ModelCopy(const std::string& fixture) {
    const std::string src = test::model_fixture(fixture);
    config = io::read_json(src + "/config.json");
    auto file = io::SafetensorsFile::open(src + "/model.safetensors");
    for (const auto& info : file.tensors()) tensors.emplace_back(info.name, file.get(info.name).clone());
  }
  std::string write() {
    io::write_json_atomic(dir.file("config.json"), config);
    io::write_safetensors(dir.file("model.safetensors"), tensors);
    return dir.path();
  }
  void erase(const std::string& name) {
    std::erase_if(tensors, [&](const auto& p) { return p.first == name; });
  }
};

void expect_load_error(const std::string& dir, const std::vector<std::string>& fragments) {
  try {
    model::Model::load(dir);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    for (const auto& f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
  }
}

TEST(ModelLoad, MissingTensorIsNamed) {
  ModelCopy m("llama");
  m.erase("model.layers.1.mlp.up_proj.weight");
  expect_load_error(m.write(), {"model.layers.1.mlp.up_proj.weight", "missing", "[96, 64]"});
}

TEST(ModelLoad, WrongShapeNamesBothShapes) {
  ModelCopy m("llama");
  for (auto& [name, t] : m.tensors)
    if (name == "model.layers.0.self_attn.k_proj.weight") t = Tensor::zeros({16, 64});
  expect_load_error(m.write(), {"model.safetensors", "model.layers.0.self_attn.k_proj.weight", "[16, 64]", "[32, 64]"});
}

TEST(ModelLoad, MissingConfigKeyIsNamed) {
  ModelCopy m("llama");
  m.config.erase("num_hidden_layers");
  expect_load_error(m.write(), {"config.json", "num_hidden_layers"});
}

TEST(ModelLoad, HeadsMustDivide) {
  ModelCopy m("llama");
  m.config["num_key_value_heads"] = 3;
  expect_load_error(m.write(), {"config.json", "num_attention_heads (4)", "num_key_value_heads (3)"});
  ModelCopy g("gpt2");
  g.config["n_head"] = 5;
  expect_load_error(g.write(), {"config.json", "n_embd (64)", "n_head (5)"});
}

TEST(ModelLoad, NegativeSizesAreRejected) {
  ModelCopy m("llama");
  m.config["hidden_size"] = -64;
  expect_load_error(m.write(), {"config.json", "hidden_size", "positive"});
  ModelCopy n("llama");
  n.config["vocab_size"] = "320";
  expect_load_error(n.write(), {"config.json", "vocab_size", "integer"});
}

TEST(ModelLoad, UnknownArchitectureListsSupported) {
  ModelCopy m("llama");
  m.config["architectures"] = {"BertForMaskedLM"};
  expect_load_error(m.write(), {"BertForMaskedLM", "LlamaForCausalLM", "GPT2LMHeadModel", "Qwen3ForCausalLM"});
}

TEST(ModelLoad, UnsupportedRopeTypeIsNamed) {
  ModelCopy m("llama");
  m.config["rope_parameters"]["rope_type"] = "dynamic";
  expect_load_error(m.write(), {"config.json", "dynamic"});
}

// A RoPE base or band factors that would make every rotation NaN or infinite, or a norm epsilon
// that makes rows NaN, are refused, not run.
TEST(ModelLoad, NumbersOutsideTheirDomainAreRejected) {
  for (const double theta : {-1.0, 0.0}) {
    ModelCopy m("llama");
    m.config["rope_parameters"]["rope_theta"] = theta;
    expect_load_error(m.write(), {"config.json", "rope_theta", "positive"});
  }
  ModelCopy e("llama");
  e.config["rms_norm_eps"] = -1e-6;
  expect_load_error(e.write(), {"config.json", "rms_norm_eps", ">= 0"});
  ModelCopy l("llama3_rope");
  l.config["rope_parameters"]["high_freq_factor"] = 1.0;  // = low_freq_factor
  expect_load_error(l.write(), {"config.json", "low_freq_factor", "high_freq_factor"});
}

TEST(ModelLoad, NoConfigJson) {
  io::testing::ScratchDir d;
  expect_load_error(d.path(), {d.path(), "config.json"});
}

// transformers 4.x wrote rope_theta / rope_scaling / torch_dtype at the top level: same model.
TEST(ModelLoad, Transformers4StyleConfigGivesSameLogits) {
  ModelCopy m("llama3_rope");
  auto rope = m.config["rope_parameters"];
  m.config.erase("rope_parameters");
  m.config.erase("dtype");
  m.config["torch_dtype"] = "float32";
  m.config["rope_theta"] = rope["rope_theta"];
  rope.erase("rope_theta");
  m.config["rope_scaling"] = rope;
  model::Model v4 = model::Model::load(m.write());
  model::Model v5 = model::Model::load(test::model_fixture("llama3_rope"));
  EXPECT_EQ(v4.config().rope.type, "llama3");
  model::TokenBatch b{{1, 5, 9, 200, 17, 3, 44, 45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57,
                       58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72, 73, 74, 75, 76, 77},
                      1, 40};
  Tensor a = v4.logits(b), c = v5.logits(b);
  for (int64_t i = 0; i < a.numel(); ++i) ASSERT_EQ(a.f32()[i], c.f32()[i]);
}

TEST(ModelLoad, TokenOutsideVocabulary) {
  model::Model m = model::Model::load(test::model_fixture("llama"));
  model::TokenBatch b{{1, 2, 320}, 1, 3};
  EXPECT_THROW(m.logits(b), Error);
}

}  // namespace

namespace {

// The logits of a rewritten copy of a fixture equal the fixture's own, bit for bit.
void expect_same_logits(const std::string& dir, const std::string& fixture) {
  model::Model a = model::Model::load(dir);
  model::Model b = model::Model::load(test::model_fixture(fixture));
  std::vector<int32_t> ids;
  for (int32_t i = 0; i < 40; ++i) ids.push_back((i * 37 + 5) % 300);
  model::TokenBatch batch{ids, 1, 40};
  Tensor x = a.logits(batch), y = b.logits(batch);
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(x.f32()[i], y.f32()[i]) << fixture << " logit " << i;
}

// Gemma 3 in transformers 4.x: rope_theta (full attention), rope_local_base_freq (sliding layers),
// sliding_window_pattern instead of layer_types.
TEST(ModelLoad, Gemma3Transformers4StyleConfigGivesSameLogits) {
  ModelCopy m("gemma3");
  const auto rope = m.config["rope_parameters"];
  m.config.erase("rope_parameters");
  m.config.erase("layer_types");
  m.config.erase("_sliding_window_pattern");
  m.config["sliding_window_pattern"] = 2;  // layers 0 and 2 slide, as the fixture's layer_types say
  m.config["rope_theta"] = rope["full_attention"]["rope_theta"];
  m.config["rope_local_base_freq"] = rope["sliding_attention"]["rope_theta"];
  const std::string dir = m.write();
  auto c = model::ModelConfig::load(dir);
  EXPECT_EQ(c.sliding_window, (std::vector<int64_t>{8, 0, 8}));
  ASSERT_TRUE(c.sliding_rope.has_value());
  EXPECT_NE(c.rope_of_layer(0).theta, c.rope_of_layer(1).theta);
  expect_same_logits(dir, "gemma3");
}

// Gemma 2 in 4.x: no layer_types (every other layer slides, from the first), rope_theta on top.
TEST(ModelLoad, Gemma2Transformers4StyleConfigGivesSameLogits) {
  ModelCopy m("gemma2");
  m.config["rope_theta"] = m.config["rope_parameters"]["rope_theta"];
  m.config.erase("rope_parameters");
  m.config.erase("layer_types");
  expect_same_logits(m.write(), "gemma2");
}

// Phi-3 in 4.x: rope_scaling {"type": "su"} with the factors, the rest at the top level.
TEST(ModelLoad, Phi3LongRopeTransformers4StyleConfigGivesSameLogits) {
  ModelCopy m("phi3_longrope");
  const auto rope = m.config["rope_parameters"];
  m.config.erase("rope_parameters");
  m.config["rope_theta"] = rope["rope_theta"];
  m.config["rope_scaling"] = {{"type", "su"}, {"short_factor", rope["short_factor"]},
                              {"long_factor", rope["long_factor"]}};
  expect_same_logits(m.write(), "phi3_longrope");
}

TEST(ModelLoad, FamilyOptionsOutsideWhatIsSupportedAreNamed) {
  {
    ModelCopy m("llama");
    m.config["partial_rotary_factor"] = 0.5;
    expect_load_error(m.write(), {"config.json", "partial_rotary_factor", "LlamaForCausalLM"});
  }
  {
    ModelCopy m("phi3_longrope");
    m.config["rope_parameters"]["long_factor"] = {1.0, 2.0};
    expect_load_error(m.write(), {"config.json", "long_factor", "4 entries"});
  }
  {
    ModelCopy m("gemma3");
    m.config["use_bidirectional_attention"] = true;
    expect_load_error(m.write(), {"config.json", "use_bidirectional_attention"});
  }
  {
    ModelCopy m("gemma2");
    m.config["layer_types"][1] = "chunked_attention";
    expect_load_error(m.write(), {"config.json", "chunked_attention"});
  }
  {
    ModelCopy m("gemma2");
    m.config["attn_logit_softcapping"] = -1.0;
    expect_load_error(m.write(), {"config.json", "attn_logit_softcapping"});
  }
}

// Sizes that would size an allocation (the layer list, RoPE tables over every position) or
// overflow a product are refused by the config, before anything is allocated; a context of 0
// positions made eval loop forever.
TEST(ModelLoad, ZeroOrHugeSizesAreRefusedBeforeAllocating) {
  const std::vector<std::tuple<std::string, nlohmann::json, std::string>> cases = {
      {"num_hidden_layers", int64_t{1} << 50, "more than lowrank supports"},
      {"max_position_embeddings", 0, "must be positive"},
      {"max_position_embeddings", -5, "must be positive"},
      {"max_position_embeddings", int64_t{1} << 50, "more than lowrank supports"},
      {"head_dim", int64_t{1} << 40, "more than lowrank supports"},
      {"vocab_size", int64_t{1} << 40, "more than lowrank supports"},
      {"hidden_size", std::numeric_limits<uint64_t>::max(), "too large"},
  };
  for (const auto& [key, value, fragment] : cases) {
    ModelCopy m("llama");
    m.config[key] = value;
    expect_load_error(m.write(), {"config.json", key, fragment});
  }
  ModelCopy g("gpt2");
  g.config["n_layer"] = int64_t{1} << 40;
  expect_load_error(g.write(), {"config.json", "n_layer", "more than lowrank supports"});
}

// A NaN or inf in a frozen weight made every logit it touched NaN, silently: refused at load,
// naming the tensor, whatever its stored dtype (f32, bf16, f16) and wherever it sits; an f32
// beyond bf16's range is inf once converted for a bf16 model.
TEST(ModelLoad, NonFiniteWeightsAreNamed) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const std::vector<std::tuple<std::string, float, DType, std::string>> cases = {
      {"model.layers.1.mlp.down_proj.weight", nan, DType::F32, "holds NaN (element 37)"},
      {"model.norm.weight", -inf, DType::F32, "holds inf (element 37)"},
      {"model.embed_tokens.weight", inf, DType::BF16, "holds inf"},
      {"model.layers.0.self_attn.q_proj.weight", nan, DType::F16, "holds NaN"},
  };
  for (const auto& [name, value, dtype, fragment] : cases) {
    SCOPED_TRACE(name);
    ModelCopy m("llama");
    for (auto& [n, t] : m.tensors)
      if (n == name) {
        Tensor f = t.to(DType::F32).clone();
        f.f32()[37] = value;
        t = f.to(dtype);
      }
    expect_load_error(m.write(), {"model.safetensors", name, fragment});
  }
  // Finite in the file, inf in the model's dtype.
  ModelCopy big("llama");
  for (auto& [n, t] : big.tensors)
    if (n == "model.layers.0.mlp.up_proj.weight") {
      t = t.to(DType::F32).clone();
      t.f32()[5] = 3.4e38f;  // above bf16's largest finite value, 3.39e38
    }
  const std::string dir = big.write();
  EXPECT_NO_THROW(model::Model::load(dir));  // f32 holds it
  try {
    model::Model::load(dir, Device::cpu(), DType::BF16);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("holds inf as BF16 (element 5)"), std::string::npos) << e.what();
  }
}

// RoPE parameters in range one by one but giving infinite or NaN cos/sin tables: every logit was
// NaN and eval printed a null loss with exit code 0.
TEST(ModelLoad, RopeParametersGivingNonFiniteRotationsAreRefused) {
  const std::vector<nlohmann::json> ropes = {
      {{"rope_type", "linear"}, {"factor", 1e-320}, {"rope_theta", 10000.0}},
      {{"rope_type", "default"}, {"rope_theta", 1e-300}},
      {{"rope_type", "yarn"}, {"factor", 4.0}, {"rope_theta", 10000.0}, {"beta_fast", 0}, {"beta_slow", 0}},
      {{"rope_type", "yarn"}, {"factor", 4.0}, {"rope_theta", 10000.0}, {"attention_factor", 1e300}},
  };
  for (const auto& rope : ropes) {
    ModelCopy m("llama");
    m.config["rope_parameters"] = rope;
    expect_load_error(m.write(), {"config.json", "RoPE parameters", "infinite or NaN"});
  }
  {
    ModelCopy m("phi3_longrope");
    m.config["rope_parameters"]["short_factor"] = {0.0, 0.0, 0.0, 0.0};
    expect_load_error(m.write(), {"config.json", "longrope", "infinite or NaN"});
  }
  {
    ModelCopy m("phi3_longrope");  // ln(original) = 0 divides the attention scale
    m.config["rope_parameters"]["original_max_position_embeddings"] = 1;
    expect_load_error(m.write(), {"config.json", "longrope", "infinite or NaN"});
  }
}

// Values of the wrong type were read as their default: a string rope_scaling as no scaling, a
// string sliding_window as full attention.
TEST(ModelLoad, WrongTypesAreNamedNotDefaulted) {
  {
    ModelCopy m("llama");
    m.config.erase("rope_parameters");
    m.config["rope_scaling"] = "linear";
    expect_load_error(m.write(), {"config.json", "rope_scaling", "object"});
  }
  {
    ModelCopy m("llama");
    m.config["rope_parameters"]["rope_type"] = 5;
    expect_load_error(m.write(), {"config.json", "rope_type", "string"});
  }
  {
    ModelCopy m("mistral");
    m.config["sliding_window"] = "16";
    expect_load_error(m.write(), {"config.json", "sliding_window", "integer"});
  }
  {
    ModelCopy m("llama");
    m.config["hidden_act"] = 5;
    expect_load_error(m.write(), {"config.json", "hidden_act", "string"});
  }
}

}  // namespace
