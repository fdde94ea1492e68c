// lowrank merge: fold adapters into the base weights and write a complete model folder.
#include <cstdio>

#include "command.h"
#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/lora/adapter_set.h"
#include "lowrank/lora/merge.h"
#include "lowrank/model/export.h"

namespace lowrank::cli {
namespace {

struct MergeOptions {
  std::string model, out, dtype;
  std::vector<std::string> adapters;
};

int run_merge(const MergeOptions& o) {
  // A bf16 checkpoint's projections stay bf16 until an adapter is merged into them (then f32).
  model::Model m = model::Model::load(o.model, Device::cpu(), DType::F32, model::Quantization::KeepBf16);
  lora::AdapterSet set(o.adapters, m);  // also attaches trained biases
  for (size_t i = 0; i < set.adapters().size(); ++i) lora::merge_adapter(m, *set.adapters()[i], set.scales()[i]);
  model::ExportOptions eo;
  eo.dtype = m.config().dtype;
  if (!o.dtype.empty()) {
    auto d = parse_user_dtype(o.dtype);
    if (!d) throw error("--dtype must be bf16, f16 or f32, got '", o.dtype, "'");
    eo.dtype = *d;
  }
  model::write_model_folder(m, o.model, o.out, eo);
  // A chat template trained with the adapter (train --chat-template) goes with the merged model.
  const std::string tmpl = set.dirs().empty() ? "" : set.dirs().front() + "/chat_template.jinja";
  if (!tmpl.empty() && io::file_exists(tmpl))
    io::write_file_atomic(o.out + "/chat_template.jinja", io::read_file(tmpl));
  std::fprintf(stderr, "merged %zu adapter(s) into %s (%s)\n", set.adapters().size(), o.out.c_str(),
               std::string(dtype_name(eo.dtype)).c_str());
  return 0;
}

RegisterCommand reg{{"merge", "Merge adapters into the base weights and write a Hugging Face model folder",
                     [](CLI::App& app) {
                       auto o = std::make_shared<MergeOptions>();
                       app.add_option("--model", o->model, "Base model folder")->required();
                       app.add_option("--adapter", o->adapters, "Adapter folder, optionally DIR:SCALE (repeatable)")
                           ->required();
                       app.add_option("--out", o->out, "Output model folder")->required();
                       app.add_option("--dtype", o->dtype, "bf16, f16 or f32 (default: the base model's)");
                       return [o] { return run_merge(*o); };
                     }}};

}  // namespace
}  // namespace lowrank::cli
