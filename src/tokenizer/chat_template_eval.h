#pragma once
// Evaluator of parsed chat templates. Scoping follows Jinja: a for-loop iteration, a macro call
// and a {% with %} block get their own frame (so `set` inside a loop does not leak out; that
// is what namespace() is for), while if-blocks share the enclosing frame.
#include <memory>
#include <string>
#include <vector>

#include "chat_template_ast.h"

namespace lowrank::tok::jinja {

struct Frame {
  std::vector<std::pair<std::string, Value>> vars;
  const Value* find(const std::string& name) const;
  void set(const std::string& name, Value v);
};
using Scope = std::vector<std::shared_ptr<Frame>>;

class Interpreter {
 public:
  // `vars` must be a Dict: the template's variables (messages, add_generation_prompt, ...).
  Interpreter(const Program& program, const Value& vars);
  // Renders the template. Throws Error; raise_exception's message comes through unchanged.
  std::string render();

  Value call(const Value& callee, const CallArgs& args);
  Value lookup(const std::string& name) const;

 private:
  enum class Flow { Normal, Break, Continue };

  const Program& program_;
  Scope scope_;
  std::string* out_ = nullptr;
  int macro_depth_ = 0;

  void step();  // one statement, expression or loop iteration: charged to the render's WorkBudget
  Flow exec_body(const Body& body);
  Flow exec(const Stmt& s);
  Flow exec_for(const Stmt& s);
  void bind_targets(Frame& frame, const Stmt& s, const Value& item);
  std::string capture(const Body& body);
  Value apply_filters(const std::vector<FilterSpec>& filters, Value v);
  Value call_macro(const Stmt& macro, const std::vector<std::weak_ptr<Frame>>& captured, const CallArgs& args);

  Value eval(const Expr& e);
  Value eval_impl(const Expr& e);
  CallArgs eval_args(const std::vector<ExprPtr>& args, const KwargExprs& kwargs);
  bool compare_op(const std::string& op, const Value& a, const Value& b);
};

}  // namespace lowrank::tok::jinja
