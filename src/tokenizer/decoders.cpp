// Decoders: ByteLevel, ByteFallback, Fuse, Strip, Replace, Metaspace, Sequence. Each works on the
// list of token strings, as HF's decode_chain does; the tokenizer joins what is left.
#include <optional>

#include "components.h"
#include "lowrank/core/error.h"
#include "lowrank/tokenizer/unicode.h"
#include "regex.h"

namespace lowrank::tok {

// GPT-2's byte <-> printable char table (bytes that are printable map to themselves).
int byte_level_char_to_byte(uint32_t cp);

namespace {

class ByteLevelDecoder final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const std::string& t : tokens) {
      size_t mark = bytes.size();
      bool ok = true;
      for (size_t i = 0; i < t.size();) {
        int b = byte_level_char_to_byte(unicode::next_cp(t, i));
        if (b < 0) { ok = false; break; }
        bytes.push_back(static_cast<char>(b));
      }
      if (!ok) {  // a char outside the table: the token's own UTF-8 is used
        bytes.resize(mark);
        bytes += t;
      }
    }
    tokens.assign(1, unicode::utf8_lossy(bytes));
  }
};

class ByteFallback final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (unicode::find_invalid_utf8(pending) == std::string::npos)
        out.push_back(pending);
      else
        for (size_t k = 0; k < pending.size(); ++k) out.push_back("\xEF\xBF\xBD");
      pending.clear();
    };
    for (std::string& t : tokens) {
      int byte = -1;
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        auto hex = [](char c) {
          return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        };
        int h = hex(t[3]), l = hex(t[4]);
        if (h >= 0 && l >= 0) byte = h * 16 + l;
      }
      if (byte >= 0) {
        pending.push_back(static_cast<char>(byte));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    tokens.swap(out);
  }
};

class Fuse final : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDecoder final : public Decoder {
 public:
  StripDecoder(uint32_t content, size_t start, size_t stop)
      : content_(content), start_(start), stop_(stop) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::vector<uint32_t> cps;
      for (size_t i = 0; i < t.size();) cps.push_back(unicode::next_cp(t, i));
      size_t a = 0;
      for (size_t i = 0; i < start_ && i < cps.size() && cps[i] == content_; ++i) a = i + 1;
      size_t b = cps.size();
      for (size_t i = 0; i < stop_ && i < cps.size(); ++i) {
        size_t idx = cps.size() - i - 1;
        if (cps[idx] != content_) break;
        b = idx;
      }
      std::string out;
      for (size_t i = a; i < b; ++i) unicode::append_utf8(out, cps[i]);
      t.swap(out);
    }
  }

 private:
  uint32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(const Pattern& p, std::string content)
      : literal_(p.text), content_(std::move(content)) {
    if (p.is_regex) re_.emplace(p.text, "decoder Replace");
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (std::string& t : tokens) {
      std::string out;
      size_t prev = 0;
      if (re_) {
        std::vector<Regex::Match> m;
        re_->find_all(t, m);
        for (auto& r : m) {
          out.append(t, prev, r.start - prev);
          out += content_;
          prev = r.end;
        }
      } else if (!literal_.empty()) {
        for (size_t pos = t.find(literal_); pos != std::string::npos;
             pos = t.find(literal_, prev)) {
          out.append(t, prev, pos - prev);
          out += content_;
          prev = pos + literal_.size();
        }
      }
      out.append(t, prev, std::string::npos);
      t.swap(out);
    }
  }

 private:
  std::string literal_, content_;
  std::optional<Regex> re_;
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(uint32_t rep, bool prepends) : rep_(rep), prepends_(prepends) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t k = 0; k < tokens.size(); ++k) {
      std::string& t = tokens[k];
      std::string out;
      for (size_t i = 0; i < t.size();) {
        size_t b = i;
        uint32_t cp = unicode::next_cp(t, i);
        if (cp == rep_) {
          if (!(k == 0 && prepends_)) out += ' ';
        } else {
          out.append(t, b, i - b);
        }
      }
      t.swap(out);
    }
  }

 private:
  uint32_t rep_;
  bool prepends_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> v) : list_(std::move(v)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& d : list_) d->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> list_;
};

uint32_t single_char(const std::string& s, const std::string& where, const char* key) {
  size_t i = 0;
  if (s.empty() || unicode::find_invalid_utf8(s) != std::string::npos)
    throw error(where, ": \"", key, "\" must be one character");
  uint32_t cp = unicode::next_cp(s, i);
  if (i != s.size()) throw error(where, ": \"", key, "\" must be one character");
  return cp;
}

}  // namespace

std::unique_ptr<Decoder> make_decoder(const json& j) {
  if (j.is_null()) return nullptr;
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw error("decoder: expected an object with a \"type\"");
  const std::string type = j["type"];
  const std::string where = "decoder " + type;
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallback>();
  if (type == "Fuse") return std::make_unique<Fuse>();
  if (type == "Strip") {
    auto count = [&](const char* k) {
      const json& v = field(j, k, where);
      if (!v.is_number_integer() || v.get<int64_t>() < 0) throw error(where, ": \"", k, "\" must be a count");
      return v.get<size_t>();
    };
    return std::make_unique<StripDecoder>(single_char(get_string(j, "content", where), where, "content"),
                                          count("start"), count("stop"));
  }
  if (type == "Replace")
    return std::make_unique<ReplaceDecoder>(get_pattern(j, where), get_string(j, "content", where));
  if (type == "Metaspace") {
    std::string scheme = "always";
    if (j.contains("prepend_scheme") && j["prepend_scheme"].is_string()) scheme = j["prepend_scheme"];
    if (j.contains("add_prefix_space") && j["add_prefix_space"].is_boolean() &&
        !j["add_prefix_space"].get<bool>())
      scheme = "never";
    return std::make_unique<MetaspaceDecoder>(
        single_char(get_string(j, "replacement", where), where, "replacement"), scheme != "never");
  }
  if (type == "Sequence") {
    const json& list = field(j, "decoders", where);
    if (!list.is_array()) throw error(where, ": \"decoders\" must be an array");
    std::vector<std::unique_ptr<Decoder>> v;
    for (const json& e : list)
      if (auto d = make_decoder(e)) v.push_back(std::move(d));
    return std::make_unique<SequenceDecoder>(std::move(v));
  }
  throw error("decoder type \"", type, "\" is not supported");
}

}  // namespace lowrank::tok
