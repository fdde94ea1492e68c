// Tokenizer: loading tokenizer.json / vocab.json+merges.txt / tokenizer_config.json, and the
// encode pipeline (added tokens -> normalizer -> pre-tokenizer -> BPE -> post-processor) and
// decode (ids -> token strings -> decoder).
#include "lowrank/tokenizer/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "added_tokens.h"
#include "bpe.h"
#include "components.h"
#include "lowrank/core/error.h"
#include "lowrank/io/files.h"
#include "lowrank/tokenizer/unicode.h"

namespace lowrank::tok {

namespace fs = std::filesystem;

struct Tokenizer::Impl {
  std::unique_ptr<Normalizer> normalizer;
  std::unique_ptr<PreTokenizer> pre_tokenizer;
  std::unique_ptr<BpeModel> model;
  std::unique_ptr<PostProcessor> post_processor;
  std::unique_ptr<Decoder> decoder;
  std::vector<AddedToken> added;
  std::unordered_map<int32_t, size_t> added_by_id;
  VocabMap added_by_content;
  AddedMatcher raw_matcher, normalized_matcher;
  json config = json::object();
  std::optional<int32_t> bos, eos, pad;
  int32_t vocab_size = 0;

  void add_tokens(const json& list, const std::string& where);
  void finish(const std::string& where);
  std::optional<int32_t> lookup(std::string_view token) const {
    auto it = added_by_content.find(token);
    if (it != added_by_content.end()) return it->second;
    return model->token_to_id(token);
  }
};

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  if (!f) throw error(p.string(), ": cannot open");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw error(p.string(), ": read error");
  return ss.str();
}


VocabMap parse_vocab(const json& v, const std::string& where) {
  if (!v.is_object()) throw error(where, ": \"vocab\" must be an object of token -> id");
  VocabMap vocab;
  vocab.reserve(v.size());
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it.value().is_number_integer())
      throw error(where, ": vocab id of \"", it.key(), "\" must be an integer");
    int64_t id = it.value().get<int64_t>();
    if (id < 0 || id > INT32_MAX) throw error(where, ": vocab id ", id, " is out of range");
    vocab[it.key()] = static_cast<int32_t>(id);
  }
  return vocab;
}

// "a b" (legacy) or ["a", "b"].
std::pair<std::string, std::string> parse_merge(const json& m, size_t rank, const std::string& where) {
  if (m.is_string()) {
    const std::string& s = m.get_ref<const std::string&>();
    size_t sp = s.find(' ');
    if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
      throw error(where, ": merge ", rank + 1, " \"", s, "\" is not two tokens separated by a space");
    return {s.substr(0, sp), s.substr(sp + 1)};
  }
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
    return {m[0].get<std::string>(), m[1].get<std::string>()};
  throw error(where, ": merge ", rank + 1, " must be \"a b\" or [\"a\", \"b\"]");
}

std::unique_ptr<BpeModel> make_model(const json& m, bool byte_level, const std::string& name) {
  if (!m.is_object()) throw error(name, ": \"model\" must be an object");
  std::string type = m.contains("type") && m["type"].is_string() ? m["type"].get<std::string>()
                     : m.contains("merges")                      ? "BPE"
                                                                 : "";
  if (type != "BPE") {
    if (type == "WordPiece" || type == "Unigram" || type == "WordLevel")
      throw error(name, ": model type \"", type, "\" is not supported yet (only BPE)");
    throw error(name, ": model type \"", type, "\" is not supported");
  }
  const std::string where = name + ": model BPE";
  if (m.contains("dropout") && m["dropout"].is_number() && m["dropout"].get<double>() > 0)
    throw error(where, ": dropout is not supported");
  BpeOptions opt;
  auto str_opt = [&](const char* k) -> std::optional<std::string> {
    if (!m.contains(k) || m[k].is_null()) return std::nullopt;
    if (!m[k].is_string()) throw error(where, ": \"", k, "\" must be a string");
    return m[k].get<std::string>();
  };
  opt.unk_token = str_opt("unk_token");
  opt.continuing_subword_prefix = str_opt("continuing_subword_prefix").value_or("");
  opt.end_of_word_suffix = str_opt("end_of_word_suffix").value_or("");
  opt.fuse_unk = get_bool(m, "fuse_unk", false, where);
  opt.byte_fallback = get_bool(m, "byte_fallback", false, where);
  opt.ignore_merges = get_bool(m, "ignore_merges", false, where);
  VocabMap vocab = parse_vocab(field(m, "vocab", where), where);
  const json& mj = field(m, "merges", where);
  if (!mj.is_array()) throw error(where, ": \"merges\" must be an array");
  std::vector<std::pair<std::string, std::string>> merges;
  merges.reserve(mj.size());
  for (size_t r = 0; r < mj.size(); ++r) merges.push_back(parse_merge(mj[r], r, where));
  try {
    return std::make_unique<BpeModel>(std::move(vocab), merges, std::move(opt), byte_level);
  } catch (const Error& e) {
    throw error(name, ": ", e.what());
  }
}

