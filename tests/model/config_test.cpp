// Derived values of ModelConfig that the forward pass relies on.
#include <gtest/gtest.h>

#include <cmath>

#include "lowrank/model/config.h"

using namespace lowrank;

namespace {

// Gemma multiplies embeddings by √hidden_size held in the weights' dtype, as transformers does.
TEST(ModelConfig, EmbeddingScaleIsRoundedToTheWeightsDtype) {
  model::ModelConfig c;
  c.hidden_size = 3072;
  EXPECT_EQ(c.embedding_scale(DType::BF16), 1.0f);  // switched off: no scaling at all
  c.scale_embeddings = true;
  EXPECT_EQ(c.embedding_scale(DType::F32), static_cast<float>(std::sqrt(3072.0)));
  EXPECT_EQ(c.embedding_scale(DType::BF16), 55.5f);
}

TEST(ModelConfig, AttentionScaleAndRotaryDims) {
  model::ModelConfig c;
  c.head_dim = 96;
  EXPECT_EQ(c.attention_scale(), static_cast<float>(1.0 / std::sqrt(96.0)));
  EXPECT_EQ(c.rotary_dim(), 96);
  c.query_pre_attn_scalar = 144;
  EXPECT_EQ(c.attention_scale(), static_cast<float>(1.0 / 12.0));
  c.partial_rotary_factor = 0.75;
  EXPECT_EQ(c.rotary_dim(), 72);
}

}  // namespace
