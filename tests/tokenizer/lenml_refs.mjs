// Second reference for the tokenizer parity test: ids from @lenml/tokenizers (a port of
// transformers.js tokenizers) for every corpus document, in the refs_*.jsonl format.
//   node lenml_refs.mjs DATA OUT NODE_PREFIX   (NODE_PREFIX: where @lenml/tokenizers is installed)
// scripts/fetch-test-data.sh runs it into tests/data/lenml_refs/.
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
const [data, out, prefix] = process.argv.slice(2);
const { TokenizerLoader } = await import(pathToFileURL(
  path.join(prefix, "node_modules", "@lenml", "tokenizers", "dist", "main.mjs")).href);
const corpus = path.join(data, "corpus");
const docs = fs.readdirSync(corpus).filter(f => f.endsWith(".txt")).sort()
  .map(f => [f.slice(0, -4), fs.readFileSync(path.join(corpus, f), "utf8")]);
function load(name) {
  const d = path.join(data, "tokenizers", name);
  if (name === "gpt2") {
    const vocab = JSON.parse(fs.readFileSync(path.join(d, "vocab.json"), "utf8"));
    const merges = fs.readFileSync(path.join(d, "merges.txt"), "utf8").split("\n")
      .filter(l => l && !l.startsWith("#version"));
    return TokenizerLoader.fromPreTrained({
      tokenizerJSON: {
        version: "1.0", truncation: null, padding: null,
        added_tokens: [{ id: 50256, content: "<|endoftext|>", single_word: false, lstrip: false,
                         rstrip: false, normalized: false, special: true }],
        normalizer: null,
        pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
        post_processor: { type: "ByteLevel", add_prefix_space: true, trim_offsets: false, use_regex: true },
        decoder: { type: "ByteLevel", add_prefix_space: true, trim_offsets: true, use_regex: true },
        model: { type: "BPE", dropout: null, unk_token: null, continuing_subword_prefix: "",
                 end_of_word_suffix: "", fuse_unk: false, vocab, merges },
      },
      tokenizerConfig: { tokenizer_class: "GPT2Tokenizer", bos_token: "<|endoftext|>",
                         eos_token: "<|endoftext|>", unk_token: "<|endoftext|>", add_prefix_space: false },
    });
  }
  return TokenizerLoader.fromPreTrained({
    tokenizerJSON: JSON.parse(fs.readFileSync(path.join(d, "tokenizer.json"), "utf8")),
    tokenizerConfig: JSON.parse(fs.readFileSync(path.join(d, "tokenizer_config.json"), "utf8")),
  });
}
fs.mkdirSync(out, { recursive: true });
for (const name of ["llama3", "qwen3", "llama2", "gpt2"]) {
  const tok = load(name);
  const lines = [JSON.stringify({ tokenizer: name, source: "@lenml/tokenizers" })];
  for (const [doc, text] of docs) {
    const ids = tok.encode(text, { add_special_tokens: false });
    lines.push(JSON.stringify({ doc, ids }));
  }
  fs.writeFileSync(path.join(out, `refs_${name}.jsonl.tmp`), lines.join("\n") + "\n");
  fs.renameSync(path.join(out, `refs_${name}.jsonl.tmp`), path.join(out, `refs_${name}.jsonl`));
  console.error(`${name}: ${docs.length} docs`);
}
