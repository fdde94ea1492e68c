// Operators, attribute/item access and string formatting with Python semantics.
#include <cmath>
#include <cstdio>

#include "chat_template_builtins.h"
#include "chat_template_strings.h"
#include "lowrank/core/error.h"

namespace lowrank::tok::jinja {

using Kind = Value::Kind;

int64_t to_index(const Value& v, std::string_view what) {
  if (v.is_int_like()) return v.as_int();
  if (v.is_undefined()) fail_undefined(v);
  throw lowrank::error(what, " must be an integer, not '", type_name(v), "'");
}

const std::string& need_string(const Value& v, std::string_view what) {
  if (v.is_string()) return v.s;
  if (v.is_undefined()) fail_undefined(v);
  throw lowrank::error(what, " must be a string, not '", type_name(v), "'");
}

namespace {

[[noreturn]] void unsupported(std::string_view op, const Value& a, const Value& b) {
  throw lowrank::error("unsupported operand type(s) for ", op, ": '", type_name(a), "' and '", type_name(b), "'");
}

// Python ints do not overflow; int64 results that would are refused rather than wrapped.
Value checked_int(bool overflow, const int64_t& v) {
  if (overflow) throw lowrank::error("integer overflow in chat template arithmetic");
  return Value::integer(v);
}

// Python's floor division and modulo (results take the sign of the divisor).
int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}
double float_mod(double a, double b) {
  double m = std::fmod(a, b);
  if (m != 0 && ((m < 0) != (b < 0))) m += b;
  return m;
}

// Refused before anything is built (Value::string and make_list would refuse the result).
Value repeat(const Value& seq, int64_t times) {
  if (times <= 0) return seq.is_string() ? Value::string("") : Value::make_list({}, seq.tuple);
  if (seq.is_string()) {
    if (static_cast<double>(seq.s.size()) * static_cast<double>(times) > kMaxStringBytes)
      throw lowrank::error("string repetition too large");
    std::string out;
    out.reserve(seq.s.size() * times);
    for (int64_t k = 0; k < times; ++k) out += seq.s;
    return Value::string(std::move(out));
  }
  if (static_cast<double>(seq.list->size()) * static_cast<double>(times) > kMaxListItems)
    throw lowrank::error("list repetition too large");
  List out;
  for (int64_t k = 0; k < times; ++k) out.insert(out.end(), seq.list->begin(), seq.list->end());
  return Value::make_list(std::move(out), seq.tuple);
}

}  // namespace

