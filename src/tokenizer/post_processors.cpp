// Post-processors (applied with add_special_tokens): TemplateProcessing, ByteLevel (ids are
// unchanged: it only adjusts offsets), RobertaProcessing, BertProcessing, Sequence.
#include "components.h"
#include "lowrank/core/error.h"

namespace lowrank::tok {
namespace {

class Wrap final : public PostProcessor {
 public:
  Wrap(std::vector<int32_t> pre, std::vector<int32_t> post)
      : pre_(std::move(pre)), post_(std::move(post)) {}
  void process(std::vector<int32_t>& ids) const override {
    ids.insert(ids.begin(), pre_.begin(), pre_.end());
    ids.insert(ids.end(), post_.begin(), post_.end());
  }

 private:
  std::vector<int32_t> pre_, post_;
};

class Nothing final : public PostProcessor {
 public:
  void process(std::vector<int32_t>&) const override {}
};

class SequenceProcessor final : public PostProcessor {
 public:
  explicit SequenceProcessor(std::vector<std::unique_ptr<PostProcessor>> v) : list_(std::move(v)) {}
  void process(std::vector<int32_t>& ids) const override {
    for (auto& p : list_) p->process(ids);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> list_;
};

std::unique_ptr<PostProcessor> template_processing(const json& j, const std::string& where) {
  const json& specials = j.contains("special_tokens") ? j["special_tokens"] : json::object();
  auto special_ids = [&](const std::string& name) {
    auto it = specials.find(name);
    if (it == specials.end() || !it->is_object() || !it->contains("ids") ||
        !(*it)["ids"].is_array())
      throw error(where, ": special token \"", name, "\" is not in special_tokens");
    std::vector<int32_t> ids;
    for (const json& v : (*it)["ids"]) {
      if (!v.is_number_integer()) throw error(where, ": ids of \"", name, "\" must be integers");
      ids.push_back(v.get<int32_t>());
    }
    return ids;
  };
  const json& single = field(j, "single", where);
  std::vector<int32_t> pre, post;
  bool seen_a = false;
  auto add = [&](const std::vector<int32_t>& ids) {
    auto& dst = seen_a ? post : pre;
    dst.insert(dst.end(), ids.begin(), ids.end());
  };
  if (single.is_string()) {
    // "<s> $A </s>" form: words separated by spaces, "$A"/"$B"/"$" (with optional :type_id).
    std::string s = single;
    size_t i = 0;
    while (i < s.size()) {
      size_t j2 = s.find(' ', i);
      if (j2 == std::string::npos) j2 = s.size();
      std::string w = s.substr(i, j2 - i);
      i = j2 + 1;
      if (w.empty()) continue;
      if (w[0] == '$') {
        seen_a = true;
        continue;
      }
      add(special_ids(w.substr(0, w.rfind(':') == std::string::npos ? w.size() : w.rfind(':'))));
    }
  } else if (single.is_array()) {
    for (const json& piece : single) {
      if (piece.contains("Sequence")) {
        seen_a = true;
      } else if (piece.contains("SpecialToken") && piece["SpecialToken"].contains("id") &&
                 piece["SpecialToken"]["id"].is_string()) {
        add(special_ids(piece["SpecialToken"]["id"]));
      } else {
        throw error(where, ": bad template piece ", piece.dump());
      }
    }
  } else {
    throw error(where, ": \"single\" must be a list or a string");
  }
  return std::make_unique<Wrap>(std::move(pre), std::move(post));
}

// ["<s>", 0] pairs of RobertaProcessing/BertProcessing.
int32_t pair_id(const json& j, const char* key, const std::string& where) {
  const json& v = field(j, key, where);
  if (!v.is_array() || v.size() != 2 || !v[1].is_number_integer())
    throw error(where, ": \"", key, "\" must be [token, id]");
  return v[1].get<int32_t>();
}

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const json& j) {
  if (j.is_null()) return nullptr;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw error("post_processor: expected an object with a \"type\"");
  const std::string type = j["type"];
  const std::string where = "post_processor " + type;
  if (type == "TemplateProcessing") return template_processing(j, where);
  if (type == "ByteLevel") return std::make_unique<Nothing>();
  if (type == "RobertaProcessing" || type == "BertProcessing")
    return std::make_unique<Wrap>(std::vector<int32_t>{pair_id(j, "cls", where)},
                                  std::vector<int32_t>{pair_id(j, "sep", where)});
  if (type == "Sequence") {
    const json& list = field(j, "processors", where);
    if (!list.is_array()) throw error(where, ": \"processors\" must be an array");
    std::vector<std::unique_ptr<PostProcessor>> v;
    for (const json& e : list)
      if (auto p = make_post_processor(e)) v.push_back(std::move(p));
    return std::make_unique<SequenceProcessor>(std::move(v));
  }
  throw error("post_processor type \"", type, "\" is not supported");
}

}  // namespace lowrank::tok
