#include "chat_template_eval.h"

#include "chat_template_builtins.h"
#include "chat_template_lexer.h"
#include "lowrank/core/error.h"

namespace lowrank::tok::jinja {

namespace {

using EK = Expr::Kind;
using SK = Stmt::Kind;

// An Error that already says where in the template it happened (so outer nodes don't re-wrap).
class LocatedError : public lowrank::Error {
 public:
  using lowrank::Error::Error;
};

// Deep enough for real templates (Hermes' json_to_python_type recurses per schema level),
// shallow enough to fail cleanly on runaway recursion instead of overflowing the stack.
constexpr int kMaxMacroDepth = 64;
// The work one render may do (WorkBudget's units): a chat prompt takes thousands to tens of
// thousands (loops over messages and tool schemas); a hostile template's nested loops would take
// forever. At most a few seconds of work before the Error.
constexpr int64_t kMaxWork = 4'000'000;

struct ScopePush {
  Scope& scope;
  ScopePush(Scope& s, std::shared_ptr<Frame> f) : scope(s) { scope.push_back(std::move(f)); }
  ~ScopePush() { scope.pop_back(); }
};

}  // namespace

const Value* Frame::find(const std::string& name) const {
  for (const auto& kv : vars)
    if (kv.first == name) return &kv.second;
  return nullptr;
}

void Frame::set(const std::string& name, Value v) {
  for (auto& kv : vars)
    if (kv.first == name) {
      kv.second = std::move(v);
      return;
    }
  vars.emplace_back(name, std::move(v));
}

Interpreter::Interpreter(const Program& program, const Value& vars) : program_(program) {
  auto root = std::make_shared<Frame>();
  if (vars.kind == Value::Kind::Dict)
    for (const auto& kv : vars.dict->items)
      if (kv.first.is_string()) root->set(kv.first.s, kv.second);
  scope_.push_back(std::move(root));
}

std::string Interpreter::render() {
  std::string out;
  out_ = &out;
  const WorkBudget budget(kMaxWork);
  try {
    exec_body(program_.body);
  } catch (const TemplateRaised& r) {
    throw lowrank::Error(r.message);
  }
  return out;
}

Value Interpreter::lookup(const std::string& name) const {
  for (auto it = scope_.rbegin(); it != scope_.rend(); ++it)
    if (const Value* v = (*it)->find(name)) return *v;
  Value g = global_function(name);
  if (!g.is_undefined()) return g;
  return Value::undefined("'" + name + "' is undefined");
}

Value Interpreter::call(const Value& callee, const CallArgs& args) {
  if (callee.kind == Value::Kind::Callable) return callee.fn->fn(*this, args);
  if (callee.is_undefined()) fail_undefined(callee);
  throw lowrank::error("'", type_name(callee), "' object is not callable");
}

// ---- statements ------------------------------------------------------------------------------

Interpreter::Flow Interpreter::exec_body(const Body& body) {
  for (const auto& s : body) {
    Flow f = exec(*s);
    if (f != Flow::Normal) return f;
  }
  return Flow::Normal;
}

std::string Interpreter::capture(const Body& body) {
  std::string buf;
  std::string* saved = out_;
  out_ = &buf;
  try {
    exec_body(body);
  } catch (...) {
    out_ = saved;
    throw;
  }
  out_ = saved;
  return buf;
}

Value Interpreter::apply_filters(const std::vector<FilterSpec>& filters, Value v) {
  for (const auto& f : filters) v = apply_filter(*this, f.name, v, eval_args(f.args, f.kwargs));
  return v;
}

void Interpreter::step() { charge_work(1); }

Interpreter::Flow Interpreter::exec(const Stmt& s) {
  try {
    step();
    switch (s.kind) {
      case SK::Text:
      case SK::Output:
        *out_ += s.kind == SK::Text ? s.text : to_str(eval(*s.expr));
        if (out_->size() > kMaxStringBytes)
          throw lowrank::error("the rendered text passed the template limit of ", kMaxStringBytes, " bytes");
        return Flow::Normal;
      case SK::If:
        for (const auto& [cond, body] : s.branches)
          if (truthy(eval(*cond))) return exec_body(body);
        return exec_body(s.else_body);
      case SK::For:
        return exec_for(s);
      case SK::Set: {
        Value v = eval(*s.expr);
        Frame& frame = *scope_.back();
        if (!s.unpack) {
          frame.set(s.targets[0], std::move(v));
        } else {
          bind_targets(frame, s, v);
        }
        return Flow::Normal;
      }
      case SK::SetAttr: {
        Value ns = lookup(s.targets[0]);
        if (ns.kind != Value::Kind::Namespace)
          throw lowrank::error("cannot assign attribute '", s.targets[1], "' on '", s.targets[0],
                               "': it is not a namespace() object");
        ns.dict->set(Value::string(s.targets[1]), eval(*s.expr));
        return Flow::Normal;
      }
      case SK::SetBlock:
        scope_.back()->set(s.targets[0], apply_filters(s.filters, Value::string(capture(s.body))));
        return Flow::Normal;
      case SK::Macro: {
        const Stmt* macro = &s;
        // Weak references: the macro lives in one of these frames, so strong ones would form
        // a cycle. Frames are shared, so later `set`s in them stay visible to the macro.
        std::vector<std::weak_ptr<Frame>> captured(scope_.begin(), scope_.end());
        scope_.back()->set(s.text, Value::callable(
                                       s.text,
                                       [macro, captured](Interpreter& in, const CallArgs& args) {
                                         return in.call_macro(*macro, captured, args);
                                       },
                                       true));
        return Flow::Normal;
      }
      case SK::Break:
        return Flow::Break;
      case SK::Continue:
        return Flow::Continue;
      case SK::With: {
        auto frame = std::make_shared<Frame>();
        for (const auto& [name, value] : s.params) frame->set(name, eval(*value));
        ScopePush push(scope_, frame);
        return exec_body(s.body);
      }
      case SK::FilterBlock:
        *out_ += to_str(apply_filters(s.filters, Value::string(capture(s.body))));
        return Flow::Normal;
      case SK::Generation:
        return exec_body(s.body);
    }
  } catch (const LocatedError&) {
    throw;
  } catch (const lowrank::Error& e) {
    throw LocatedError("chat template " + where(s.line, s.col) + ": " + e.what());
  }
  return Flow::Normal;
}

void Interpreter::bind_targets(Frame& frame, const Stmt& s, const Value& item) {
  if (!s.unpack) {
    frame.set(s.targets[0], item);
    return;
  }
  List parts = iterate(item);
  if (parts.size() < s.targets.size())
    throw lowrank::error("not enough values to unpack (expected ", s.targets.size(), ", got ", parts.size(), ")");
  if (parts.size() > s.targets.size())
    throw lowrank::error("too many values to unpack (expected ", s.targets.size(), ")");
  for (size_t k = 0; k < parts.size(); ++k) frame.set(s.targets[k], parts[k]);
}

Interpreter::Flow Interpreter::exec_for(const Stmt& s) {
  List items = iterate(eval(*s.expr));
  if (s.cond) {  // `for x in xs if cond`: filtered first, so loop.length/last see the result
    List kept;
    for (auto& item : items) {
      auto frame = std::make_shared<Frame>();
      bind_targets(*frame, s, item);
      ScopePush push(scope_, frame);
      if (truthy(eval(*s.cond))) kept.push_back(std::move(item));
    }
    items = std::move(kept);
  }
  if (items.empty()) return exec_body(s.else_body);
  const int64_t n = static_cast<int64_t>(items.size());
  for (int64_t idx = 0; idx < n; ++idx) {
    step();  // an iteration counts even with an empty body
    auto frame = std::make_shared<Frame>();
    bind_targets(*frame, s, items[idx]);
    Dict loop;
    auto put = [&](const char* key, Value v) { loop.items.emplace_back(Value::string(key), std::move(v)); };
    put("index", Value::integer(idx + 1));
    put("index0", Value::integer(idx));
    put("revindex", Value::integer(n - idx));
    put("revindex0", Value::integer(n - idx - 1));
    put("first", Value::boolean(idx == 0));
    put("last", Value::boolean(idx == n - 1));
    put("length", Value::integer(n));
    put("depth", Value::integer(1));
    put("depth0", Value::integer(0));
    if (idx > 0) put("previtem", items[idx - 1]);
    if (idx + 1 < n) put("nextitem", items[idx + 1]);
    put("cycle", Value::callable("cycle", [idx](Interpreter&, const CallArgs& a) {
          if (a.args.empty()) throw lowrank::error("loop.cycle() needs at least one argument");
          return a.args[static_cast<size_t>(idx) % a.args.size()];
        }));
    frame->set("loop", Value::make_dict(std::move(loop)));
    ScopePush push(scope_, frame);
    Flow f = exec_body(s.body);
    if (f == Flow::Break) break;
  }
  return Flow::Normal;
}

Value Interpreter::call_macro(const Stmt& macro, const std::vector<std::weak_ptr<Frame>>& captured,
                              const CallArgs& args) {
  if (macro_depth_ >= kMaxMacroDepth)
    throw lowrank::error("macro '", macro.text, "' recursed more than ", kMaxMacroDepth, " levels deep");
  Scope saved = std::move(scope_);
  scope_.clear();
  for (const auto& weak : captured)
    if (auto f = weak.lock()) scope_.push_back(std::move(f));
  auto frame = std::make_shared<Frame>();
  scope_.push_back(frame);
  ++macro_depth_;
  struct Restore {
    Interpreter& in;
    Scope& saved;
    ~Restore() {
      in.scope_ = std::move(saved);
      --in.macro_depth_;
    }
  } restore{*this, saved};

  List varargs;
  for (size_t k = 0; k < args.args.size(); ++k) {
    if (k < macro.params.size())
      frame->set(macro.params[k].first, args.args[k]);
    else
      varargs.push_back(args.args[k]);
  }
  Dict extra_kwargs;
  for (const auto& [key, value] : args.kwargs) {
    bool is_param = false;
    for (const auto& p : macro.params) is_param |= p.first == key;
    if (is_param)
      frame->set(key, value);
    else
      extra_kwargs.set(Value::string(key), value);
  }
  for (const auto& [name, dflt] : macro.params)
    if (!frame->find(name))
      frame->set(name, dflt ? eval(*dflt) : Value::undefined("parameter '" + name + "' was not provided"));
  frame->set("varargs", Value::make_list(std::move(varargs), true));
  frame->set("kwargs", Value::make_dict(std::move(extra_kwargs)));
  return Value::string(capture(macro.body));
}

// ---- expressions -----------------------------------------------------------------------------

CallArgs Interpreter::eval_args(const std::vector<ExprPtr>& args, const KwargExprs& kwargs) {
  CallArgs out;
  out.args.reserve(args.size());
  for (const auto& a : args) out.args.push_back(eval(*a));
  for (const auto& [key, value] : kwargs) out.kwargs.emplace_back(key, eval(*value));
  return out;
}

bool Interpreter::compare_op(const std::string& op, const Value& a, const Value& b) {
  if (op == "==") return equals(a, b);
  if (op == "!=") return !equals(a, b);
  if (op == "in") return contains(b, a);
  if (op == "not in") return !contains(b, a);
  int c = compare(a, b, op);
  if (op == "<") return c < 0;
  if (op == "<=") return c <= 0;
  if (op == ">") return c > 0;
  return c >= 0;
}

Value Interpreter::eval(const Expr& e) {
  try {
    step();
    return eval_impl(e);
  } catch (const LocatedError&) {
    throw;
  } catch (const lowrank::Error& err) {
    throw LocatedError("chat template " + where(e.line, e.col) + ": " + err.what());
  }
}

Value Interpreter::eval_impl(const Expr& e) {
  switch (e.kind) {
    case EK::Literal:
      return e.literal;
    case EK::Name:
      return lookup(e.name);
    case EK::List:
    case EK::Tuple: {
      List items;
      items.reserve(e.items.size());
      for (const auto& item : e.items) items.push_back(eval(*item));
      return Value::make_list(std::move(items), e.kind == EK::Tuple);
    }
    case EK::Dict: {
      Dict d;
      for (size_t k = 0; k + 1 < e.items.size(); k += 2) d.set(eval(*e.items[k]), eval(*e.items[k + 1]));
      return Value::make_dict(std::move(d));
    }
    case EK::Attr:
      return get_attr(eval(*e.a), e.name);
    case EK::Item:
      return get_item(eval(*e.a), eval(*e.b));
    case EK::Slice: {
      Value obj = eval(*e.a);
      Value parts[3];
      const Value* ptr[3] = {nullptr, nullptr, nullptr};
      for (int k = 0; k < 3; ++k)
        if (e.items[k]) {
          parts[k] = eval(*e.items[k]);
          ptr[k] = &parts[k];
        }
      return get_slice(obj, ptr[0], ptr[1], ptr[2]);
    }
    case EK::Call: {
      // obj.method(...): Python's getattr finds methods before dict keys.
      if (e.a->kind == EK::Attr) {
        Value obj = eval(*e.a->a);
        if (obj.is_undefined()) fail_undefined(obj);
        if (has_method(obj, e.a->name)) return *call_method(obj, e.a->name, eval_args(e.items, e.kwargs));
        Value callee = get_attr(obj, e.a->name);
        return call(callee, eval_args(e.items, e.kwargs));
      }
      Value callee = eval(*e.a);
      return call(callee, eval_args(e.items, e.kwargs));
    }
    case EK::Filter:
      return apply_filter(*this, e.filter.name, eval(*e.a), eval_args(e.filter.args, e.filter.kwargs));
    case EK::Test: {
      bool r = apply_test(*this, e.filter.name, eval(*e.a), eval_args(e.filter.args, e.filter.kwargs));
      return Value::boolean(e.negated ? !r : r);
    }
    case EK::Not:
      return Value::boolean(!truthy(eval(*e.a)));
    case EK::Neg:
    case EK::Pos: {
      Value v = eval(*e.a);
      if (v.is_undefined()) fail_undefined(v);
      if (!v.is_number())
        throw lowrank::error("bad operand type for unary ", e.kind == EK::Neg ? "-" : "+", ": '", type_name(v), "'");
      if (e.kind == EK::Pos) return v.kind == Value::Kind::Bool ? Value::integer(v.as_int()) : v;
      return v.kind == Value::Kind::Float ? Value::number(-v.f) : Value::integer(-v.as_int());
    }
    case EK::Binary: {
      Value a = eval(*e.a);
      return binary_op(e.name, a, eval(*e.b));
    }
    case EK::And: {
      Value a = eval(*e.a);
      return truthy(a) ? eval(*e.b) : a;
    }
    case EK::Or: {
      Value a = eval(*e.a);
      return truthy(a) ? a : eval(*e.b);
    }
    case EK::Compare: {
      Value left = eval(*e.items[0]);
      for (size_t k = 0; k < e.ops.size(); ++k) {
        Value right = eval(*e.items[k + 1]);
        if (!compare_op(e.ops[k], left, right)) return Value::boolean(false);
        left = std::move(right);
      }
      return Value::boolean(true);
    }
    case EK::Concat: {
      std::string s;
      for (const auto& item : e.items) s += to_str(eval(*item));
      return Value::string(std::move(s));
    }
    case EK::CondExpr:
      if (truthy(eval(*e.a))) return eval(*e.b);
      if (e.c) return eval(*e.c);
      return Value::undefined("the inline if-expression evaluated to false and no else section was defined");
  }
  return Value::undefined();
}

}  // namespace lowrank::tok::jinja
