#pragma once
// Values of the chat-template interpreter. They follow Python's data model, because HF chat
// templates are Jinja run by Python: `{{ true }}` prints "True", `[1, 'a']` prints "[1, 'a']",
// `1 == 1.0`, `'a' + 1` is an error, dicts keep insertion order, and an undefined name is an
// Undefined that prints as "" and is falsy but fails when used as a value (jinja2.Undefined).
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace lowrank::tok::jinja {

// A template comes with a model or an adapter folder, so it may be hostile: what it builds and
// how long it runs are bounded (far above what a chat prompt needs), so that it fails with an Error
// instead of taking the machine's memory or time. Value::string and Value::make_list refuse
// anything larger than these.
constexpr size_t kMaxStringBytes = size_t(1) << 26;  // 64 MiB of text
constexpr size_t kMaxListItems = size_t(1) << 20;

// The work a render may do, in units of roughly one statement or expression, one list item built
// or iterated, or 4 KiB of string built. Held by the render running on this thread (nothing is
// charged outside a render); charge_work throws an Error when it runs out.
class WorkBudget {
 public:
  explicit WorkBudget(int64_t units);
  ~WorkBudget();
  WorkBudget(const WorkBudget&) = delete;
  WorkBudget& operator=(const WorkBudget&) = delete;

 private:
  int64_t saved_;
};
void charge_work(int64_t units);

class Interpreter;
struct Value;
struct Dict;
struct Callable;
struct CallArgs;
using List = std::vector<Value>;
using NativeFn = std::function<Value(Interpreter&, const CallArgs&)>;

struct Value {
  enum class Kind : uint8_t { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Callable };
  Kind kind = Kind::Undefined;
  bool tuple = false;  // a List that came from a tuple: prints as (a, b), unequal to a list
  // A List standing for a Python generator/iterator (what select, map, items, reverse...
  // return in Jinja): always truthy, no len(), not subscriptable, not JSON. Computed eagerly.
  bool generator = false;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // String text; for Undefined, the error to raise if it is used as a value
  std::shared_ptr<const List> list;
  std::shared_ptr<Dict> dict;  // Dict (not mutated once built) or Namespace (mutable, shared)
  std::shared_ptr<const Callable> fn;

  static Value undefined(std::string why = {});
  static Value none();
  static Value boolean(bool v);
  static Value integer(int64_t v);
  static Value number(double v);
  static Value string(std::string v);
  static Value make_list(List items, bool tuple = false);
  static Value make_generator(List items);
  static Value make_dict(Dict d);
  static Value make_namespace(Dict d);
  static Value callable(std::string name, NativeFn fn, bool macro = false);

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_none() const { return kind == Kind::None; }
  bool is_string() const { return kind == Kind::String; }
  bool is_list() const { return kind == Kind::List; }
  bool is_sequence_list() const { return kind == Kind::List && !generator; }  // list or tuple
  bool is_dict() const { return kind == Kind::Dict; }
  bool is_int_like() const { return kind == Kind::Int || kind == Kind::Bool; }  // bool is an int
  bool is_number() const { return is_int_like() || kind == Kind::Float; }
  int64_t as_int() const {
    return kind == Kind::Bool ? (b ? 1 : 0) : kind == Kind::Float ? static_cast<int64_t>(f) : i;
  }
  double as_double() const { return kind == Kind::Float ? f : static_cast<double>(as_int()); }
};

struct Dict {
  std::vector<std::pair<Value, Value>> items;
  const Value* get(const Value& key) const;
  const Value* get(std::string_view key) const;
  void set(const Value& key, Value v);  // replaces in place or appends (insertion order)
};

struct Callable {
  std::string name;
  NativeFn fn;
  bool macro = false;
};

struct CallArgs {
  std::vector<Value> args;
  std::vector<std::pair<std::string, Value>> kwargs;
  const Value* kwarg(std::string_view name) const;
  // The argument at `pos`, or the keyword `name`, or nullptr: Python's positional-or-keyword.
  const Value* get(size_t pos, std::string_view name) const;
};

// Raised by raise_exception(): its message is passed through unchanged (no line prefix).
struct TemplateRaised {
  std::string message;
};

// ---- Python semantics ----------------------------------------------------------------------
bool truthy(const Value& v);
std::string to_str(const Value& v);  // str(v); what {{ v }} prints ("" for Undefined)
std::string repr(const Value& v);
std::string type_name(const Value& v);  // "int", "str", "NoneType", ... for error messages
std::string float_repr(double d);       // Python repr(float)
bool equals(const Value& a, const Value& b);
// Three-way comparison for < <= > >=; throws Error for unorderable types (e.g. int < str).
int compare(const Value& a, const Value& b, std::string_view op);
// Throws the Error an Undefined carries ("'x' is undefined").
[[noreturn]] void fail_undefined(const Value& v);
// Items of an iterable the way a for loop sees them (dict: keys; str: characters).
List iterate(const Value& v);
// len(v); throws for values without a length.
int64_t length(const Value& v);

Value from_json(const nlohmann::json& j);
Value from_json(const nlohmann::ordered_json& j);

// json.dumps as transformers' tojson filter calls it.
struct JsonOptions {
  bool ensure_ascii = false;
  std::optional<std::string> indent;  // nullopt: one line
  std::optional<std::pair<std::string, std::string>> separators;
  bool sort_keys = false;
};
std::string to_json(const Value& v, const JsonOptions& options);

}  // namespace lowrank::tok::jinja
