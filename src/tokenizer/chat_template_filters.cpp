// Jinja's filters and tests, with transformers' tojson (json.dumps, ensure_ascii=False).
#include <algorithm>
#include <cfenv>
#include <cmath>
#include <string_view>

#include "chat_template_builtins.h"
#include "chat_template_eval.h"
#include "chat_template_strings.h"
#include "lowrank/core/error.h"

namespace lowrank::tok::jinja {

using Kind = Value::Kind;

namespace {

constexpr std::string_view kFilters[] = {
    "abs",        "attr",    "capitalize", "center",      "count",  "d",      "default",    "dictsort", "e",
    "escape",     "first",   "float",      "forceescape", "format", "indent", "int",        "items",    "join",
    "last",       "length",  "list",       "lower",       "map",    "max",    "min",        "pprint",   "reject",
    "rejectattr", "replace", "reverse",    "round",       "safe",   "select", "selectattr", "sort",     "string",
    "sum",        "title",   "tojson",     "trim",        "unique", "upper",  "wordcount"};

// Real Jinja filters this interpreter does not implement: named in the error instead of
// "No filter named ...", so users know the template is valid Jinja.
constexpr std::string_view kUnsupportedFilters[] = {"batch",  "filesizeformat", "groupby",  "random",
                                                    "slice",  "striptags",      "truncate", "urlencode",
                                                    "urlize", "wordwrap",       "xmlattr"};

constexpr std::string_view kTests[] = {
    "boolean",  "callable", "defined",  "divisibleby", "eq",          "equalto", "escaped", "even",
    "false",    "filter",   "float",    "ge",          "greaterthan", "gt",      "in",      "integer",
    "iterable", "le",       "lessthan", "lower",       "lt",          "mapping", "ne",      "none",
    "number",   "odd",      "sameas",   "sequence",    "string",      "test",    "true",    "undefined",
    "upper",    "==",       "!=",       "<",           "<=",          ">",       ">="};

template <size_t N>
bool in(const std::string_view (&list)[N], std::string_view name) {
  return std::find(std::begin(list), std::end(list), name) != std::end(list);
}

// str(value) the way Jinja's soft_str does it (Undefined -> "").
std::string soft_str(const Value& v) { return to_str(v); }

const Value* arg(const CallArgs& a, size_t pos, std::string_view name) { return a.get(pos, name); }

bool bool_arg(const CallArgs& a, size_t pos, std::string_view name, bool dflt) {
  const Value* v = arg(a, pos, name);
  return v ? truthy(*v) : dflt;
}

// Jinja's make_attrgetter: "a.b.0" walks items/attributes; missing parts give Undefined.
Value attr_path(const Value& item, const std::string& path) {
  Value cur = item;
  size_t start = 0;
  while (true) {
    size_t dot = path.find('.', start);
    std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    cur = numeric ? get_item(cur, Value::integer(std::stoll(part))) : get_item(cur, Value::string(part));
    if (dot == std::string::npos) return cur;
    start = dot + 1;
  }
}

// The key Jinja sorts/compares by: lower-cased strings unless case_sensitive.
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::string(pystr::lower(v.s));
  return v;
}

Value select_items(Interpreter& in, const Value& seq, const CallArgs& a, bool use_attr, bool keep_if) {
  List out;
  if (!truthy(seq)) return Value::make_generator({});  // Jinja: `if value:` before iterating
  size_t first_test_arg = use_attr ? 1 : 0;
  std::string attr;
  if (use_attr) {
    const Value* at = arg(a, 0, "attribute");
    if (!at) throw lowrank::error("selectattr/rejectattr need an attribute name");
    attr = to_str(*at);
  }
  const Value* test = a.args.size() > first_test_arg ? &a.args[first_test_arg] : nullptr;
  CallArgs test_args;
  for (size_t k = first_test_arg + 1; k < a.args.size(); ++k) test_args.args.push_back(a.args[k]);
  test_args.kwargs = a.kwargs;
  for (const Value& item : iterate(seq)) {
    Value probe = use_attr ? attr_path(item, attr) : item;
    bool ok = test ? apply_test(in, need_string(*test, "test name"), probe, test_args) : truthy(probe);
    if (ok == keep_if) out.push_back(item);
  }
  return Value::make_generator(std::move(out));
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

// Jinja's title filter: capitalises after runs of [-\s({\[<], not str.title().
std::string jinja_title(const std::string& s) {
  std::u32string u = pystr::decode(s);
  auto is_sep = [](char32_t c) {
    return pystr::is_space(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
  };
  std::string out;
  size_t k = 0;
  while (k < u.size()) {
    size_t e = k;
    bool sep = is_sep(u[k]);
    while (e < u.size() && is_sep(u[e]) == sep) ++e;
    std::string piece = pystr::encode(std::u32string_view(u).substr(k, e - k));
    if (sep) {
      out += piece;
    } else {
      std::string head = pystr::encode(std::u32string_view(u).substr(k, 1));
      out += pystr::upper(head) + pystr::lower(pystr::encode(std::u32string_view(u).substr(k + 1, e - k - 1)));
    }
    k = e;
  }
  return out;
}

Value do_tojson(const Value& v, const CallArgs& a) {
  // transformers: tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)
  JsonOptions opt;
  if (const Value* ea = arg(a, 0, "ensure_ascii")) opt.ensure_ascii = truthy(*ea);
  if (const Value* ind = arg(a, 1, "indent"); ind && !ind->is_none()) {
    if (ind->is_string())
      opt.indent = ind->s;
    else
      opt.indent = std::string(static_cast<size_t>(std::max<int64_t>(0, to_index(*ind, "indent"))), ' ');
  }
  if (const Value* sep = arg(a, 2, "separators"); sep && !sep->is_none()) {
    if (!sep->is_list() || sep->list->size() != 2) throw lowrank::error("tojson separators must be a pair of strings");
    opt.separators =
        std::make_pair(need_string((*sep->list)[0], "separator"), need_string((*sep->list)[1], "separator"));
  }
  if (const Value* sk = arg(a, 3, "sort_keys")) opt.sort_keys = truthy(*sk);
  return Value::string(to_json(v, opt));
}

// Jinja's generator filters (select, map, unique, items...) fail only when iterated; we compute
// them eagerly, so an error is kept in the generator and raised by iterate().
template <typename Fn>
Value lazily(Fn fn) {
  try {
    return fn();
  } catch (const lowrank::Error& e) {
    Value g = Value::make_generator({});
    g.s = e.what();
    return g;
  }
}

Value do_round(const Value& v, const CallArgs& a) {
  if (!v.is_number()) throw lowrank::error("round filter needs a number, not '", type_name(v), "'");
  int64_t precision = arg(a, 0, "precision") ? to_index(*arg(a, 0, "precision"), "precision") : 0;
  std::string method = arg(a, 1, "method") ? need_string(*arg(a, 1, "method"), "method") : "common";
  if (method == "common" && v.is_int_like() && precision >= 0) return Value::integer(v.as_int());  // round(int) is int
  double scale = std::pow(10.0, static_cast<double>(precision));
  double x = v.as_double() * scale;
  if (method == "ceil")
    x = std::ceil(x);
  else if (method == "floor")
    x = std::floor(x);
  else if (method == "common")
    x = std::nearbyint(x);  // Python's round(): ties to even
  else
    throw lowrank::error("round method must be 'common', 'ceil' or 'floor'");
  return Value::number(x / scale);
}

Value do_int(const Value& v, const CallArgs& a) {
  if (v.is_undefined()) fail_undefined(v);  // int(Undefined) raises in Jinja
  Value dflt = arg(a, 0, "default") ? *arg(a, 0, "default") : Value::integer(0);
  int base = arg(a, 1, "base") ? static_cast<int>(to_index(*arg(a, 1, "base"), "base")) : 10;
  if (v.is_int_like()) return Value::integer(v.as_int());
  if (v.kind == Kind::Float) return std::isfinite(v.f) ? Value::integer(static_cast<int64_t>(v.f)) : dflt;
  if (v.is_string()) {
    std::string s = pystr::strip(v.s, nullptr, true, true);
    std::string digits;
    for (char c : s)
      if (c != '_') digits.push_back(c);
    try {
      size_t used = 0;
      int64_t r = std::stoll(digits, &used, base);
      if (used == digits.size()) return Value::integer(r);
    } catch (const std::exception&) {
    }
    try {
      size_t used = 0;
      double d = std::stod(digits, &used);
      if (used == digits.size() && std::isfinite(d)) return Value::integer(static_cast<int64_t>(d));
    } catch (const std::exception&) {
    }
  }
  return dflt;
}

Value do_float(const Value& v, const CallArgs& a) {
  if (v.is_undefined()) fail_undefined(v);
  Value dflt = arg(a, 0, "default") ? *arg(a, 0, "default") : Value::number(0.0);
  if (v.is_number()) return Value::number(v.as_double());
  if (v.is_string()) {
    std::string s = pystr::strip(v.s, nullptr, true, true);
    try {
      size_t used = 0;
      double d = std::stod(s, &used);
      if (used == s.size()) return Value::number(d);
    } catch (const std::exception&) {
    }
  }
  return dflt;
}

Value do_indent(const Value& v, const CallArgs& a) {
  if (!v.is_string()) {  // Jinja appends "\n" to it, which only works for strings
    if (v.is_undefined()) fail_undefined(v);
    throw lowrank::error("indent needs a string, not '", type_name(v), "'");
  }
  std::string indention = "    ";
  if (const Value* w = arg(a, 0, "width"))
    indention =
        w->is_string() ? w->s : std::string(static_cast<size_t>(std::max<int64_t>(0, to_index(*w, "width"))), ' ');
  bool first = bool_arg(a, 1, "first", false), blank = bool_arg(a, 2, "blank", false);
  std::vector<std::string> lines = pystr::splitlines(soft_str(v) + "\n", false);
  std::string rv;
  if (blank) {
    for (size_t k = 0; k < lines.size(); ++k) rv += (k ? "\n" + indention : "") + lines[k];
  } else {
    rv = lines.empty() ? "" : lines[0];
    for (size_t k = 1; k < lines.size(); ++k) rv += "\n" + (lines[k].empty() ? "" : indention + lines[k]);
  }
  if (first) rv = indention + rv;
  return Value::string(rv);
}

Value do_sort(const Value& v, const CallArgs& a) {
  bool reverse = bool_arg(a, 0, "reverse", false), case_sensitive = bool_arg(a, 1, "case_sensitive", false);
  const Value* attribute = arg(a, 2, "attribute");
  List items = iterate(v);
  std::vector<std::pair<Value, size_t>> keyed;
  for (size_t k = 0; k < items.size(); ++k)
    keyed.emplace_back(sort_key(attribute ? attr_path(items[k], to_str(*attribute)) : items[k], case_sensitive), k);
  std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
    int c = compare(x.first, y.first, "<");
    return reverse ? c > 0 : c < 0;
  });
  List out;
  for (const auto& kv : keyed) out.push_back(items[kv.second]);
  return Value::make_list(std::move(out));
}

Value do_min_max(const Value& v, const CallArgs& a, bool want_max) {
  bool case_sensitive = bool_arg(a, 0, "case_sensitive", false);
  const Value* attribute = arg(a, 1, "attribute");
  List items = iterate(v);
  if (items.empty()) return Value::undefined(std::string("No aggregated item, sequence was empty."));
  size_t best = 0;
  auto key = [&](size_t k) {
    return sort_key(attribute ? attr_path(items[k], to_str(*attribute)) : items[k], case_sensitive);
  };
  for (size_t k = 1; k < items.size(); ++k) {
    int c = compare(key(k), key(best), want_max ? ">" : "<");
    if (want_max ? c > 0 : c < 0) best = k;
  }
  return items[best];
}

Value do_map(Interpreter& in, const Value& v, const CallArgs& a) {
  List out;
  if (!truthy(v)) return Value::make_generator({});  // Jinja: `if value:` before iterating
  if (a.args.empty()) {
    const Value* attribute = a.kwarg("attribute");
    if (!attribute) throw lowrank::error("map needs a filter name or attribute=");
    const Value* dflt = a.kwarg("default");
    for (const Value& item : iterate(v)) {
      Value x = attr_path(item, to_str(*attribute));
      out.push_back(x.is_undefined() && dflt ? *dflt : x);
    }
    return Value::make_generator(std::move(out));
  }
  const std::string& filter = need_string(a.args[0], "filter name");
  if (!is_known_filter(filter)) throw lowrank::error(unknown_filter_message(filter));
  CallArgs rest;
  rest.args.assign(a.args.begin() + 1, a.args.end());
  rest.kwargs = a.kwargs;
  for (const Value& item : iterate(v)) out.push_back(apply_filter(in, filter, item, rest));
  return Value::make_generator(std::move(out));
}

Value do_unique(const Value& v, const CallArgs& a) {
  bool case_sensitive = bool_arg(a, 0, "case_sensitive", false);
  const Value* attribute = arg(a, 1, "attribute");
  List out, seen;
  for (const Value& item : iterate(v)) {
    Value key = sort_key(attribute ? attr_path(item, to_str(*attribute)) : item, case_sensitive);
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, key); })) {
      seen.push_back(key);
      out.push_back(item);
    }
  }
  return Value::make_generator(std::move(out));
}

