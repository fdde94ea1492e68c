#!/usr/bin/env python3
"""Trains the base model's byte-level BPE tokenizer (Hugging Face `tokenizers`; runs anywhere).

    train_tokenizer.py --corpus DIR --out DIR [--vocab-size 8192]

Reads DIR/train.jsonl ({"text": ...} per line, from prepare_corpus.sh) and writes OUT/tokenizer.json
and OUT/tokenizer_config.json in the Hugging Face format:
  - GPT-2 style byte-level BPE: every byte has a token, so any text round-trips exactly;
    no normalizer, no prefix space; the ByteLevel decoder.
  - special tokens <|begin_of_text|> (id 0, bos; added by the post-processor, as in Llama 3),
    <|end_of_text|> (id 1, eos) and <|pad|> (id 2).
Checks the result (exact round trip on the validation documents, special-token ids) and prints
the compression in bytes per token.
"""
import argparse
import json
import os
import sys
import time

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"


def texts(path):
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            yield json.loads(line)["text"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True, help="folder with train.jsonl and val.jsonl")
    ap.add_argument("--out", required=True)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--model-max-length", type=int, default=1024)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    t0 = time.time()

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=a.vocab_size, min_frequency=2, show_progress=False,
                                  special_tokens=[BOS, EOS, PAD],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts(os.path.join(a.corpus, "train.jsonl")), trainer=trainer)
    bos, eos, pad = tok.token_to_id(BOS), tok.token_to_id(EOS), tok.token_to_id(PAD)
    assert (bos, eos, pad) == (0, 1, 2), (bos, eos, pad)
    tok.post_processor = processors.TemplateProcessing(
        single=BOS + " $A", pair=BOS + " $A " + BOS + ":1 $B:1", special_tokens=[(BOS, bos)])
    tok.save(os.path.join(a.out, "tokenizer.json"))

    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, t in ((bos, BOS), (eos, EOS), (pad, PAD))}
    config = {
        "added_tokens_decoder": added,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": a.model_max_length,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    with open(os.path.join(a.out, "tokenizer_config.json"), "w") as fh:
        json.dump(config, fh, indent=2)
        fh.write("\n")

    # Checks: reload from disk, exact round trip, bos added, compression.
    tok = Tokenizer.from_file(os.path.join(a.out, "tokenizer.json"))
    val = list(texts(os.path.join(a.corpus, "val.jsonl")))
    n_bytes = n_tokens = bad = 0
    for enc, text in zip(tok.encode_batch(val, add_special_tokens=False), val):
        bad += tok.decode(enc.ids, skip_special_tokens=False) != text
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(enc.ids)
    # Reported, not fatal: the pretraining run that follows must not be lost over a check.
    print("tokenizer: round trip on %d val documents: %s" % (len(val), "exact" if not bad else "%d DIFFER" % bad))
    ids = tok.encode("Hello world", add_special_tokens=True).ids
    if ids[0] != bos:
        print("tokenizer: WARNING: bos not added by the post-processor:", ids)
    print("tokenizer: vocab %d, %.2f bytes/token on val (%d tokens), %.1f s -> %s" %
          (tok.get_vocab_size(), n_bytes / max(1, n_tokens), n_tokens, time.time() - t0, a.out), flush=True)
    print("tokenizer: 'Hello world' ->", tok.encode("Hello world").tokens, flush=True)


if __name__ == "__main__":
    sys.exit(main())
