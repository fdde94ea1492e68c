#pragma once
// A model folder's tokenizer as GGUF metadata (the tokenizer.* keys llama.cpp reads), written as
// llama.cpp's convert_hf_to_gguf.py writes it. Byte-level BPE tokenizers as "gpt2": the tokens as
// tokenizer.json stores them, their types, the merges and the pre-tokenizer's name, which llama.cpp
// needs to split text the same way (recognised from tokenizer.json's pre-tokenizer).
// SentencePiece-style BPE tokenizers (byte fallback) as "llama": tokens, types, the space-prefix
// flag and scores from the merge ranks. Both: the special ids, whether BOS/EOS are added, the chat
// template.
#include <cstdint>
#include <string>

#include "lowrank/io/gguf.h"

namespace lowrank::tok {

// What add_gguf_vocab wrote, for the caller's log.
struct GgufVocabSummary {
  std::string model;  // tokenizer.ggml.model: "gpt2", "llama", or "none" (no tokenizer.json)
  std::string pre;    // tokenizer.ggml.pre
  int64_t tokens = 0;
  int64_t merges = 0;
};

// Sets the tokenizer keys of `model_dir`'s tokenizer on `w`, with `vocab_size` tokens (the model's
// embedding rows: ids the tokenizer lacks become unused "[PAD<id>]" tokens, as the converter
// writes them). Without tokenizer.json: tokenizer.ggml.model "none" (llama.cpp then evaluates
// token ids only). `chat_template`: the template to store (empty: none). Throws Error for a
// tokenizer llama.cpp would split differently (its pre-tokenizer or model kind is unknown here).
GgufVocabSummary add_gguf_vocab(io::GgufWriter& w, const std::string& model_dir, int64_t vocab_size,
                                const std::string& chat_template);

}  // namespace lowrank::tok
