// Methods of str, dict and list values, and the global functions templates can call.
#include <algorithm>
#include <ctime>
#include <memory>

#include "chat_template_builtins.h"
#include "chat_template_strings.h"
#include "lowrank/core/error.h"

namespace lowrank::tok::jinja {

using Kind = Value::Kind;

namespace {

constexpr std::string_view kStrMethods[] = {
    "capitalize", "casefold",   "center",    "count",    "endswith",   "find",      "format",       "index",
    "isalnum",    "isalpha",    "isdecimal", "isdigit",  "islower",    "isnumeric", "isspace",      "istitle",
    "isupper",    "join",       "ljust",     "lower",    "lstrip",     "partition", "removeprefix", "removesuffix",
    "replace",    "rfind",      "rindex",    "rjust",    "rpartition", "rsplit",    "rstrip",       "split",
    "splitlines", "startswith", "strip",     "swapcase", "title",      "upper",     "zfill"};
constexpr std::string_view kDictMethods[] = {"copy", "get", "items", "keys", "values"};
constexpr std::string_view kListMethods[] = {"copy", "count", "index"};
// Methods that would modify data: the sandbox transformers uses refuses them.
constexpr std::string_view kDictUnsafe[] = {"clear", "pop", "popitem", "setdefault", "update"};
constexpr std::string_view kListUnsafe[] = {"append", "clear", "extend", "insert", "pop", "remove", "reverse", "sort"};

template <size_t N>
bool in(const std::string_view (&list)[N], std::string_view name) {
  return std::find(std::begin(list), std::end(list), name) != std::end(list);
}

const Value* opt_arg(const CallArgs& a, size_t pos, std::string_view name) {
  const Value* v = a.get(pos, name);
  return v && !v->is_none() ? v : nullptr;
}

// A prefix/suffix argument: a string or a tuple of strings.
bool affix_match(const std::string& s, const Value& affix, bool prefix) {
  auto one = [&](const std::string& x) {
    if (x.size() > s.size()) return false;
    return prefix ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0;
  };
  if (affix.is_list()) {
    for (const Value& x : *affix.list)
      if (one(need_string(x, prefix ? "startswith argument" : "endswith argument"))) return true;
    return false;
  }
  return one(need_string(affix, prefix ? "startswith argument" : "endswith argument"));
}

bool all_chars(const std::string& s, bool (*pred)(char32_t)) {
  std::u32string u = pystr::decode(s);
  return !u.empty() && std::all_of(u.begin(), u.end(), pred);
}
bool is_digit_char(char32_t c) { return (c >= '0' && c <= '9') || (c >= 0xff10 && c <= 0xff19); }
bool is_alpha_char(char32_t c) {
  if (c < 0x80) return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
  return pystr::is_cased(c) || (c >= 0x3040 && c <= 0x9fff) || (c >= 0xac00 && c <= 0xd7a3) ||
         (c >= 0x5d0 && c <= 0x6ff) || (c >= 0x900 && c <= 0xdff) || (c >= 0xe00 && c <= 0xeff);
}
bool is_alnum_char(char32_t c) { return is_digit_char(c) || is_alpha_char(c); }

Value strings_to_list(std::vector<std::string> parts) {
  List out;
  out.reserve(parts.size());
  for (auto& p : parts) out.push_back(Value::string(std::move(p)));
  return Value::make_list(std::move(out));
}

std::string justify(const std::string& s, const CallArgs& a, char mode) {
  int64_t width = to_index(a.args.empty() ? Value() : a.args[0], "width");
  std::string fill = a.args.size() > 1 ? need_string(a.args[1], "fill character") : " ";
  int64_t len = pystr::length(s);
  if (width <= len) return s;
  int64_t total = width - len;
  int64_t left = mode == '<' ? 0 : mode == '>' ? total : total / 2 + (total & width & 1);
  std::string out;
  for (int64_t k = 0; k < left; ++k) out += fill;
  out += s;
  for (int64_t k = 0; k < total - left; ++k) out += fill;
  return out;
}

Value str_method(const std::string& s, std::string_view name, const CallArgs& a) {
  auto need = [&](size_t pos, std::string_view what) -> const Value& {
    if (pos >= a.args.size()) throw lowrank::error("str.", name, "() missing argument: ", what);
    return a.args[pos];
  };
  if (name == "strip" || name == "lstrip" || name == "rstrip") {
    const Value* chars = opt_arg(a, 0, "chars");
    std::string set = chars ? need_string(*chars, "strip characters") : std::string();
    return Value::string(pystr::strip(s, chars ? &set : nullptr, name != "rstrip", name != "lstrip"));
  }
  if (name == "split" || name == "rsplit") {
    const Value* sep = opt_arg(a, 0, "sep");
    std::string sep_s = sep ? need_string(*sep, "separator") : std::string();
    const Value* maxsplit = opt_arg(a, 1, "maxsplit");
    int64_t m = maxsplit ? to_index(*maxsplit, "maxsplit") : -1;
    return strings_to_list(name == "split" ? pystr::split(s, sep ? &sep_s : nullptr, m)
                                           : pystr::rsplit(s, sep ? &sep_s : nullptr, m));
  }
  if (name == "splitlines") {
    const Value* keep = opt_arg(a, 0, "keepends");
    return strings_to_list(pystr::splitlines(s, keep && truthy(*keep)));
  }
  if (name == "startswith" || name == "endswith")
    return Value::boolean(affix_match(s, need(0, "affix"), name == "startswith"));
  if (name == "upper") return Value::string(pystr::upper(s));
  if (name == "lower" || name == "casefold") return Value::string(pystr::lower(s));
  if (name == "title") return Value::string(pystr::title(s));
  if (name == "capitalize") return Value::string(pystr::capitalize(s));
  if (name == "swapcase") {
    std::string out;
    for (char32_t c : pystr::decode(s)) {
      std::string one;
      pystr::append_utf8(one, c);
      out += pystr::is_upper_char(c) ? pystr::lower(one) : pystr::upper(one);
    }
    return Value::string(out);
  }
  if (name == "replace") {
    const Value* count = opt_arg(a, 2, "count");
    return Value::string(pystr::replace(s, need_string(need(0, "old"), "old"), need_string(need(1, "new"), "new"),
                                        count ? to_index(*count, "count") : -1));
  }
  if (name == "find" || name == "rfind" || name == "index" || name == "rindex") {
    int64_t r = pystr::find(s, need_string(need(0, "sub"), "substring"), name[0] == 'r');
    if (r < 0 && (name == "index" || name == "rindex")) throw lowrank::error("substring not found");
    return Value::integer(r);
  }
  if (name == "count") return Value::integer(pystr::count(s, need_string(need(0, "sub"), "substring")));
  if (name == "join") {
    std::string out;
    bool first = true;
    size_t idx = 0;
    for (const Value& item : iterate(need(0, "iterable"))) {
      if (!item.is_string())
        throw lowrank::error("sequence item ", idx, ": expected str instance, ", type_name(item), " found");
      if (!first) out += s;
      first = false;
      out += item.s;
      ++idx;
    }
    return Value::string(out);
  }
  if (name == "format") return Value::string(str_format(s, a));
  if (name == "isdigit" || name == "isnumeric" || name == "isdecimal")
    return Value::boolean(all_chars(s, is_digit_char));
  if (name == "isalpha") return Value::boolean(all_chars(s, is_alpha_char));
  if (name == "isalnum") return Value::boolean(all_chars(s, is_alnum_char));
  if (name == "isspace") return Value::boolean(all_chars(s, pystr::is_space));
  if (name == "isupper" || name == "islower") {
    bool any = false;
    for (char32_t c : pystr::decode(s)) {
      if (!pystr::is_cased(c)) continue;
      any = true;
      if (name == "isupper" ? !pystr::is_upper_char(c) : pystr::is_upper_char(c)) return Value::boolean(false);
    }
    return Value::boolean(any);
  }
  if (name == "istitle") return Value::boolean(!s.empty() && pystr::title(s) == s && pystr::lower(s) != s);
  if (name == "zfill") {
    int64_t width = to_index(need(0, "width"), "width");
    int64_t len = pystr::length(s);
    if (width <= len) return Value::string(s);
    size_t sign = (!s.empty() && (s[0] == '-' || s[0] == '+')) ? 1 : 0;
    return Value::string(s.substr(0, sign) + std::string(width - len, '0') + s.substr(sign));
  }
  if (name == "center") return Value::string(justify(s, a, '^'));
  if (name == "ljust") return Value::string(justify(s, a, '<'));
  if (name == "rjust") return Value::string(justify(s, a, '>'));
  if (name == "removeprefix" || name == "removesuffix") {
    const std::string& x = need_string(need(0, "affix"), "affix");
    bool pre = name == "removeprefix";
    if (affix_match(s, Value::string(x), pre))
      return Value::string(pre ? s.substr(x.size()) : s.substr(0, s.size() - x.size()));
    return Value::string(s);
  }
  if (name == "partition" || name == "rpartition") {
    const std::string& sep = need_string(need(0, "sep"), "separator");
    if (sep.empty()) throw lowrank::error("empty separator");
    size_t hit = name == "partition" ? s.find(sep) : s.rfind(sep);
    List parts;
    if (hit == std::string::npos) {
      parts = name == "partition" ? List{Value::string(s), Value::string(""), Value::string("")}
                                  : List{Value::string(""), Value::string(""), Value::string(s)};
    } else {
      parts = {Value::string(s.substr(0, hit)), Value::string(sep), Value::string(s.substr(hit + sep.size()))};
    }
    return Value::make_list(std::move(parts), true);
  }
  throw lowrank::error("'str object' has no attribute '", name, "'");
}

Value dict_method(const Value& d, std::string_view name, const CallArgs& a) {
  if (name == "get") {
    if (a.args.empty()) throw lowrank::error("dict.get() needs a key");
    const Value* v = d.dict->get(a.args[0]);
    if (v) return *v;
    return a.args.size() > 1 ? a.args[1] : Value::none();
  }
  List out;
  for (const auto& kv : d.dict->items) {
    if (name == "items")
      out.push_back(Value::make_list({kv.first, kv.second}, true));
    else if (name == "keys")
      out.push_back(kv.first);
    else if (name == "values")
      out.push_back(kv.second);
  }
  if (name == "copy") return Value::make_dict(*d.dict);
  return Value::make_list(std::move(out));
}

Value list_method(const Value& l, std::string_view name, const CallArgs& a) {
  if (name == "copy") return Value::make_list(*l.list, l.tuple);
  if (a.args.empty()) throw lowrank::error("list.", name, "() needs an argument");
  int64_t count = 0;
  for (size_t k = 0; k < l.list->size(); ++k)
    if (equals((*l.list)[k], a.args[0])) {
      if (name == "index") return Value::integer(static_cast<int64_t>(k));
      ++count;
    }
  if (name == "index") throw lowrank::error(repr(a.args[0]), " is not in list");
  return Value::integer(count);
}

}  // namespace

bool has_method(const Value& obj, std::string_view name) {
  switch (obj.kind) {
    case Kind::String:
      return in(kStrMethods, name);
    case Kind::Dict:
      return in(kDictMethods, name) || in(kDictUnsafe, name);
    case Kind::List:
      return !obj.generator && (in(kListMethods, name) || in(kListUnsafe, name));
    default:
      return false;
  }
}

std::optional<Value> call_method(const Value& obj, std::string_view name, const CallArgs& args) {
  if (!has_method(obj, name)) return std::nullopt;
  if ((obj.is_dict() && in(kDictUnsafe, name)) || (obj.is_list() && in(kListUnsafe, name)))
    throw lowrank::error("access to attribute '", name, "' of '", type_name(obj),
                         "' object is unsafe: chat templates cannot modify data (use namespace() to keep state)");
  switch (obj.kind) {
    case Kind::String:
      return str_method(obj.s, name, args);
    case Kind::Dict:
      return dict_method(obj, name, args);
    case Kind::List:
      return list_method(obj, name, args);
    default:
      return std::nullopt;
  }
}

namespace {

// The sandbox transformers renders in refuses larger ranges (jinja2.sandbox.MAX_RANGE).
constexpr int64_t kMaxRange = 100000;

Value fn_range(Interpreter&, const CallArgs& a) {
  if (a.args.empty() || a.args.size() > 3) throw lowrank::error("range expected 1 to 3 arguments, got ", a.args.size());
  int64_t start = 0, stop, step = 1;
  if (a.args.size() == 1) {
    stop = to_index(a.args[0], "range() argument");
  } else {
    start = to_index(a.args[0], "range() argument");
    stop = to_index(a.args[1], "range() argument");
    if (a.args.size() == 3) step = to_index(a.args[2], "range() argument");
  }
  if (step == 0) throw lowrank::error("range() arg 3 must not be zero");
  List out;
  for (int64_t v = start; step > 0 ? v < stop : v > stop; v += step) {
    if (static_cast<int64_t>(out.size()) >= kMaxRange)
      throw lowrank::error("Range too big. The sandbox blocks ranges larger than MAX_RANGE (", kMaxRange, ").");
    out.push_back(Value::integer(v));
  }
  return Value::make_list(std::move(out));
}

// dict(mapping_or_pairs, **kwargs), shared by dict() and namespace().
Dict build_dict(const CallArgs& a, const char* fn) {
  Dict d;
  if (a.args.size() > 1) throw lowrank::error(fn, "() takes at most one positional argument");
  if (a.args.size() == 1) {
    const Value& src = a.args[0];
    if (src.is_dict()) {
      d = *src.dict;
    } else {
      for (const Value& pair : iterate(src)) {
        List kv = iterate(pair);
        if (kv.size() != 2) throw lowrank::error(fn, "(): sequence elements must have length 2");
        d.set(kv[0], kv[1]);
      }
    }
  }
  for (const auto& [k, v] : a.kwargs) d.set(Value::string(k), v);
  return d;
}

Value fn_strftime_now(Interpreter&, const CallArgs& a) {
  if (a.args.empty()) throw lowrank::error("strftime_now() needs a format string");
  const std::string& fmt = need_string(a.args[0], "strftime_now format");
  std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  if (fmt.empty()) return Value::string("");
  for (size_t cap = 256; cap <= (size_t(1) << 20); cap *= 4) {
    std::string buf(cap, '\0');
    size_t n = std::strftime(buf.data(), buf.size(), fmt.c_str(), &local);
    if (n > 0) return Value::string(buf.substr(0, n));
  }
  return Value::string("");  // the format produces no characters (e.g. "%p" in some locales)
}

Value fn_joiner(Interpreter&, const CallArgs& a) {
  std::string sep = a.args.empty() ? ", " : to_str(a.args[0]);
  auto used = std::make_shared<bool>(false);
  return Value::callable("joiner", [sep, used](Interpreter&, const CallArgs&) {
    if (!*used) {
      *used = true;
      return Value::string("");
    }
    return Value::string(sep);
  });
}

}  // namespace

Value global_function(std::string_view name) {
  if (name == "range") return Value::callable("range", fn_range);
  if (name == "namespace")
    return Value::callable(
        "namespace", [](Interpreter&, const CallArgs& a) { return Value::make_namespace(build_dict(a, "namespace")); });
  if (name == "dict")
    return Value::callable("dict",
                           [](Interpreter&, const CallArgs& a) { return Value::make_dict(build_dict(a, "dict")); });
  if (name == "raise_exception")
    return Value::callable("raise_exception", [](Interpreter&, const CallArgs& a) -> Value {
      throw TemplateRaised{a.args.empty() ? std::string() : to_str(a.args[0])};
    });
  if (name == "strftime_now") return Value::callable("strftime_now", fn_strftime_now);
  if (name == "joiner") return Value::callable("joiner", fn_joiner);
  return Value::undefined();
}

}  // namespace lowrank::tok::jinja