Value binary_op(std::string_view op, const Value& a, const Value& b) {
  // str % x is str's own formatting, tried before x could object (even an Undefined x).
  if (op == "%" && a.is_string()) return Value::string(percent_format(a.s, b));
  if (a.is_undefined()) fail_undefined(a);
  if (b.is_undefined()) fail_undefined(b);
  bool ints = a.is_int_like() && b.is_int_like();
  bool nums = a.is_number() && b.is_number();
  int64_t r = 0;
  if (op == "+") {
    if (ints) {
      bool overflow = __builtin_add_overflow(a.as_int(), b.as_int(), &r);
      return checked_int(overflow, r);
    }
    if (nums) return Value::number(a.as_double() + b.as_double());
    if (a.is_string() && b.is_string()) return Value::string(a.s + b.s);
    if (a.is_sequence_list() && b.is_sequence_list() && a.tuple == b.tuple) {
      List out = *a.list;
      out.insert(out.end(), b.list->begin(), b.list->end());
      return Value::make_list(std::move(out), a.tuple);
    }
    if (a.is_string() || a.is_sequence_list())
      throw lowrank::error("can only concatenate ", type_name(a), " (not \"", type_name(b), "\") to ", type_name(a));
    unsupported("+", a, b);
  }
  if (op == "-") {
    if (ints) {
      bool overflow = __builtin_sub_overflow(a.as_int(), b.as_int(), &r);
      return checked_int(overflow, r);
    }
    if (nums) return Value::number(a.as_double() - b.as_double());
    unsupported("-", a, b);
  }
  if (op == "*") {
    if (ints) {
      bool overflow = __builtin_mul_overflow(a.as_int(), b.as_int(), &r);
      return checked_int(overflow, r);
    }
    if (nums) return Value::number(a.as_double() * b.as_double());
    if ((a.is_string() || a.is_sequence_list()) && b.is_int_like()) return repeat(a, b.as_int());
    if ((b.is_string() || b.is_sequence_list()) && a.is_int_like()) return repeat(b, a.as_int());
    unsupported("*", a, b);
  }
  if (op == "/") {
    if (!nums) unsupported("/", a, b);
    if (b.as_double() == 0) throw lowrank::error("division by zero");
    return Value::number(a.as_double() / b.as_double());
  }
  if (op == "//") {
    if (!nums) unsupported("//", a, b);
    if (ints) {
      if (b.as_int() == 0) throw lowrank::error("integer division or modulo by zero");
      return Value::integer(floor_div(a.as_int(), b.as_int()));
    }
    if (b.as_double() == 0) throw lowrank::error("float floor division by zero");
    return Value::number(std::floor(a.as_double() / b.as_double()));
  }
  if (op == "%") {
    if (a.is_string()) return Value::string(percent_format(a.s, b));
    if (!nums) unsupported("%", a, b);
    if (ints) {
      if (b.as_int() == 0) throw lowrank::error("integer division or modulo by zero");
      int64_t x = a.as_int(), y = b.as_int();
      return Value::integer(x - floor_div(x, y) * y);
    }
    if (b.as_double() == 0) throw lowrank::error("float modulo");
    return Value::number(float_mod(a.as_double(), b.as_double()));
  }
  if (op == "**") {
    if (!nums) unsupported("** or pow()", a, b);
    if (a.as_double() == 0 && b.as_double() < 0) throw lowrank::error("0.0 cannot be raised to a negative power");
    if (ints && b.as_int() >= 0) {
      int64_t base = a.as_int(), result = 1;
      for (int64_t e = b.as_int(); e > 0; --e)
        if (__builtin_mul_overflow(result, base, &result))
          throw lowrank::error("integer overflow in chat template arithmetic");
      return Value::integer(result);
    }
    double r = std::pow(a.as_double(), b.as_double());
    if (std::isinf(r) && std::isfinite(a.as_double()) && std::isfinite(b.as_double()))
      throw lowrank::error("(34, 'Numerical result out of range')");  // Python's OverflowError
    return Value::number(r);
  }
  throw lowrank::error("unknown operator ", op);
}

bool contains(const Value& container, const Value& item) {
  switch (container.kind) {
    case Kind::Undefined:
      return false;
    case Kind::String:
      if (item.is_undefined()) fail_undefined(item);
      if (!item.is_string())
        throw lowrank::error("'in <string>' requires string as left operand, not ", type_name(item));
      return container.s.find(item.s) != std::string::npos;
    case Kind::List:
      for (const auto& x : iterate(container))
        if (equals(x, item)) return true;
      return false;
    case Kind::Dict:
      if (item.is_sequence_list() || item.is_dict()) throw lowrank::error("unhashable type: '", type_name(item), "'");
      return container.dict->get(item) != nullptr;
    default:
      throw lowrank::error("argument of type '", type_name(container), "' is not iterable");
  }
}

namespace {

Value bound_method(const Value& obj, const std::string& name) {
  return Value::callable(name,
                         [obj, name](Interpreter&, const CallArgs& args) { return *call_method(obj, name, args); });
}

Value no_attribute(const Value& obj, const std::string& name) {
  if (obj.is_none()) return Value::undefined("'None' has no attribute '" + name + "'");
  return Value::undefined("'" + type_name(obj) + " object' has no attribute '" + name + "'");
}

}  // namespace

Value get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind) {
    case Kind::Undefined:
      fail_undefined(obj);
    case Kind::Namespace:
      if (const Value* v = obj.dict->get(name)) return *v;
      return no_attribute(obj, name);
    case Kind::Dict:
      if (has_method(obj, name)) return bound_method(obj, name);  // Python getattr: methods first
      if (const Value* v = obj.dict->get(name)) return *v;
      return no_attribute(obj, name);
    default:
      if (has_method(obj, name)) return bound_method(obj, name);
      return no_attribute(obj, name);
  }
}