Value do_dictsort(const Value& v, const CallArgs& a) {
  if (!v.is_dict()) throw lowrank::error("dictsort needs a mapping, not '", type_name(v), "'");
  bool case_sensitive = bool_arg(a, 0, "case_sensitive", false);
  std::string by = arg(a, 1, "by") ? to_str(*arg(a, 1, "by")) : "key";
  bool reverse = bool_arg(a, 2, "reverse", false);
  if (by != "key" && by != "value") throw lowrank::error("dictsort: by must be 'key' or 'value'");
  auto items = v.dict->items;
  std::stable_sort(items.begin(), items.end(), [&](const auto& x, const auto& y) {
    const Value& kx = by == "key" ? x.first : x.second;
    const Value& ky = by == "key" ? y.first : y.second;
    int c = compare(sort_key(kx, case_sensitive), sort_key(ky, case_sensitive), "<");
    return reverse ? c > 0 : c < 0;
  });
  List out;
  for (const auto& kv : items) out.push_back(Value::make_list({kv.first, kv.second}, true));
  return Value::make_list(std::move(out));
}

Value do_sum(const Value& v, const CallArgs& a) {
  const Value* attribute = arg(a, 0, "attribute");
  Value total = arg(a, 1, "start") ? *arg(a, 1, "start") : Value::integer(0);
  for (const Value& item : iterate(v))
    total = binary_op("+", total, attribute ? attr_path(item, to_str(*attribute)) : item);
  return total;
}

