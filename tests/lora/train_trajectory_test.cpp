// Ten steps of LoRA training (AdamW, warmup + cosine, clipping) equal to PEFT + torch.optim.AdamW:
// the reference trajectories of tests/reference/make_lora_fixtures.py (llama_train10,
// llama_dora_train10 with DoRA's magnitudes trained too, and both with LoRA+: PEFT's
// create_loraplus_optimizer, B and the magnitudes at 8 x lr).
#include <gtest/gtest.h>

#include <cmath>

#include "lowrank/io/files.h"
#include "lowrank/io/safetensors.h"
#include "lowrank/lora/lora_hook.h"
#include "lowrank/lora/lora_variant.h"
#include "lowrank/train/loraplus.h"
#include "lowrank/train/schedule.h"
#include "lowrank/train/step.h"
#include "test_paths.h"

using namespace lowrank;

class TrainTrajectory : public ::testing::TestWithParam<std::string> {};

TEST_P(TrainTrajectory, TenAdamWStepsMatchPeft) {
  const std::string dir = test::fixture("lora/" + GetParam());
  auto expected = io::read_json(dir + "/expected.json");
  const auto& hp = expected["hparams"];
  model::Model m = model::Model::load(test::model_fixture("llama"));
  lora::Adapter adapter = lora::Adapter::load(dir + "/initial", m);
  adapter.allocate_grads();
  lora::LoraHook hook({{&adapter, 1.0}});
  hook.set_training(true);
  auto params = train::lora_params(adapter);
  if (hp.contains("loraplus_lr_ratio"))  // PEFT's create_loraplus_optimizer groups
    train::apply_loraplus(params, {hp["loraplus_lr_ratio"].get<double>(), std::nullopt}, hp["lr"].get<double>());
  train::AdamW opt({hp["lr"].get<double>(), hp["betas"][0].get<double>(), hp["betas"][1].get<double>(),
                    hp["eps"].get<double>(), hp["weight_decay"].get<double>()});
  train::StepContext ctx{&m, &hook, nullptr, &params, &opt, hp["max_grad_norm"].get<double>()};
  train::ScheduleConfig sched{train::parse_schedule(hp["schedule"].get<std::string>()), hp["lr"].get<double>(),
                              hp["warmup"].get<int64_t>(), hp["steps"].get<int64_t>()};
  auto batches = io::read_json(dir + "/batches.json");
  ASSERT_EQ(batches.size(), expected["log"].size());
  for (size_t step = 0; step < batches.size(); ++step) {
    auto ids = batches[step]["input_ids"].get<std::vector<std::vector<int32_t>>>();
    auto labels = batches[step]["labels"].get<std::vector<std::vector<int32_t>>>();
    std::vector<train::Example> examples;
    for (size_t r = 0; r < ids.size(); ++r) examples.push_back({ids[r], labels[r]});
    auto data = train::Dataset::from_examples(examples);
    std::vector<int64_t> all(ids.size());
    for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int64_t>(i);
    const double lr = train::lr_at(sched, static_cast<int64_t>(step));
    const auto& want = expected["log"][step];
    EXPECT_NEAR(lr, want["lr"].get<double>(), 1e-12) << "step " << step + 1;
    auto r = train::train_step(ctx, {train::make_micro_batch(data, all)}, lr);
    ASSERT_FALSE(r.skipped);
    EXPECT_NEAR(r.loss, want["loss"].get<double>(), 1e-4 * want["loss"].get<double>()) << "step " << step + 1;
    EXPECT_NEAR(r.grad_norm, want["grad_norm"].get<double>(), 1e-4 * want["grad_norm"].get<double>())
        << "step " << step + 1;
  }
  auto final_weights = io::SafetensorsFile::open(dir + "/final.safetensors");
  size_t compared = 0;
  for (auto& p : adapter.pairs)
    for (const auto& t : lora::lora_variant(p.kind).tensors(p)) {
      std::string key = lora::peft_key(p.module, t.key);
      if (!final_weights.contains(key)) key += ".weight";  // "...lora_magnitude_vector.weight"
      Tensor want = final_weights.get(key);
      const Tensor& got = *t.value;
      float max_ref = 0, max_err = 0;
      for (int64_t i = 0; i < want.numel(); ++i) {
        max_ref = std::max(max_ref, std::fabs(want.f32()[i]));
        max_err = std::max(max_err, std::fabs(want.f32()[i] - got.f32()[i]));
      }
      EXPECT_LE(max_err, 1e-4f * max_ref) << p.module << " " << t.key;
      ++compared;
    }
  EXPECT_EQ(compared, final_weights.tensors().size()) << "every trained tensor must have been compared";
}

INSTANTIATE_TEST_SUITE_P(Peft, TrainTrajectory,
                         ::testing::Values("llama_train10", "llama_dora_train10", "llama_loraplus_train10",
                                           "llama_dora_loraplus_train10"));
