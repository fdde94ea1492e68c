#include "chat_template_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>

#include "chat_template_strings.h"
#include "lowrank/core/error.h"

namespace lowrank::tok::jinja {

using Kind = Value::Kind;

Value Value::undefined(std::string why) {
  Value v;
  v.s = std::move(why);
  return v;
}
Value Value::none() {
  Value v;
  v.kind = Kind::None;
  return v;
}
Value Value::boolean(bool x) {
  Value v;
  v.kind = Kind::Bool;
  v.b = x;
  return v;
}
Value Value::integer(int64_t x) {
  Value v;
  v.kind = Kind::Int;
  v.i = x;
  return v;
}
Value Value::number(double x) {
  Value v;
  v.kind = Kind::Float;
  v.f = x;
  return v;
}

namespace {
thread_local int64_t g_work_left = INT64_MAX;  // no render running: unlimited
}  // namespace

WorkBudget::WorkBudget(int64_t units) : saved_(g_work_left) { g_work_left = units; }
WorkBudget::~WorkBudget() { g_work_left = saved_; }

void charge_work(int64_t units) {
  if (g_work_left == INT64_MAX) return;
  g_work_left -= units;
  if (g_work_left < 0) {
    g_work_left = 0;
    throw lowrank::error("the template did more work than a chat prompt needs (a runaway loop?); stopped");
  }
}

Value Value::string(std::string x) {
  if (x.size() > kMaxStringBytes)
    throw lowrank::error("a string of ", x.size(), " bytes: over the template limit of ", kMaxStringBytes);
  charge_work(static_cast<int64_t>(x.size() / 4096) + 1);
  Value v;
  v.kind = Kind::String;
  v.s = std::move(x);
  return v;
}
Value Value::make_list(List items, bool tuple) {
  if (items.size() > kMaxListItems)
    throw lowrank::error("a list of ", items.size(), " items: over the template limit of ", kMaxListItems);
  charge_work(static_cast<int64_t>(items.size()) + 1);
  Value v;
  v.kind = Kind::List;
  v.tuple = tuple;
  v.list = std::make_shared<const List>(std::move(items));
  return v;
}
Value Value::make_generator(List items) {
  Value v = make_list(std::move(items));
  v.generator = true;
  return v;
}
Value Value::make_dict(Dict d) {
  Value v;
  v.kind = Kind::Dict;
  v.dict = std::make_shared<Dict>(std::move(d));
  return v;
}
Value Value::make_namespace(Dict d) {
  Value v = make_dict(std::move(d));
  v.kind = Kind::Namespace;
  return v;
}
Value Value::callable(std::string name, NativeFn fn, bool macro) {
  Value v;
  v.kind = Kind::Callable;
  v.fn = std::make_shared<const Callable>(Callable{std::move(name), std::move(fn), macro});
  return v;
}

const Value* Dict::get(const Value& key) const {
  for (const auto& kv : items)
    if (equals(kv.first, key)) return &kv.second;
  return nullptr;
}
const Value* Dict::get(std::string_view key) const {
  for (const auto& kv : items)
    if (kv.first.kind == Kind::String && kv.first.s == key) return &kv.second;
  return nullptr;
}
void Dict::set(const Value& key, Value v) {
  for (auto& kv : items)
    if (equals(kv.first, key)) {
      kv.second = std::move(v);
      return;
    }
  items.emplace_back(key, std::move(v));
}

const Value* CallArgs::kwarg(std::string_view name) const {
  for (const auto& kv : kwargs)
    if (kv.first == name) return &kv.second;
  return nullptr;
}
const Value* CallArgs::get(size_t pos, std::string_view name) const {
  if (pos < args.size()) return &args[pos];
  return kwarg(name);
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
    case Kind::None:
      return false;
    case Kind::Bool:
      return v.b;
    case Kind::Int:
      return v.i != 0;
    case Kind::Float:
      return v.f != 0;
    case Kind::String:
      return !v.s.empty();
    case Kind::List:
      return v.generator || !v.list->empty();
    case Kind::Dict:
      return !v.dict->items.empty();
    case Kind::Namespace:
    case Kind::Callable:
      return true;
  }
  return false;
}