Value do_join(const Value& v, const CallArgs& a) {
  std::string sep = arg(a, 0, "d") ? to_str(*arg(a, 0, "d")) : "";
  const Value* attribute = arg(a, 1, "attribute");
  std::string out;
  bool first = true;
  for (const Value& item : iterate(v)) {
    if (!first) out += sep;
    first = false;
    out += to_str(attribute ? attr_path(item, to_str(*attribute)) : item);
  }
  return Value::string(std::move(out));
}

Value do_reverse(const Value& v) {
  if (v.is_string()) {
    std::u32string u = pystr::decode(v.s);
    std::reverse(u.begin(), u.end());
    return Value::string(pystr::encode(u));
  }
  List items = iterate(v);
  std::reverse(items.begin(), items.end());
  return Value::make_generator(std::move(items));  // reversed(): an iterator
}

}  // namespace

bool is_known_filter(std::string_view name) { return in(kFilters, name); }
bool is_known_test(std::string_view name) { return in(kTests, name); }

std::string unknown_filter_message(std::string_view name) {
  if (in(kUnsupportedFilters, name))
    return "the Jinja filter '" + std::string(name) + "' is not supported by lowrank's chat-template interpreter";
  return "No filter named '" + std::string(name) + "'.";
}

std::string unknown_test_message(std::string_view name) { return "No test named '" + std::string(name) + "'."; }