Value get_item(const Value& obj, const Value& key) {
  switch (obj.kind) {
    case Kind::Undefined:
      fail_undefined(obj);
    case Kind::Dict:
      if (const Value* v = obj.dict->get(key)) return *v;
      break;
    case Kind::List:
    case Kind::String:
      if (key.is_int_like() && !obj.generator) {
        int64_t n = obj.is_list() ? static_cast<int64_t>(obj.list->size()) : pystr::length(obj.s);
        int64_t idx = key.as_int();
        if (idx < 0) idx += n;
        if (idx < 0 || idx >= n)
          return Value::undefined(type_name(obj) + " object has no element " + std::to_string(key.as_int()));
        if (obj.is_list()) return (*obj.list)[idx];
        if (pystr::is_ascii(obj.s)) return Value::string(obj.s.substr(idx, 1));
        std::string one;
        pystr::append_utf8(one, pystr::decode(obj.s)[idx]);
        return Value::string(std::move(one));
      }
      break;
    default:
      break;
  }
  // Jinja falls back to attribute lookup for string keys (so ns['x'] and d['items'] work).
  if (key.is_string()) return get_attr(obj, key.s);
  return Value::undefined("'" + type_name(obj) + " object' has no element " + repr(key));
}

Value get_slice(const Value& obj, const Value* start, const Value* stop, const Value* step) {
  if (obj.is_undefined()) fail_undefined(obj);
  // Jinja compiles slices to plain Python subscripts: no Undefined fallback.
  if (obj.is_dict()) throw lowrank::error("unhashable type: 'slice'");
  if (!obj.is_sequence_list() && !obj.is_string())
    throw lowrank::error("'", type_name(obj), "' object is not subscriptable");
  int64_t bounds[3];
  const int64_t* ptr[3] = {nullptr, nullptr, nullptr};
  const Value* args[3] = {start, stop, step};
  for (int k = 0; k < 3; ++k)
    if (args[k] && !args[k]->is_none()) {
      if (args[k]->is_undefined()) fail_undefined(*args[k]);
      if (!args[k]->is_int_like()) throw lowrank::error("slice indices must be integers or None");
      bounds[k] = args[k]->as_int();
      ptr[k] = &bounds[k];
    }
  int64_t st = ptr[2] ? *ptr[2] : 1;
  if (obj.is_list()) {
    List out;
    for (int64_t i : pystr::slice_indices(static_cast<int64_t>(obj.list->size()), ptr[0], ptr[1], st))
      out.push_back((*obj.list)[i]);
    return Value::make_list(std::move(out), obj.tuple);
  }
  if (obj.is_string()) {
    if (pystr::is_ascii(obj.s)) {
      std::string out;
      for (int64_t i : pystr::slice_indices(static_cast<int64_t>(obj.s.size()), ptr[0], ptr[1], st))
        out.push_back(obj.s[i]);
      return Value::string(std::move(out));
    }
    std::u32string u = pystr::decode(obj.s), out;
    for (int64_t i : pystr::slice_indices(static_cast<int64_t>(u.size()), ptr[0], ptr[1], st)) out.push_back(u[i]);
    return Value::string(pystr::encode(out));
  }
  return Value::undefined();  // not reached
}

// ---- string formatting -----------------------------------------------------------------------

namespace {

std::string pad(std::string s, int64_t width, char align, char fill = ' ') {
  int64_t len = pystr::length(s);
  if (width <= len) return s;
  int64_t total = width - len;
  std::string f(1, fill);
  auto rep = [&](int64_t n) {
    std::string out;
    for (int64_t k = 0; k < n; ++k) out += f;
    return out;
  };
  if (align == '<') return s + rep(total);
  if (align == '^') return rep(total / 2) + s + rep(total - total / 2);
  return rep(total) + s;
}

// One numeric conversion through snprintf (flags/width/precision already validated).
std::string c_format(const std::string& flags, int64_t width, int64_t precision, char conv, const Value& v) {
  std::string spec = "%" + flags;
  if (width >= 0) spec += std::to_string(width);
  if (precision >= 0) spec += "." + std::to_string(precision);
  char buf[512];
  if (conv == 'd' || conv == 'i' || conv == 'u' || conv == 'x' || conv == 'X' || conv == 'o') {
    if (!v.is_number()) throw lowrank::error("%", conv, " format: a number is required, not ", type_name(v));
    spec += std::string("ll") + (conv == 'i' || conv == 'u' ? 'd' : conv);
    std::snprintf(buf, sizeof buf, spec.c_str(), static_cast<long long>(v.as_double()));
  } else {
    if (!v.is_number()) throw lowrank::error("must be real number, not ", type_name(v));
    if (precision < 0) spec += ".6";
    spec.push_back(conv);
    std::snprintf(buf, sizeof buf, spec.c_str(), v.as_double());
  }
  return buf;
}

}  // namespace