std::string float_repr(double d) {
  if (std::isnan(d)) return "nan";
  if (std::isinf(d)) return d < 0 ? "-inf" : "inf";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, d, std::chars_format::scientific);
  std::string sci(buf, res.ptr);  // shortest round-trip digits: "-1.2345e+17"
  std::string sign;
  if (sci[0] == '-') {
    sign = "-";
    sci.erase(0, 1);
  }
  size_t epos = sci.find('e');
  int exp = std::stoi(sci.substr(epos + 1));
  std::string digits = sci.substr(0, epos);
  digits.erase(std::remove(digits.begin(), digits.end(), '.'), digits.end());
  // Python's repr switches to exponent form when the decimal point is far away.
  if (exp < -4 || exp >= 16) {
    std::string out = sign + digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char ebuf[16];
    std::snprintf(ebuf, sizeof ebuf, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    return out + ebuf;
  }
  if (exp < 0) return sign + "0." + std::string(-exp - 1, '0') + digits;
  std::string int_part = digits.substr(0, std::min<size_t>(digits.size(), exp + 1));
  if (int_part.size() < static_cast<size_t>(exp + 1)) int_part.append(exp + 1 - int_part.size(), '0');
  std::string frac = digits.size() > static_cast<size_t>(exp + 1) ? digits.substr(exp + 1) : "0";
  return sign + int_part + "." + frac;
}

std::string repr(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
      return "Undefined";
    case Kind::String:
      return pystr::repr(v.s);
    case Kind::List: {
      if (v.generator) return "<generator object>";
      std::string out = v.tuple ? "(" : "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += ", ";
        out += repr((*v.list)[k]);
      }
      if (v.tuple && v.list->size() == 1) out += ",";
      return out + (v.tuple ? ")" : "]");
    }
    case Kind::Dict: {
      std::string out = "{";
      bool first = true;
      for (const auto& kv : v.dict->items) {
        if (!first) out += ", ";
        first = false;
        out += repr(kv.first) + ": " + repr(kv.second);
      }
      return out + "}";
    }
    default:
      return to_str(v);
  }
}

std::string to_str(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
      return "";
    case Kind::None:
      return "None";
    case Kind::Bool:
      return v.b ? "True" : "False";
    case Kind::Int:
      return std::to_string(v.i);
    case Kind::Float:
      return float_repr(v.f);
    case Kind::String:
      return v.s;
    case Kind::List:
    case Kind::Dict:
      return repr(v);
    case Kind::Namespace: {
      Value d = v;
      d.kind = Kind::Dict;
      return "<Namespace " + repr(d) + ">";
    }
    case Kind::Callable:
      return v.fn->macro ? "<Macro '" + v.fn->name + "'>" : "<built-in function " + v.fn->name + ">";
  }
  return "";
}

std::string type_name(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
      return "Undefined";
    case Kind::None:
      return "NoneType";
    case Kind::Bool:
      return "bool";
    case Kind::Int:
      return "int";
    case Kind::Float:
      return "float";
    case Kind::String:
      return "str";
    case Kind::List:
      return v.generator ? "generator" : v.tuple ? "tuple" : "list";
    case Kind::Dict:
      return "dict";
    case Kind::Namespace:
      return "Namespace";
    case Kind::Callable:
      return "function";
  }
  return "?";
}

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Kind::Float || b.kind == Kind::Float) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::Undefined:
    case Kind::None:
      return true;
    case Kind::String:
      return a.s == b.s;
    case Kind::List: {
      if (a.generator || b.generator) return a.list == b.list;
      if (a.tuple != b.tuple || a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equals((*a.list)[k], (*b.list)[k])) return false;
      return true;
    }
    case Kind::Dict: {
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& kv : a.dict->items) {
        const Value* other = b.dict->get(kv.first);
        if (!other || !equals(kv.second, *other)) return false;
      }
      return true;
    }
    case Kind::Namespace:
      return a.dict == b.dict;
    case Kind::Callable:
      return a.fn == b.fn;
    default:
      return false;
  }
}

