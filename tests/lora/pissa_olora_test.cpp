// PiSSA and OLoRA inits against PEFT (tests/reference/make_lora_fixtures.py, llama_pissa and
// llama_olora). Singular vectors and QR factors are unique only up to signs, so what is compared is
// invariant: s·B·A of the initial adapter, the residual weights the model trains on, and the
// adapter converted for the original base (path_initial_model_for_weight_conversion).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "io/io_test_helpers.h"
#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/lora/adapter.h"
#include "lowrank/lora/adapter_set.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/ops/ops.h"
#include "lowrank/train/evaluate.h"
#include "lowrank/train/sequences.h"
#include "test_paths.h"

using namespace lowrank;

namespace {

// s·B·A [out, in].
Tensor delta(const Tensor& A, const Tensor& B, double s) {
  Tensor d = Tensor::zeros({B.dim(0), A.dim(1)});
  ops::matmul_nn(B, A, d, static_cast<float>(s), 0.0f);
  return d;
}

void expect_close(const Tensor& got, const Tensor& want, const std::string& what, double rel = 1e-4) {
  ASSERT_EQ(got.shape(), want.shape()) << what;
  double max_ref = 0, max_err = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    max_ref = std::max(max_ref, std::fabs(double(want.f32()[i])));
    max_err = std::max(max_err, std::fabs(double(want.f32()[i]) - got.f32()[i]));
  }
  EXPECT_LE(max_err, rel * max_ref) << what << ": max error " << max_err << ", max |value| " << max_ref;
  EXPECT_GT(max_ref, 0.0) << what;
}

lora::LoraConfig fixture_config(lora::InitMode init) {
  lora::LoraConfig c;  // as make_lora_fixtures.py's init_case
  c.r = 4;
  c.alpha = 8;
  c.target_modules = {"q_proj", "v_proj", "down_proj"};
  c.init = init;
  return c;
}

class PissaOlora : public ::testing::TestWithParam<std::string> {};

TEST_P(PissaOlora, InitResidualAndConversionMatchPeft) {
  const std::string dir = test::fixture("lora/llama_" + GetParam());
  const auto expected = io::read_json(dir + "/expected.json");
  const std::string base = test::model_fixture("llama");
  model::Model m = model::Model::load(base);
  Rng rng(0);
  lora::Adapter ours = lora::Adapter::create(m, fixture_config(GetParam() == "pissa" ? lora::InitMode::Pissa
                                                                                        : lora::InitMode::Olora), rng);
  // The initial s·B·A and the residual weights.
  const model::Model original = model::Model::load(base);
  lora::Adapter peft_initial = lora::Adapter::load(dir + "/initial", original);
  auto residual = io::SafetensorsFile::open(dir + "/residual.safetensors");
  ASSERT_EQ(ours.pairs.size(), peft_initial.pairs.size());
  for (size_t i = 0; i < ours.pairs.size(); ++i) {
    const auto& p = ours.pairs[i];
    const auto& q = peft_initial.pairs[i];
    ASSERT_EQ(p.module, q.module);
    expect_close(delta(p.A, p.B, p.scale), delta(q.A, q.B, q.scale), p.module + " s·B·A");
    const model::Linear* l = m.weights().layers[p.layer].projection(p.target);
    expect_close(l->weight, residual.get(p.module + ".weight"), p.module + " residual");
    expect_close(original.weights().layers[p.layer].projection(p.target)->weight,
                 residual.get(p.module + ".weight.original"), p.module + " original");
  }
  auto seqs = train::read_token_sequences(base + "/eval.jsonl", m.config().vocab_size);
  // PEFT's trained adapter on our residual model: the eval loss PEFT had.
  lora::Adapter trained = lora::Adapter::load(dir + "/trained", m);
  lora::LoraHook on_residual({{&trained, 1.0}});
  const double want_trained = expected["eval_loss_trained"].get<double>();
  EXPECT_NEAR(train::evaluate(m, seqs, &on_residual).loss, want_trained, 1e-5 * want_trained);
  // Our conversion of the trained pairs (with our own initial pairs) applies to the original base.
  for (size_t i = 0; i < ours.pairs.size(); ++i) {
    ours.pairs[i].A = trained.pairs[i].A;
    ours.pairs[i].B = trained.pairs[i].B;
  }
  io::testing::ScratchDir d;
  ours.save(d.file("converted"));
  auto cfg = io::read_json(d.file("converted/adapter_config.json"));
  EXPECT_EQ(cfg["r"], 8);
  EXPECT_EQ(cfg["lora_alpha"], 16.0);
  EXPECT_EQ(cfg["init_lora_weights"], true);
  model::Model fresh = model::Model::load(base);
  lora::Adapter converted = lora::Adapter::load(d.file("converted"), fresh);
  lora::Adapter peft_converted = lora::Adapter::load(dir + "/converted", fresh);
  for (size_t i = 0; i < converted.pairs.size(); ++i) {
    const auto& p = converted.pairs[i];
    const auto& q = peft_converted.pairs[i];
    expect_close(delta(p.A, p.B, p.scale), delta(q.A, q.B, q.scale), p.module + " converted s·B·A", 1e-3);
  }
  lora::LoraHook on_original({{&converted, 1.0}});
  const double want_converted = expected["eval_loss_converted"].get<double>();
  EXPECT_NEAR(train::evaluate(fresh, seqs, &on_original).loss, want_converted, 1e-5 * want_converted);
}