std::string percent_format(const std::string& fmt, const Value& args) {
  List positional;
  const Dict* mapping = nullptr;
  // Python treats a non-tuple argument with __getitem__ (dict, list, Undefined) as a mapping:
  // no "not all arguments converted" error when the format uses none of it.
  bool mapping_like = args.is_dict() || (args.is_list() && !args.tuple) || args.is_undefined();
  if (args.is_list() && args.tuple)
    positional = *args.list;
  else if (args.is_dict())
    mapping = args.dict.get();
  else
    positional.push_back(args);
  size_t next = 0;
  std::string out;
  for (size_t k = 0; k < fmt.size(); ++k) {
    if (fmt[k] != '%') {
      out.push_back(fmt[k]);
      continue;
    }
    if (++k >= fmt.size()) throw lowrank::error("incomplete format");
    if (fmt[k] == '%') {
      out.push_back('%');
      continue;
    }
    const Value* arg = nullptr;
    if (fmt[k] == '(') {
      size_t close = fmt.find(')', k);
      if (close == std::string::npos || !mapping) throw lowrank::error("format requires a mapping");
      arg = mapping->get(fmt.substr(k + 1, close - k - 1));
      if (!arg) throw lowrank::error("KeyError: '", fmt.substr(k + 1, close - k - 1), "'");
      k = close + 1;
    }
    std::string flags;
    while (k < fmt.size() && std::string_view("-+ 0#").find(fmt[k]) != std::string_view::npos)
      flags.push_back(fmt[k++]);
    int64_t width = -1, precision = -1;
    while (k < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[k])))
      width = std::max<int64_t>(width, 0) * 10 + (fmt[k++] - '0');
    if (k < fmt.size() && fmt[k] == '.') {
      precision = 0;
      ++k;
      while (k < fmt.size() && std::isdigit(static_cast<unsigned char>(fmt[k])))
        precision = precision * 10 + (fmt[k++] - '0');
    }
    while (k < fmt.size() && (fmt[k] == 'l' || fmt[k] == 'h' || fmt[k] == 'L')) ++k;
    if (k >= fmt.size()) throw lowrank::error("incomplete format");
    char conv = fmt[k];
    if (!arg) {
      if (next >= positional.size()) throw lowrank::error("not enough arguments for format string");
      arg = &positional[next++];
      if (arg->is_undefined()) fail_undefined(*arg);
    }
    bool left = flags.find('-') != std::string::npos;
    switch (conv) {
      case 's':
      case 'r':
      case 'a': {
        std::string s = conv == 's' ? to_str(*arg) : repr(*arg);
        if (precision >= 0) s = pystr::encode(pystr::decode(s).substr(0, precision));
        out += pad(s, width, left ? '<' : '>');
        break;
      }
      case 'c': {
        std::string s = arg->is_string() ? arg->s : std::string();
        if (arg->is_int_like()) pystr::append_utf8(s, static_cast<char32_t>(arg->as_int()));
        out += pad(s, width, left ? '<' : '>');
        break;
      }
      case 'd':
      case 'i':
      case 'u':
      case 'x':
      case 'X':
      case 'o':
      case 'e':
      case 'E':
      case 'f':
      case 'F':
      case 'g':
      case 'G':
        out += c_format(flags, width, precision, conv, *arg);
        break;
      default:
        throw lowrank::error("unsupported format character '", std::string(1, conv), "'");
    }
  }
  if (!mapping_like && next < positional.size())
    throw lowrank::error("not all arguments converted during string formatting");
  return out;
}