int compare(const Value& a, const Value& b, std::string_view op) {
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  if (a.is_number() && b.is_number()) {
    if (a.kind == Kind::Float || b.kind == Kind::Float) {
      double x = a.as_double(), y = b.as_double();
      return x < y ? -1 : x > y ? 1 : 0;
    }
    int64_t x = a.as_int(), y = b.as_int();
    return x < y ? -1 : x > y ? 1 : 0;
  }
  if (a.kind == Kind::String && b.kind == Kind::String) return a.s < b.s ? -1 : a.s > b.s ? 1 : 0;
  if (a.is_sequence_list() && b.is_sequence_list() && a.tuple == b.tuple) {
    size_t n = std::min(a.list->size(), b.list->size());
    for (size_t k = 0; k < n; ++k) {
      const Value &x = (*a.list)[k], &y = (*b.list)[k];
      if (!equals(x, y)) return compare(x, y, op);
    }
    return a.list->size() < b.list->size() ? -1 : a.list->size() > b.list->size() ? 1 : 0;
  }
  throw lowrank::error("'", op, "' not supported between instances of '", type_name(a), "' and '", type_name(b), "'");
}

void fail_undefined(const Value& v) { throw lowrank::Error(v.s.empty() ? std::string("undefined value used") : v.s); }

List iterate(const Value& v) {
  if (v.kind == Kind::List) charge_work(static_cast<int64_t>(v.list->size()));
  else if (v.kind == Kind::Dict) charge_work(static_cast<int64_t>(v.dict->items.size()));
  else if (v.kind == Kind::String) charge_work(static_cast<int64_t>(v.s.size()));
  switch (v.kind) {
    case Kind::Undefined:
      return {};
    case Kind::List:
      if (v.generator && !v.s.empty()) throw lowrank::Error(v.s);  // a deferred filter error
      return *v.list;
    case Kind::Dict: {
      List keys;
      for (const auto& kv : v.dict->items) keys.push_back(kv.first);
      return keys;
    }
    case Kind::String: {
      List chars;
      for (char32_t c : pystr::decode(v.s)) {
        std::string one;
        pystr::append_utf8(one, c);
        chars.push_back(Value::string(std::move(one)));
      }
      return chars;
    }
    default:
      throw lowrank::error("'", type_name(v), "' object is not iterable");
  }
}

int64_t length(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
      return 0;
    case Kind::String:
      return pystr::length(v.s);
    case Kind::List:
      if (v.generator) throw lowrank::error("object of type 'generator' has no len()");
      return static_cast<int64_t>(v.list->size());
    case Kind::Dict:
    case Kind::Namespace:
      return static_cast<int64_t>(v.dict->items.size());
    default:
      throw lowrank::error("object of type '", type_name(v), "' has no len()");
  }
}

namespace {

template <typename Json>
Value from_json_impl(const Json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return Value::none();
    case nlohmann::json::value_t::boolean:
      return Value::boolean(j.template get<bool>());
    case nlohmann::json::value_t::number_integer:
      return Value::integer(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      auto u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value::number(static_cast<double>(u));
      return Value::integer(static_cast<int64_t>(u));
    }
    case nlohmann::json::value_t::number_float:
      return Value::number(j.template get<double>());
    case nlohmann::json::value_t::string:
      return Value::string(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      List items;
      items.reserve(j.size());
      for (const auto& e : j) items.push_back(from_json_impl(e));
      return Value::make_list(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      Dict d;
      d.items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it)
        d.items.emplace_back(Value::string(it.key()), from_json_impl(it.value()));
      return Value::make_dict(std::move(d));
    }
    default:
      throw lowrank::error("chat template variables: unsupported JSON value (binary or discarded)");
  }
}