Value apply_filter(Interpreter& in, std::string_view name, const Value& v, const CallArgs& a) {
  // Filters that accept Undefined (Jinja passes it through to them unchanged).
  if (name == "default" || name == "d") {
    const Value* dflt = arg(a, 0, "default_value");
    if (v.is_undefined() || (bool_arg(a, 1, "boolean", false) && !truthy(v))) return dflt ? *dflt : Value::string("");
    return v;
  }
  if (name == "length" || name == "count") return Value::integer(length(v));
  if (name == "string") return Value::string(soft_str(v));
  if (name == "safe") return Value::string(soft_str(v));
  if (name == "list") return Value::make_list(iterate(v));
  if (name == "items") {
    return lazily([&] {
      if (v.is_undefined()) return Value::make_generator({});
      if (!v.is_dict()) throw lowrank::error("Can only get item pairs from a mapping.");
      List out;
      for (const auto& kv : v.dict->items) out.push_back(Value::make_list({kv.first, kv.second}, true));
      return Value::make_generator(std::move(out));
    });
  }
  if (name == "trim") {
    const Value* chars = arg(a, 0, "chars");
    std::string set = chars && !chars->is_none() ? to_str(*chars) : std::string();
    return Value::string(pystr::strip(soft_str(v), chars && !chars->is_none() ? &set : nullptr, true, true));
  }
  if (name == "upper") return Value::string(pystr::upper(soft_str(v)));
  if (name == "lower") return Value::string(pystr::lower(soft_str(v)));
  if (name == "capitalize") return Value::string(pystr::capitalize(soft_str(v)));
  if (name == "title") return Value::string(jinja_title(soft_str(v)));
  if (name == "replace") {
    const Value* old_v = arg(a, 0, "old");
    const Value* new_v = arg(a, 1, "new");
    if (!old_v || !new_v) throw lowrank::error("replace needs the old and new strings");
    const Value* count = arg(a, 2, "count");
    int64_t n = count && !count->is_none() ? to_index(*count, "count") : -1;
    return Value::string(pystr::replace(soft_str(v), to_str(*old_v), to_str(*new_v), n));
  }
  if (name == "join") return do_join(v, a);
  if (name == "first") {
    if (v.is_sequence_list())
      return v.list->empty() ? Value::undefined("No first item, sequence was empty.") : v.list->front();
    List items = iterate(v);
    return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
  }
  if (name == "last") {
    if (v.is_undefined()) return Value::undefined("No last item, sequence was empty.");
    if (v.generator) throw lowrank::error("'generator' object is not reversible");
    List items = iterate(v);
    return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
  }
  if (name == "tojson") return do_tojson(v, a);
  if (name == "selectattr" || name == "rejectattr")
    return lazily([&] { return select_items(in, v, a, true, name == "selectattr"); });
  if (name == "select" || name == "reject")
    return lazily([&] { return select_items(in, v, a, false, name == "select"); });
  if (name == "map") return lazily([&] { return do_map(in, v, a); });
  if (name == "unique") return lazily([&] { return do_unique(v, a); });
  if (name == "sort") return do_sort(v, a);
  if (name == "reverse") return do_reverse(v);
  if (name == "dictsort") return do_dictsort(v, a);
  if (name == "sum") return do_sum(v, a);
  if (name == "min" || name == "max") return do_min_max(v, a, name == "max");
  if (name == "abs") {
    if (!v.is_number()) throw lowrank::error("bad operand type for abs(): '", type_name(v), "'");
    return v.kind == Kind::Float ? Value::number(std::fabs(v.f)) : Value::integer(std::llabs(v.as_int()));
  }
  if (name == "int") return do_int(v, a);
  if (name == "float") return do_float(v, a);
  if (name == "round") return do_round(v, a);
  if (name == "wordcount") {
    int64_t words = 0;
    bool in_word = false;
    for (char32_t c : pystr::decode(soft_str(v))) {
      bool w = c == '_' || (c < 0x80 ? std::isalnum(static_cast<int>(c)) != 0 : !pystr::is_space(c));
      if (w && !in_word) ++words;
      in_word = w;
    }
    return Value::integer(words);
  }
  if (name == "center") {
    int64_t width = arg(a, 0, "width") ? to_index(*arg(a, 0, "width"), "width") : 80;
    std::string s = soft_str(v);
    int64_t len = pystr::length(s);
    if (width <= len) return Value::string(s);
    int64_t total = width - len, left = total / 2 + (total & width & 1);
    return Value::string(std::string(left, ' ') + s + std::string(total - left, ' '));
  }
  if (name == "indent") return do_indent(v, a);
  if (name == "format") {
    if (!a.kwargs.empty()) {
      Dict d;
      for (const auto& [k, x] : a.kwargs) d.set(Value::string(k), x);
      return Value::string(percent_format(soft_str(v), Value::make_dict(std::move(d))));
    }
    return Value::string(percent_format(soft_str(v), Value::make_list(a.args, true)));
  }
  if (name == "escape" || name == "e" || name == "forceescape") return Value::string(html_escape(soft_str(v)));
  if (name == "attr") {  // plain getattr: dict keys are not attributes
    std::string attr = to_str(a.args.empty() ? Value() : a.args[0]);
    if (v.kind == Kind::Namespace || has_method(v, attr)) return get_attr(v, attr);
    return Value::undefined("'" + type_name(v) + " object' has no attribute '" + attr + "'");
  }
  if (name == "pprint") return Value::string(repr(v));
  throw lowrank::error(unknown_filter_message(name));
}

