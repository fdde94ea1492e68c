// Runs llama.cpp (node-llama-cpp's prebuilt CPU build, from the npm registry) on a GGUF file that
// lowrank wrote, so that the tests can compare what llama.cpp computes with lowrank's and
// transformers' numbers. Usage:
//
//   node llama_eval.mjs <folder holding node_modules> <request.json>
//
// request: {"model": "m.gguf", "vocab_only": false?, "lora": [{"path": "a.gguf", "scale": 1}]?, "context": 256?,
//           "logits": [[ids...], ...]?,            each sequence's raw logits at every position
//           "greedy": {"prompts": [[ids...]], "max_tokens": N}?,   argmax decoding, one token
//                                                  at a time through llama.cpp's KV cache
//           "tokenize": ["text", ...]?,            ids, special tokens parsed, no BOS added
//           "detokenize": [[ids...], ...]?}
// prints one JSON object with the same keys (logits as [sequence][position][vocab]).
import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

const [root, requestPath] = process.argv.slice(2);
const request = JSON.parse(fs.readFileSync(requestPath, "utf8"));
const entry = path.join(root, "node_modules", "node-llama-cpp", "dist", "index.js");
const { getLlama, LlamaLogLevel } = await import(pathToFileURL(entry).href);

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: request.model, gpuLayers: 0, vocabOnly: !!request.vocab_only });
// f32 K/V (llama.cpp's default is f16) and no flash attention: the numbers are compared to f32 ones.
const contextOptions = {
  contextSize: request.context ?? 256, sequences: 1, batchSize: request.context ?? 256, threads: 2,
  flashAttention: false, experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32",
};
if (request.lora) contextOptions.lora = { adapters: request.lora.map((a) => ({ filePath: a.path, scale: a.scale ?? 1 })) };
const context = request.vocab_only ? null : await model.createContext(contextOptions);

// The logits after each token of `ids`, as dense arrays over the vocabulary.
async function positionLogits(sequence, ids) {
  const input = ids.map((t) => [t, { generateNext: { logits: true } }]);
  const out = await sequence.controlledEvaluate(input);
  return out.map((o) => {
    const dense = new Array(o.next.logits.size).fill(null);
    for (const [token, logit] of o.next.logits) dense[token] = logit;
    return dense;
  });
}

function argmax(logits) {
  let best = 0;
  for (let i = 1; i < logits.length; i++) if (logits[i] > logits[best]) best = i;  // lowest id on ties
  return best;
}

const result = {};
if (request.logits) {
  result.logits = [];
  for (const ids of request.logits) {
    const sequence = context.getSequence();
    result.logits.push(await positionLogits(sequence, ids));
    sequence.dispose();
  }
}
if (request.greedy) {
  result.greedy = [];
  for (const prompt of request.greedy.prompts) {
    const sequence = context.getSequence();
    let logits = (await positionLogits(sequence, prompt)).at(-1);
    const made = [];
    for (let i = 0; i < request.greedy.max_tokens; i++) {
      const next = argmax(logits);
      made.push(next);
      if (i + 1 < request.greedy.max_tokens) logits = (await positionLogits(sequence, [next]))[0];
    }
    result.greedy.push(made);
    sequence.dispose();
  }
}
if (request.tokenize) result.tokenize = request.tokenize.map((text) => Array.from(model.tokenize(text, true)));
if (request.detokenize) result.detokenize = request.detokenize.map((ids) => model.detokenize(ids, true));
process.stdout.write(JSON.stringify(result) + "\n");
if (context) await context.dispose();
await model.dispose();
process.exit(0);