TEST_P(PissaOlora, UnconvertedAdapterLoadsOnTheResidualAsInPeft) {
  // An adapter saved without conversion, its config still saying init_lora_weights "pissa" /
  // "olora": PEFT's load re-runs the init on the base, so the adapter applies to the residual.
  const std::string dir = test::fixture("lora/llama_" + GetParam());
  io::testing::ScratchDir d;
  std::filesystem::create_directories(d.file("a"));
  std::filesystem::copy_file(dir + "/trained/adapter_model.safetensors", d.file("a/adapter_model.safetensors"));
  auto cfg = io::read_json(dir + "/trained/adapter_config.json");
  cfg["init_lora_weights"] = GetParam();
  d.write("a/adapter_config.json", cfg.dump());
  const std::string base = test::model_fixture("llama");
  model::Model m = model::Model::load(base);
  lora::AdapterSet set({d.file("a")}, m);
  auto seqs = train::read_token_sequences(base + "/eval.jsonl", m.config().vocab_size);
  const double want = io::read_json(dir + "/expected.json")["eval_loss_trained"].get<double>();
  EXPECT_NEAR(train::evaluate(m, seqs, set.hook()).loss, want, 1e-5 * want);
  if (GetParam() == "pissa") {  // a randomized SVD's residual cannot be reproduced: refused
    cfg["init_lora_weights"] = "pissa_niter_4";
    d.write("a/adapter_config.json", cfg.dump());
    model::Model fresh = model::Model::load(base);
    try {
      lora::AdapterSet refused({d.file("a")}, fresh);
      ADD_FAILURE() << "pissa_niter_4 adapter loaded";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("pissa_niter_4"), std::string::npos) << e.what();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Peft, PissaOlora, ::testing::Values("pissa", "olora"));

TEST(PissaOlora, RandomizedSvdKeepsTheInvariants) {
  // pissa_niter_N draws a random subspace: only what holds for any draw is checked. The residual
  // plus s·B·A is the original weight; B = U_r·sqrt(S_r/s) and A = sqrt(S_r/s)·V_rᵀ have orthogonal
  // columns / rows; the captured part is no larger than the exact SVD's (Eckart–Young) and close to
  // it after a few power iterations.
  const std::string base = test::model_fixture("llama");
  model::Model exact_model = model::Model::load(base), rand_model = model::Model::load(base);
  const model::Model original = model::Model::load(base);
  Rng rng_a(1), rng_b(2);
  lora::LoraConfig c = fixture_config(lora::InitMode::Pissa);
  lora::Adapter exact = lora::Adapter::create(exact_model, c, rng_a);
  c.pissa_niter = 4;
  lora::Adapter randomized = lora::Adapter::create(rand_model, c, rng_b);
  for (size_t i = 0; i < randomized.pairs.size(); ++i) {
    const auto& p = randomized.pairs[i];
    Tensor w = rand_model.weights().layers[p.layer].projection(p.target)->weight.clone();
    ops::add_(w, delta(p.A, p.B, p.scale));
    expect_close(w, original.weights().layers[p.layer].projection(p.target)->weight, p.module + " W0", 1e-5);
    Tensor btb = Tensor::zeros({p.r, p.r}), aat = Tensor::zeros({p.r, p.r});
    ops::matmul_tn(p.B, p.B, btb);
    ops::matmul_nt(p.A, p.A, aat);
    for (int64_t a = 0; a < p.r; ++a)
      for (int64_t b = 0; b < p.r; ++b)
        if (a != b) {
          EXPECT_LT(std::fabs(btb.f32()[a * p.r + b]), 1e-4 * btb.f32()[a * p.r + a]) << p.module;
          EXPECT_LT(std::fabs(aat.f32()[a * p.r + b]), 1e-4 * aat.f32()[a * p.r + a]) << p.module;
        }
    auto frob = [](const Tensor& t) {
      double s = 0;
      for (int64_t k = 0; k < t.numel(); ++k) s += double(t.f32()[k]) * t.f32()[k];
      return std::sqrt(s);
    };
    const auto& q = exact.pairs[i];
    const double got = frob(delta(p.A, p.B, p.scale)), best = frob(delta(q.A, q.B, q.scale));
    EXPECT_LE(got, best * (1 + 1e-5)) << p.module;
    EXPECT_GE(got, 0.9 * best) << p.module;
  }
}

}  // namespace