bool apply_test(Interpreter& in, std::string_view name, const Value& v, const CallArgs& a) {
  auto other = [&]() -> const Value& {
    if (a.args.empty()) throw lowrank::error("test '", name, "' needs an argument");
    return a.args[0];
  };
  if (name == "defined") return !v.is_undefined();
  if (name == "undefined") return v.is_undefined();
  if (name == "none") return v.is_none();
  if (name == "boolean") return v.kind == Kind::Bool;
  if (name == "true") return v.kind == Kind::Bool && v.b;
  if (name == "false") return v.kind == Kind::Bool && !v.b;
  if (name == "integer") return v.kind == Kind::Int;
  if (name == "float") return v.kind == Kind::Float;
  if (name == "number") return v.is_number();
  if (name == "string") return v.is_string();
  if (name == "mapping") return v.is_dict();
  if (name == "iterable") return v.is_string() || v.is_list() || v.is_dict() || v.is_undefined();
  if (name == "sequence") return v.is_string() || v.is_sequence_list() || v.is_dict() || v.is_undefined();
  if (name == "callable") return v.kind == Kind::Callable;
  if (name == "escaped") return false;
  if (name == "eq" || name == "equalto" || name == "==") return equals(v, other());
  if (name == "ne" || name == "!=") return !equals(v, other());
  if (name == "lt" || name == "lessthan" || name == "<") return compare(v, other(), "<") < 0;
  if (name == "le" || name == "<=") return compare(v, other(), "<=") <= 0;
  if (name == "gt" || name == "greaterthan" || name == ">") return compare(v, other(), ">") > 0;
  if (name == "ge" || name == ">=") return compare(v, other(), ">=") >= 0;
  if (name == "in") return contains(other(), v);
  // Python: value % 2 == 1, value % num == 0 (floats allowed).
  if (name == "odd") return equals(binary_op("%", v, Value::integer(2)), Value::integer(1));
  if (name == "even") return equals(binary_op("%", v, Value::integer(2)), Value::integer(0));
  if (name == "divisibleby") return equals(binary_op("%", v, other()), Value::integer(0));
  if (name == "lower" || name == "upper") {
    std::string s = soft_str(v);
    bool any_cased = false;
    for (char32_t c : pystr::decode(s)) {
      if (!pystr::is_cased(c)) continue;
      any_cased = true;
      if (name == "lower" ? pystr::is_upper_char(c) : !pystr::is_upper_char(c)) return false;
    }
    return any_cased;
  }
  if (name == "sameas") {
    const Value& o = other();
    if (v.kind != o.kind) return false;
    switch (v.kind) {
      case Kind::None:
      case Kind::Undefined:
        return true;
      case Kind::Bool:
        return v.b == o.b;
      case Kind::Int:
        return v.i == o.i;  // CPython caches small ints; good enough
      case Kind::List:
        return v.list == o.list;
      case Kind::Dict:
      case Kind::Namespace:
        return v.dict == o.dict;
      case Kind::Callable:
        return v.fn == o.fn;
      default:
        return false;
    }
  }
  if (name == "filter") return is_known_filter(to_str(other()));
  if (name == "test") return is_known_test(to_str(other()));
  (void)in;
  throw lowrank::error(unknown_test_message(name));
}

}  // namespace lowrank::tok::jinja