void json_string(std::string& out, std::string_view s, bool ensure_ascii) {
  static const char* hex = "0123456789abcdef";
  auto u_escape = [&](char32_t c) {
    out += "\\u";
    for (int k = 3; k >= 0; --k) out.push_back(hex[(c >> (4 * k)) & 0xf]);
  };
  out.push_back('"');
  for (char32_t c : pystr::decode(s)) {
    switch (c) {
      case '"':
        out += "\\\"";
        continue;
      case '\\':
        out += "\\\\";
        continue;
      case '\n':
        out += "\\n";
        continue;
      case '\r':
        out += "\\r";
        continue;
      case '\t':
        out += "\\t";
        continue;
      case '\b':
        out += "\\b";
        continue;
      case '\f':
        out += "\\f";
        continue;
      default:
        break;
    }
    if (c < 0x20 || (ensure_ascii && c > 0x7e)) {
      if (c > 0xffff) {  // surrogate pair, as Python writes it
        char32_t v = c - 0x10000;
        u_escape(0xd800 | (v >> 10));
        u_escape(0xdc00 | (v & 0x3ff));
      } else {
        u_escape(c);
      }
    } else {
      pystr::append_utf8(out, c);
    }
  }
  out.push_back('"');
}

std::string json_float(double d) {
  if (std::isnan(d)) return "NaN";
  if (std::isinf(d)) return d < 0 ? "-Infinity" : "Infinity";
  return float_repr(d);
}

std::string json_key(const Value& k) {
  switch (k.kind) {
    case Kind::String:
      return k.s;
    case Kind::Int:
      return std::to_string(k.i);
    case Kind::Bool:
      return k.b ? "true" : "false";
    case Kind::Float:
      return json_float(k.f);
    case Kind::None:
      return "null";
    default:
      throw lowrank::error("keys must be str, int, float, bool or None, not ", type_name(k));
  }
}

struct JsonWriter {
  const JsonOptions& opt;
  std::string item_sep, key_sep;
  std::string out;

  void newline(int level) {
    out.push_back('\n');
    for (int k = 0; k < level; ++k) out += *opt.indent;
  }

  void write(const Value& v, int level) {
    switch (v.kind) {
      case Kind::None:
        out += "null";
        return;
      case Kind::Bool:
        out += v.b ? "true" : "false";
        return;
      case Kind::Int:
        out += std::to_string(v.i);
        return;
      case Kind::Float:
        out += json_float(v.f);
        return;
      case Kind::String:
        json_string(out, v.s, opt.ensure_ascii);
        return;
      case Kind::List: {
        if (v.generator) throw lowrank::error("Object of type generator is not JSON serializable");
        if (v.list->empty()) {
          out += "[]";
          return;
        }
        out.push_back('[');
        for (size_t k = 0; k < v.list->size(); ++k) {
          if (k) out += item_sep;
          if (opt.indent) newline(level + 1);
          write((*v.list)[k], level + 1);
        }
        if (opt.indent) newline(level);
        out.push_back(']');
        return;
      }
      case Kind::Dict: {
        if (v.dict->items.empty()) {
          out += "{}";
          return;
        }
        std::vector<const std::pair<Value, Value>*> items;
        for (const auto& kv : v.dict->items) items.push_back(&kv);
        if (opt.sort_keys)
          std::stable_sort(items.begin(), items.end(),
                           [](auto* a, auto* b) { return compare(a->first, b->first, "<") < 0; });
        out.push_back('{');
        for (size_t k = 0; k < items.size(); ++k) {
          if (k) out += item_sep;
          if (opt.indent) newline(level + 1);
          json_string(out, json_key(items[k]->first), opt.ensure_ascii);
          out += key_sep;
          write(items[k]->second, level + 1);
        }
        if (opt.indent) newline(level);
        out.push_back('}');
        return;
      }
      default:
        throw lowrank::error("Object of type ", type_name(v), " is not JSON serializable");
    }
  }
};

}  // namespace

Value from_json(const nlohmann::json& j) { return from_json_impl(j); }
Value from_json(const nlohmann::ordered_json& j) { return from_json_impl(j); }

std::string to_json(const Value& v, const JsonOptions& options) {
  JsonWriter w{options, options.indent ? "," : ", ", ": ", {}};
  if (options.separators) {
    w.item_sep = options.separators->first;
    w.key_sep = options.separators->second;
  }
  w.write(v, 0);
  return std::move(w.out);
}

}  // namespace lowrank::tok::jinja