// bos_token etc. in tokenizer_config.json: "tok" or {"content": "tok", ...}.
std::optional<std::string> config_token(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
    return (*it)["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

void Tokenizer::Impl::add_tokens(const json& list, const std::string& where) {
  if (list.is_null()) return;
  if (!list.is_array()) throw error(where, ": \"added_tokens\" must be an array");
  int32_t next_id = static_cast<int32_t>(model->size());  // HF: the model's vocab size
  for (const auto& a : added) next_id = std::max(next_id, a.id + 1);
  for (const json& t : list) {
    if (!t.is_object()) throw error(where, ": added token must be an object");
    AddedToken a;
    a.content = get_string(t, "content", where + " added token");
    if (a.content.empty()) continue;  // HF ignores empty added tokens
    if (unicode::find_invalid_utf8(a.content) != std::string::npos)
      throw error(where, ": added token is not valid UTF-8");
    const std::string w = where + " added token \"" + a.content + "\"";
    a.special = get_bool(t, "special", false, w);
    a.lstrip = get_bool(t, "lstrip", false, w);
    a.rstrip = get_bool(t, "rstrip", false, w);
    a.single_word = get_bool(t, "single_word", false, w);
    a.normalized = get_bool(t, "normalized", !a.special, w);
    // HF ignores the file's "id": a token gets its id from the added tokens or the model when
    // they know it, else the next id after the model's vocabulary, in file order.
    if (t.contains("id") && !t["id"].is_number_integer())
      throw error(w, ": \"id\" must be an integer");
    if (auto it = added_by_content.find(a.content); it != added_by_content.end()) {
      a.id = it->second;
    } else if (auto mid = model->token_to_id(a.content)) {
      a.id = *mid;
    } else {
      a.id = next_id++;
    }
    a.pattern = a.content;
    if (a.normalized && normalizer) a.pattern = normalizer->normalize(a.content);
    auto old = added_by_id.find(a.id);
    if (old != added_by_id.end()) {
      added[old->second] = a;
    } else {
      added_by_id[a.id] = added.size();
      added.push_back(a);
    }
    added_by_content[a.content] = a.id;
  }
}

void Tokenizer::Impl::finish(const std::string& where) {  // where: the config file name
  raw_matcher.build(added, false);
  normalized_matcher.build(added, true);
  vocab_size = model->max_id() + 1;
  for (auto& a : added) vocab_size = std::max(vocab_size, a.id + 1);
  // A token named in the config but absent from tokenizer.json may still be listed with its
  // id in the config's added_tokens_decoder; otherwise it has no id (loading still works).
  auto id_of = [&](const char* key) -> std::optional<int32_t> {
    auto tok = config_token(config, key);
    if (!tok) return std::nullopt;
    if (auto id = lookup(*tok)) return id;
    auto dec = config.find("added_tokens_decoder");
    if (dec != config.end() && dec->is_object())
      for (auto it = dec->begin(); it != dec->end(); ++it)
        if (it.value().is_object() && it.value().value("content", "") == *tok) {
          try {
            return std::stoi(it.key());
          } catch (const std::exception&) {
            throw error(where, ": added_tokens_decoder key \"", it.key(), "\" is not an id");
          }
        }
    return std::nullopt;
  };
  bos = id_of("bos_token");
  eos = id_of("eos_token");
  pad = id_of("pad_token");
}

Tokenizer Tokenizer::from_json(std::string_view text, std::string_view config_text,
                               const std::string& name) {
  json j = io::parse_json(text, name);
  if (!j.is_object()) throw error(name, ": expected a JSON object");
  auto impl = std::make_shared<Impl>();
  auto stage = [&](const char* key) -> const json& {
    static const json null;
    auto it = j.find(key);
    return it == j.end() ? null : *it;
  };
  try {
    impl->normalizer = make_normalizer(stage("normalizer"));
    bool byte_level = false;
    impl->pre_tokenizer = make_pre_tokenizer(stage("pre_tokenizer"), byte_level);
    impl->post_processor = make_post_processor(stage("post_processor"));
    impl->decoder = make_decoder(stage("decoder"));
    if (!j.contains("model")) throw error("missing \"model\"");
    impl->model = make_model(j["model"], byte_level, name);
  } catch (const Error& e) {
    std::string msg = e.what();
    if (msg.rfind(name, 0) == 0) throw;
    throw error(name, ": ", msg);
  }
  impl->add_tokens(stage("added_tokens"), name);
  if (!config_text.empty()) {
    impl->config = io::parse_json(config_text, "tokenizer_config.json");
    if (!impl->config.is_object()) throw error("tokenizer_config.json: expected a JSON object");
  }
  impl->finish("tokenizer_config.json");
  return Tokenizer(std::move(impl));
}

nlohmann::json tokenizer_json_from_vocab_merges(const std::string& folder) {
  const fs::path dir(folder);
  std::string vtext = read_file(dir / "vocab.json");
  std::string mtext = read_file(dir / "merges.txt");
  json vocab_json = io::parse_json(vtext, (dir / "vocab.json").string());
  json model = {{"type", "BPE"}, {"vocab", std::move(vocab_json)}, {"merges", json::array()}};
  std::istringstream ms(mtext);
  std::string line;
  while (std::getline(ms, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("#version", 0) == 0) continue;
    if (line.empty() && ms.peek() == EOF) break;
    model["merges"].push_back(line);
  }
  json tok = {
      {"normalizer", nullptr},
      {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
      {"post_processor", {{"type", "ByteLevel"}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", std::move(model)},
      {"added_tokens", json::array()}};
  // Special tokens: GPT-2's <|endoftext|> and those named in tokenizer_config.json.
  std::vector<std::string> specials = {"<|endoftext|>"};
  if (fs::exists(dir / "tokenizer_config.json")) {
    json c = io::parse_json(read_file(dir / "tokenizer_config.json"), (dir / "tokenizer_config.json").string());
    for (const char* k : {"bos_token", "eos_token", "unk_token", "pad_token"})
      if (auto t = config_token(c, k)) specials.push_back(*t);
  }
  const json& v = tok["model"]["vocab"];
  for (const std::string& s : specials)
    if (v.contains(s) && v[s].is_number_integer())
      tok["added_tokens"].push_back({{"id", v[s]}, {"content", s}, {"special", true},
                                     {"normalized", false}});
  return tok;
}

// GPT-2 files: vocab.json + merges.txt, set up as GPT-2's tokenizer.json is.
static Tokenizer from_vocab_merges(const fs::path& dir) {
  std::string cfg;
  if (fs::exists(dir / "tokenizer_config.json")) cfg = read_file(dir / "tokenizer_config.json");
  return Tokenizer::from_json(tokenizer_json_from_vocab_merges(dir.string()).dump(), cfg, (dir / "merges.txt").string());
}

Tokenizer Tokenizer::load(const std::string& path) {
  fs::path p(path);
  std::error_code ec;
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / "tokenizer.json")) return load((p / "tokenizer.json").string());
    if (fs::exists(p / "vocab.json") && fs::exists(p / "merges.txt")) return from_vocab_merges(p);
    throw error(path, ": no tokenizer.json (nor vocab.json + merges.txt) in this folder");
  }
  if (!fs::exists(p, ec)) throw error(path, ": no such file or folder");
  std::string text = read_file(p);
  std::string cfg;
  fs::path cfg_path = p.parent_path() / "tokenizer_config.json";
  if (fs::exists(cfg_path, ec)) cfg = read_file(cfg_path);
  return from_json(text, cfg, path);
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  const Impl& t = *impl_;
  size_t bad = unicode::find_invalid_utf8(text);
  if (bad != std::string_view::npos)
    throw error("tokenize: text is not valid UTF-8 (byte ", bad, ")");
  Pieces p;
  std::vector<AddedMatcher::Split> splits;
  // 1. Added tokens matched in the raw text; 2. the rest normalized, then normalized tokens.
  std::vector<Piece> raw;
  if (t.raw_matcher.empty()) {
    raw.push_back({text, -1, true});
  } else {
    t.raw_matcher.find(text, t.added, splits);
    for (auto& s : splits)
      raw.push_back({text.substr(s.start, s.end - s.start), s.token >= 0 ? t.added[s.token].id : -1,
                     s.start == 0});
  }
  for (const Piece& r : raw) {
    if (r.id >= 0) {
      p.list.push_back(r);
      continue;
    }
    std::string_view norm = r.text;
    if (t.normalizer) {
      std::string out;
      if (t.normalizer->apply(r.text, out)) norm = p.own(std::move(out));
    }
    if (t.normalized_matcher.empty()) {
      if (!norm.empty()) p.list.push_back({norm, -1, r.at_start});
      continue;
    }
    t.normalized_matcher.find(norm, t.added, splits);
    for (auto& s : splits)
      if (s.end > s.start)
        p.list.push_back({norm.substr(s.start, s.end - s.start),
                          s.token >= 0 ? t.added[s.token].id : -1, r.at_start && s.start == 0});
  }
  if (t.pre_tokenizer) t.pre_tokenizer->pre_tokenize(p);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  for (const Piece& piece : p.list) {
    if (piece.id >= 0)
      ids.push_back(piece.id);
    else
      t.model->tokenize(piece.text, ids);
  }
  if (add_special_tokens && t.post_processor) t.post_processor->process(ids);
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  const Impl& t = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    auto a = t.added_by_id.find(id);
    if (a != t.added_by_id.end()) {
      const AddedToken& tok = t.added[a->second];
      if (skip_special_tokens && tok.special) continue;
      // HF decodes a normalized added token as its normalized form.
      tokens.push_back(tok.normalized && t.normalizer ? tok.pattern : tok.content);
      continue;
    }
    const std::string* s = t.model->id_to_token(id);
    if (!s) continue;  // unknown ids are dropped, as in HF
    if (skip_special_tokens) {
      auto c = t.added_by_content.find(*s);
      if (c != t.added_by_content.end() && t.added[t.added_by_id.at(c->second)].special) continue;
    }
    tokens.push_back(*s);
  }
  if (!t.decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  t.decoder->decode_chain(tokens);
  std::string out;
  for (auto& s : tokens) out += s;
  return out;
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  return impl_->lookup(token);
}

std::string Tokenizer::id_to_token(int32_t id) const {
  auto a = impl_->added_by_id.find(id);
  if (a != impl_->added_by_id.end()) return impl_->added[a->second].content;
  const std::string* s = impl_->model->id_to_token(id);
  return s ? *s : std::string();
}

bool Tokenizer::is_special(int32_t id) const {
  auto a = impl_->added_by_id.find(id);
  return a != impl_->added_by_id.end() && impl_->added[a->second].special;
}

std::optional<int32_t> Tokenizer::bos_id() const { return impl_->bos; }
std::optional<int32_t> Tokenizer::eos_id() const { return impl_->eos; }
std::optional<int32_t> Tokenizer::pad_id() const { return impl_->pad; }
const nlohmann::json& Tokenizer::config() const { return impl_->config; }

}  // namespace lowrank::tok