namespace {

// Applies a str.format spec: [[fill]align][sign][0][width][,][.precision][type].
std::string format_spec(const Value& v, const std::string& spec) {
  if (spec.empty()) return to_str(v);
  size_t k = 0;
  char fill = ' ', align = 0;
  auto is_align = [](char c) { return c == '<' || c == '>' || c == '^' || c == '='; };
  if (spec.size() >= 2 && is_align(spec[1])) {
    fill = spec[0];
    align = spec[1];
    k = 2;
  } else if (is_align(spec[0])) {
    align = spec[0];
    k = 1;
  }
  std::string flags;
  if (k < spec.size() && (spec[k] == '+' || spec[k] == '-' || spec[k] == ' ')) flags.push_back(spec[k++]);
  if (k < spec.size() && spec[k] == '0') {
    if (!align) {
      fill = '0';
      align = '=';
    }
    ++k;
  }
  int64_t width = -1, precision = -1;
  while (k < spec.size() && std::isdigit(static_cast<unsigned char>(spec[k])))
    width = std::max<int64_t>(width, 0) * 10 + (spec[k++] - '0');
  if (k < spec.size() && spec[k] == ',') throw lowrank::error("',' in format specs is not supported");
  if (k < spec.size() && spec[k] == '.') {
    precision = 0;
    ++k;
    while (k < spec.size() && std::isdigit(static_cast<unsigned char>(spec[k])))
      precision = precision * 10 + (spec[k++] - '0');
  }
  char type = k < spec.size() ? spec[k++] : 0;
  if (k != spec.size()) throw lowrank::error("invalid format specifier '", spec, "'");
  std::string body;
  if (type == 0 || type == 's') {
    body = v.is_number() && !v.is_string() && type == 0 && precision >= 0 ? c_format(flags, -1, precision, 'g', v)
                                                                          : to_str(v);
    if (type == 's' && precision >= 0) body = pystr::encode(pystr::decode(body).substr(0, precision));
    if (!align) align = v.is_number() ? '>' : '<';
  } else {
    char conv = type == 'n' ? 'g' : type == '%' ? 'f' : type;
    Value num = type == '%' ? Value::number(v.as_double() * 100) : v;
    body = c_format(flags, -1, precision, conv, num);
    if (type == '%') body += "%";
    if (!align) align = '>';
  }
  if (align == '=') {  // pad after the sign
    std::string sign;
    if (!body.empty() && (body[0] == '-' || body[0] == '+' || body[0] == ' ')) {
      sign = body.substr(0, 1);
      body.erase(0, 1);
    }
    return sign + pad(body, width - static_cast<int64_t>(sign.size()), '>', fill);
  }
  return pad(body, width, align, fill);
}

}  // namespace

std::string str_format(const std::string& fmt, const CallArgs& args) {
  std::string out;
  size_t auto_index = 0;
  for (size_t k = 0; k < fmt.size(); ++k) {
    char c = fmt[k];
    if (c == '}') {
      if (k + 1 < fmt.size() && fmt[k + 1] == '}') ++k;
      out.push_back('}');
      continue;
    }
    if (c != '{') {
      out.push_back(c);
      continue;
    }
    if (k + 1 < fmt.size() && fmt[k + 1] == '{') {
      out.push_back('{');
      ++k;
      continue;
    }
    size_t close = fmt.find('}', k);
    if (close == std::string::npos) throw lowrank::error("single '{' encountered in format string");
    std::string field = fmt.substr(k + 1, close - k - 1);
    k = close;
    std::string spec, conv;
    if (size_t colon = field.find(':'); colon != std::string::npos) {
      spec = field.substr(colon + 1);
      field.resize(colon);
    }
    if (size_t bang = field.find('!'); bang != std::string::npos) {
      conv = field.substr(bang + 1);
      field.resize(bang);
    }
    const Value* v = nullptr;
    if (field.empty()) {
      if (auto_index >= args.args.size())
        throw lowrank::error("Replacement index ", auto_index, " out of range for positional args tuple");
      v = &args.args[auto_index++];
    } else if (std::isdigit(static_cast<unsigned char>(field[0]))) {
      size_t idx = std::stoul(field);
      if (idx >= args.args.size())
        throw lowrank::error("Replacement index ", idx, " out of range for positional args tuple");
      v = &args.args[idx];
    } else {
      v = args.kwarg(field);
      if (!v) throw lowrank::error("KeyError: '", field, "'");
    }
    Value shown = *v;
    if (conv == "r" || conv == "a") shown = Value::string(repr(*v));
    if (conv == "s") shown = Value::string(to_str(*v));
    out += format_spec(shown, spec);
  }
  return out;
}

}  // namespace lowrank::tok::jinja
