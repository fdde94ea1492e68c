// lowrank gguf: a model (optionally with adapters merged in) or a LoRA adapter as a GGUF file for
// llama.cpp, as its convert_hf_to_gguf.py / convert_lora_to_gguf.py write them.
#include <cstdio>
#include <filesystem>
#include <memory>

#include "command.h"
#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/lora/adapter.h"
#include "lowrank/lora/adapter_set.h"
#include "lowrank/lora/gguf_adapter.h"
#include "lowrank/lora/merge.h"
#include "lowrank/model/gguf_export.h"
#include "lowrank/tokenizer/chat_template.h"
#include "lowrank/train/progress.h"

namespace lowrank::cli {
namespace {

struct GgufOptions {
  std::string model, out, outtype, name, chat_template;
  std::vector<std::string> adapters;
  bool merge = false, vocab_only = false, quiet = false;
};

double megabytes(const std::string& path) {
  return static_cast<double>(std::filesystem::file_size(path)) / 1e6;
}

int run_gguf(const GgufOptions& o) {
  if (o.vocab_only && !o.adapters.empty()) throw error("--vocab-only writes no weights: leave out --adapter");
  if (o.merge && o.adapters.empty()) throw error("--merge needs at least one --adapter");
  const bool adapter_file = !o.adapters.empty() && !o.merge;
  if (adapter_file && o.adapters.size() > 1)
    throw error("one adapter per GGUF LoRA file (llama.cpp takes several --lora files), or --merge to merge them all");
  if (adapter_file && !o.chat_template.empty()) throw error("--chat-template goes with a model file, not with a LoRA file");
  if (!o.outtype.empty()) model::parse_gguf_outtype(o.outtype);  // a bad flag fails before the model loads

  if (o.vocab_only) {
    model::GgufExportOptions eo;
    eo.name = o.name;
    eo.chat_template = tok::resolve_chat_template(o.chat_template, {}, o.model).value_or("");
    const auto s = model::write_gguf_vocab(model::ModelConfig::load(o.model), o.model, o.out, eo);
    std::fprintf(stderr, "wrote %s: %s vocabulary only, tokenizer %s, %.2f MB\n", o.out.c_str(), s.arch.c_str(),
                 s.tokenizer.c_str(), megabytes(o.out));
    return 0;
  }
  // A bf16 checkpoint's projections stay bf16 (their values, half the memory: an 8B model in 16 GB);
  // the ones an adapter is merged into become f32 for the merge.
  model::Model m = model::Model::load(o.model, Device::cpu(), DType::F32, model::Quantization::KeepBf16);
  if (adapter_file) {
    const std::string& dir = o.adapters.front();
    if (!io::is_directory(dir) && dir.find(':') != std::string::npos)
      throw error("--adapter ", dir, ": a LoRA file takes no scale (llama.cpp applies one at run time: llama-cli "
                  "--lora-scaled FILE SCALE); with --merge, DIR:SCALE merges it scaled");
    const lora::Adapter adapter = lora::Adapter::load(dir, m);
    // llama.cpp's converter writes LoRA files in f32 unless asked otherwise: they are small.
    const auto type = o.outtype.empty() ? model::GgufOutType::F32 : model::parse_gguf_outtype(o.outtype);
    std::string name = o.name;
    if (name.empty()) name = std::filesystem::path(dir).lexically_normal().filename().string();
    const auto s = lora::write_gguf_adapter(adapter, m, o.out, type, name);
    std::fprintf(stderr, "wrote %s: LoRA for %s, %lld adapted weights, alpha %g%s, %s, %.2f MB\n", o.out.c_str(),
                 model::gguf_arch_name(m.config()).c_str(), static_cast<long long>(s.pairs), s.alpha,
                 s.folded ? (", " + std::to_string(s.folded) + " scales folded into B").c_str() : "",
                 model::gguf_outtype_name(type).c_str(), megabytes(o.out));
    return 0;
  }

  std::vector<std::string> dirs;
  if (!o.adapters.empty()) {
    lora::AdapterSet set(o.adapters, m);  // also attaches trained biases
    // An embedding or lm_head LoRA of a tied pair: the adapter changes one of them (PEFT computes the
    // other with the base weight), so the file gets both, as llama.cpp's untied output.weight.
    // (`lowrank merge` follows PEFT's merge_and_unload instead, which changes both.)
    for (const auto& a : set.adapters())
      for (const auto& p : a->pairs)
        if ((p.target == Target::Embed || p.target == Target::LmHead) && m.config().tie_word_embeddings) m.untie_lm_head();
    for (size_t i = 0; i < set.adapters().size(); ++i) lora::merge_adapter(m, *set.adapters()[i], set.scales()[i]);
    dirs = set.dirs();
  }
  model::GgufExportOptions eo;
  const DType d = m.config().dtype;
  eo.type = !o.outtype.empty()       ? model::parse_gguf_outtype(o.outtype)
            : d == DType::BF16       ? model::GgufOutType::BF16
            : d == DType::F16        ? model::GgufOutType::F16
                                     : model::GgufOutType::F32;
  eo.name = o.name;
  eo.chat_template = tok::resolve_chat_template(o.chat_template, dirs, o.model).value_or("");
  // A bar of MiB written, for files large enough to watch (a few seconds and up).
  std::unique_ptr<train::ProgressBar> bar;
  eo.progress = [&](int64_t done, int64_t total) {
    if (!bar) {
      train::ProgressOptions popt;
      popt.label = "MiB written";
      popt.quiet = o.quiet || total < (int64_t{256} << 20);
      bar = std::make_unique<train::ProgressBar>(total >> 20, popt);
    }
    bar->update(done >> 20);
  };
  const auto s = model::write_gguf_model(m, o.model, o.out, eo);
  if (bar) bar->finish();
  for (const auto& w : s.warnings) std::fprintf(stderr, "warning: %s\n", w.c_str());
  std::fprintf(stderr, "wrote %s: %s, %lld tensors (%s), tokenizer %s%s, %.2f MB\n", o.out.c_str(), s.arch.c_str(),
               static_cast<long long>(s.tensors), model::gguf_outtype_name(eo.type).c_str(), s.tokenizer.c_str(),
               dirs.empty() ? "" : (", " + std::to_string(dirs.size()) + " adapter(s) merged").c_str(), megabytes(o.out));
  return 0;
}

RegisterCommand reg{{"gguf", "Write a model (adapters merged with --merge) or a LoRA adapter as a GGUF file for llama.cpp",
                     [](CLI::App& app) {
                       auto o = std::make_shared<GgufOptions>();
                       app.add_option("--model", o->model, "Base model folder")->required();
                       app.add_option("--adapter", o->adapters,
                                      "Adapter folder: written as a llama.cpp LoRA file, or merged with --merge "
                                      "(then repeatable, DIR:SCALE)");
                       app.add_flag("--merge", o->merge, "Merge the adapters into the model and write the model");
                       app.add_option("--out", o->out, "Output .gguf file")->required();
                       app.add_option("--outtype", o->outtype,
                                      "f32, f16, bf16 or q8_0 (default: the checkpoint's type; f32 for a LoRA file)");
                       app.add_option("--name", o->name, "general.name (default: the folder's name)");
                       app.add_option("--chat-template", o->chat_template,
                                      "Chat template to store: a built-in name or a Jinja file (default: the model's)");
                       app.add_flag("--vocab-only", o->vocab_only, "Only the keys and the tokenizer, no weights");
                       app.add_flag("--quiet", o->quiet, "No progress bar");
                       return [o] { return run_gguf(*o); };
                     }}};

}  // namespace
}  // namespace lowrank::cli
