#include "chat_template_parser.h"

#include <algorithm>
#include <initializer_list>

#include "chat_template_builtins.h"
#include "chat_template_lexer.h"
#include "lowrank/core/error.h"

namespace lowrank::tok::jinja {

namespace {

using EK = Expr::Kind;
using SK = Stmt::Kind;

std::string describe(const Token& t) {
  switch (t.type) {
    case TokType::Text:
      return "template text";
    case TokType::VarBegin:
      return "'{{'";
    case TokType::VarEnd:
      return "end of print statement '}}'";
    case TokType::BlockBegin:
      return "'{%'";
    case TokType::BlockEnd:
      return "end of statement block '%}'";
    case TokType::String:
      return "string literal";
    case TokType::Eof:
      return "end of template";
    default:
      return "'" + t.text + "'";
  }
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  Program run() {
    Program p;
    std::string end;
    p.body = parse_body({}, end);
    return p;
  }

 private:
  std::vector<Token> t_;
  size_t k_ = 0;
  int loop_depth_ = 0;
  int depth_ = 0;  // nesting of expressions and blocks, bounded so hostile input cannot overflow the stack

  struct DepthGuard {
    Parser& p;
    explicit DepthGuard(Parser& parser) : p(parser) {
      if (++p.depth_ > kMaxDepth) p.fail(p.cur(), "template nests too deeply (over 256 levels)");
    }
    ~DepthGuard() { --p.depth_; }
  };
  static constexpr int kMaxDepth = 256;
  // Left-associative chains (a + b + c ..., x | f | g ...) deepen the tree without recursing here.
  void chain(int& extra) {
    if (depth_ + ++extra > kMaxDepth) fail(cur(), "template nests too deeply (over 256 levels)");
  }
  // Open blocks, innermost last, for "unexpected end of template" messages.
  std::vector<std::pair<std::string, int>> open_;

  const Token& cur() const { return t_[k_]; }
  const Token& peek(size_t ahead = 1) const { return t_[std::min(k_ + ahead, t_.size() - 1)]; }
  const Token& next() { return t_[k_ < t_.size() - 1 ? k_++ : k_]; }

  [[noreturn]] void fail(const Token& at, const std::string& msg) const {
    throw lowrank::error("chat template ", where(at.line, at.col), ": ", msg);
  }

  bool is_op(const char* op) const { return cur().type == TokType::Op && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == TokType::Name && cur().text == name; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    next();
    return true;
  }
  bool skip_name(const char* name) {
    if (!is_name(name)) return false;
    next();
    return true;
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) fail(cur(), std::string("expected '") + op + "', got " + describe(cur()));
  }
  void expect_block_end() {
    if (cur().type != TokType::BlockEnd) fail(cur(), "expected end of statement block '%}', got " + describe(cur()));
    next();
  }
  std::string expect_name(const char* what) {
    if (cur().type != TokType::Name) fail(cur(), std::string("expected ") + what + ", got " + describe(cur()));
    return next().text;
  }

  template <typename Node>
  static std::unique_ptr<Node> node(typename Node::Kind kind, const Token& at) {
    auto n = std::make_unique<Node>();
    n->kind = kind;
    n->line = at.line;
    n->col = at.col;
    return n;
  }

  // ---- statements ----------------------------------------------------------------------------

  // Parses statements until `{% <one of ends> ...`; leaves the cursor after that tag name and
  // stores it in `found`. With no ends, runs to the end of the template.
  Body parse_body(std::initializer_list<const char*> ends, std::string& found) {
    Body body;
    while (true) {
      const Token& t = cur();
      switch (t.type) {
        case TokType::Eof:
          if (ends.size()) {
            std::string want;
            for (const char* e : ends) want += (want.empty() ? "'" : " or '") + std::string(e) + "'";
            fail(t, "unexpected end of template; expected " + want + " to close the '" + open_.back().first +
                        "' block opened on line " + std::to_string(open_.back().second));
          }
          return body;
        case TokType::Text: {
          auto s = node<Stmt>(SK::Text, t);
          s->text = t.text;
          next();
          body.push_back(std::move(s));
          break;
        }
        case TokType::VarBegin: {
          auto s = node<Stmt>(SK::Output, t);
          next();
          s->expr = parse_tuple(true, false);
          if (cur().type != TokType::VarEnd)
            fail(cur(), "expected end of print statement '}}', got " + describe(cur()));
          next();
          body.push_back(std::move(s));
          break;
        }
        case TokType::BlockBegin: {
          const Token& name = peek();
          if (name.type == TokType::Name)
            for (const char* e : ends)
              if (name.text == e) {
                next();
                found = next().text;
                return body;
              }
          next();
          body.push_back(parse_statement());
          break;
        }
        default:
          fail(t, "unexpected " + describe(t));
      }
    }
  }

  StmtPtr parse_statement() {
    DepthGuard guard(*this);
    const Token& t = cur();
    if (t.type != TokType::Name) fail(t, "expected a tag name after '{%', got " + describe(t));
    const std::string& tag = t.text;
    if (tag == "for") return parse_for();
    if (tag == "if") return parse_if();
    if (tag == "set") return parse_set();
    if (tag == "macro") return parse_macro();
    if (tag == "with") return parse_with();
    if (tag == "filter") return parse_filter_block();
    if (tag == "generation") return parse_simple_block(SK::Generation, "endgeneration");
    if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) fail(t, "'" + tag + "' outside of a for loop");
      auto s = node<Stmt>(tag == "break" ? SK::Break : SK::Continue, t);
      next();
      expect_block_end();
      return s;
    }
    if (tag == "print") {
      auto s = node<Stmt>(SK::Output, t);
      next();
      s->expr = parse_tuple(true, false);
      expect_block_end();
      return s;
    }
    static const char* unsupported[] = {"call",  "include",    "import", "from",  "extends",
                                        "block", "autoescape", "do",     "trans", "raw"};
    for (const char* u : unsupported)
      if (tag == u) fail(t, "the '" + tag + "' tag is not supported by lowrank's chat-template interpreter");
    if (tag.rfind("end", 0) == 0 || tag == "else" || tag == "elif")
      fail(t, "unexpected '" + tag + "'" +
                  (open_.empty() ? std::string(" (no block is open)")
                                 : " (the innermost open block is '" + open_.back().first + "' from line " +
                                       std::to_string(open_.back().second) + ")"));
    fail(t, "unknown tag '" + tag + "'");
  }

  StmtPtr parse_for() {
    auto s = node<Stmt>(SK::For, cur());
    next();
    parse_targets(*s, "in");
    if (!skip_name("in")) fail(cur(), "expected 'in' in for loop, got " + describe(cur()));
    s->expr = parse_tuple(false, false);
    if (is_name("recursive")) fail(cur(), "recursive for loops are not supported");
    if (skip_name("if")) s->cond = parse_expression(true);
    expect_block_end();
    open_.emplace_back("for", s->line);
    ++loop_depth_;
    std::string end;
    s->body = parse_body({"endfor", "else"}, end);
    --loop_depth_;
    if (end == "else") {
      expect_block_end();
      s->else_body = parse_body({"endfor"}, end);
    }
    expect_block_end();
    open_.pop_back();
    return s;
  }

  // Loop or set targets: `x`, `x, y` or `(x, y)`.
  void parse_targets(Stmt& s, const char* stop) {
    bool paren = skip_op("(");
    while (true) {
      s.targets.push_back(expect_name("a variable name"));
      if (!skip_op(",")) break;
      s.unpack = true;
      if (is_name(stop) || is_op(")") || is_op("=")) break;
    }
    if (paren) {
      s.unpack = true;
      expect_op(")");
    }
  }

  StmtPtr parse_if() {
    auto s = node<Stmt>(SK::If, cur());
    next();
    open_.emplace_back("if", s->line);
    ExprPtr cond = parse_tuple(false, false);
    expect_block_end();
    while (true) {
      std::string end;
      Body body = parse_body({"elif", "else", "endif"}, end);
      s->branches.emplace_back(std::move(cond), std::move(body));
      if (end == "elif") {
        cond = parse_tuple(false, false);
        expect_block_end();
        continue;
      }
      if (end == "else") {
        expect_block_end();
        s->else_body = parse_body({"endif"}, end);
      }
      expect_block_end();
      break;
    }
    open_.pop_back();
    return s;
  }

  StmtPtr parse_set() {
    const Token& at = cur();
    next();
    // `set ns.attr = value` assigns a namespace attribute.
    if (cur().type == TokType::Name && peek().type == TokType::Op && peek().text == "." &&
        peek(2).type == TokType::Name) {
      auto s = node<Stmt>(SK::SetAttr, at);
      s->targets.push_back(next().text);
      next();
      s->targets.push_back(next().text);
      expect_op("=");
      s->expr = parse_tuple(true, false);
      expect_block_end();
      return s;
    }
    auto s = node<Stmt>(SK::Set, at);
    parse_targets(*s, "=");
    if (skip_op("=")) {
      s->expr = parse_tuple(true, false);
      expect_block_end();
      return s;
    }
    if (s->unpack) fail(cur(), "a block set takes a single name");
    s->kind = SK::SetBlock;
    while (skip_op("|")) s->filters.push_back(parse_filter_spec(true));
    expect_block_end();
    open_.emplace_back("set", s->line);
    std::string end;
    s->body = parse_body({"endset"}, end);
    expect_block_end();
    open_.pop_back();
    return s;
  }

  StmtPtr parse_macro() {
    auto s = node<Stmt>(SK::Macro, cur());
    next();
    s->text = expect_name("a macro name");
    expect_op("(");
    while (!is_op(")")) {
      if (!s->params.empty()) {
        expect_op(",");
        if (is_op(")")) break;
      }
      std::string param = expect_name("a parameter name");
      ExprPtr dflt;
      if (skip_op("=")) dflt = parse_expression(true);
      s->params.emplace_back(param, std::move(dflt));
    }
    expect_op(")");
    expect_block_end();
    open_.emplace_back("macro", s->line);
    int saved_depth = loop_depth_;
    loop_depth_ = 0;
    std::string end;
    s->body = parse_body({"endmacro"}, end);
    loop_depth_ = saved_depth;
    if (cur().type == TokType::Name && cur().text == s->text) next();  // {% endmacro name %}
    expect_block_end();
    open_.pop_back();
    return s;
  }

  StmtPtr parse_with() {
    auto s = node<Stmt>(SK::With, cur());
    next();
    while (cur().type != TokType::BlockEnd) {
      if (!s->params.empty()) expect_op(",");
      std::string name = expect_name("a variable name");
      expect_op("=");
      s->params.emplace_back(name, parse_expression(true));
    }
    expect_block_end();
    open_.emplace_back("with", s->line);
    std::string end;
    s->body = parse_body({"endwith"}, end);
    expect_block_end();
    open_.pop_back();
    return s;
  }

  StmtPtr parse_filter_block() {
    auto s = node<Stmt>(SK::FilterBlock, cur());
    next();
    s->filters.push_back(parse_filter_spec(true));
    while (skip_op("|")) s->filters.push_back(parse_filter_spec(true));
    expect_block_end();
    open_.emplace_back("filter", s->line);
    std::string end;
    s->body = parse_body({"endfilter"}, end);
    expect_block_end();
    open_.pop_back();
    return s;
  }

  StmtPtr parse_simple_block(SK kind, const char* end_tag) {
    auto s = node<Stmt>(kind, cur());
    std::string tag = next().text;
    expect_block_end();
    open_.emplace_back(tag, s->line);
    std::string end;
    s->body = parse_body({end_tag}, end);
    expect_block_end();
    open_.pop_back();
    return s;
  }

  // ---- expressions ---------------------------------------------------------------------------

  ExprPtr parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

  // A comma-separated list becomes a tuple: `{{ a, b }}`, `for x in a, b`.
  ExprPtr parse_tuple(bool with_condexpr, bool explicit_parens) {
    const Token& at = cur();
    std::vector<ExprPtr> items;
    bool is_tuple = false;
    while (true) {
      if (!items.empty()) expect_op(",");
      if (tuple_end()) break;
      items.push_back(parse_expression(with_condexpr));
      if (is_op(","))
        is_tuple = true;
      else
        break;
    }
    if (!is_tuple) {
      if (!items.empty()) return std::move(items[0]);
      if (!explicit_parens) fail(cur(), "expected an expression, got " + describe(cur()));
    }
    auto e = node<Expr>(EK::Tuple, at);
    e->items = std::move(items);
    return e;
  }

  bool tuple_end() const {
    TokType ty = cur().type;
    return ty == TokType::VarEnd || ty == TokType::BlockEnd || ty == TokType::Eof || is_op(")") || is_name("in") ||
           is_name("if") || is_name("recursive");
  }

  ExprPtr parse_condexpr() {
    DepthGuard guard(*this);
    ExprPtr expr = parse_or();
    int extra = 0;
    while (is_name("if")) {
      chain(extra);
      auto e = node<Expr>(EK::CondExpr, cur());
      next();
      e->a = parse_or();
      e->b = std::move(expr);
      if (skip_name("else")) e->c = parse_condexpr();
      expr = std::move(e);
    }
    return expr;
  }

  ExprPtr parse_or() {
    ExprPtr left = parse_and();
    int extra = 0;
    while (is_name("or")) {
      chain(extra);
      auto e = node<Expr>(EK::Or, cur());
      next();
      e->a = std::move(left);
      e->b = parse_and();
      left = std::move(e);
    }
    return left;
  }

  ExprPtr parse_and() {
    ExprPtr left = parse_not();
    int extra = 0;
    while (is_name("and")) {
      chain(extra);
      auto e = node<Expr>(EK::And, cur());
      next();
      e->a = std::move(left);
      e->b = parse_not();
      left = std::move(e);
    }
    return left;
  }

  ExprPtr parse_not() {
    DepthGuard guard(*this);
    if (is_name("not")) {
      auto e = node<Expr>(EK::Not, cur());
      next();
      e->a = parse_not();
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    const Token& at = cur();
    ExprPtr first = parse_math1();
    std::vector<ExprPtr> operands;
    std::vector<std::string> ops;
    while (true) {
      if (cur().type == TokType::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                        cur().text == "<=" || cur().text == ">" || cur().text == ">=")) {
        ops.push_back(next().text);
      } else if (skip_name("in")) {
        ops.push_back("in");
      } else if (is_name("not") && peek().type == TokType::Name && peek().text == "in") {
        next();
        next();
        ops.push_back("not in");
      } else {
        break;
      }
      operands.push_back(parse_math1());
    }
    if (ops.empty()) return first;
    auto e = node<Expr>(EK::Compare, at);
    e->items.push_back(std::move(first));
    for (auto& o : operands) e->items.push_back(std::move(o));
    e->ops = std::move(ops);
    return e;
  }

  ExprPtr binary(ExprPtr left, const Token& at, const std::string& op, ExprPtr right) {
    auto e = node<Expr>(EK::Binary, at);
    e->name = op;
    e->a = std::move(left);
    e->b = std::move(right);
    return e;
  }

  ExprPtr parse_math1() {
    ExprPtr left = parse_concat();
    int extra = 0;
    while (is_op("+") || is_op("-")) {
      chain(extra);
      Token at = next();
      left = binary(std::move(left), at, at.text, parse_concat());
    }
    return left;
  }

  ExprPtr parse_concat() {
    const Token& at = cur();
    ExprPtr first = parse_math2();
    if (!is_op("~")) return first;
    auto e = node<Expr>(EK::Concat, at);
    e->items.push_back(std::move(first));
    while (skip_op("~")) e->items.push_back(parse_math2());
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr left = parse_pow();
    int extra = 0;
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      chain(extra);
      Token at = next();
      left = binary(std::move(left), at, at.text, parse_pow());
    }
    return left;
  }

  ExprPtr parse_pow() {
    ExprPtr left = parse_unary(true);
    int extra = 0;
    while (is_op("**")) {
      chain(extra);
      Token at = next();
      left = binary(std::move(left), at, "**", parse_unary(true));
    }
    return left;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(*this);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      e = node<Expr>(is_op("-") ? EK::Neg : EK::Pos, cur());
      next();
      e->a = parse_unary(false);
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    switch (t.type) {
      case TokType::Name: {
        static const std::pair<const char*, int> constants[] = {{"true", 1},  {"True", 1}, {"false", 0},
                                                                {"False", 0}, {"none", 2}, {"None", 2}};
        for (const auto& [word, v] : constants)
          if (t.text == word) {
            auto e = node<Expr>(EK::Literal, t);
            e->literal = v == 2 ? Value::none() : Value::boolean(v == 1);
            next();
            return e;
          }
        auto e = node<Expr>(EK::Name, t);
        e->name = t.text;
        next();
        return e;
      }
      case TokType::String: {  // adjacent literals concatenate: 'a' 'b'
        auto e = node<Expr>(EK::Literal, t);
        std::string s;
        while (cur().type == TokType::String) s += next().text;
        e->literal = Value::string(std::move(s));
        return e;
      }
      case TokType::Integer:
      case TokType::Float: {
        auto e = node<Expr>(EK::Literal, t);
        e->literal = t.type == TokType::Integer ? Value::integer(t.ival) : Value::number(t.fval);
        next();
        return e;
      }
      case TokType::Op:
        if (t.text == "(") {
          next();
          ExprPtr e = parse_tuple(true, true);
          expect_op(")");
          return e;
        }
        if (t.text == "[") return parse_list();
        if (t.text == "{") return parse_dict();
        [[fallthrough]];
      default:
        fail(t, "unexpected " + describe(t) + " in expression");
    }
  }

  ExprPtr parse_list() {
    auto e = node<Expr>(EK::List, cur());
    expect_op("[");
    while (!is_op("]")) {
      if (!e->items.empty()) {
        expect_op(",");
        if (is_op("]")) break;
      }
      e->items.push_back(parse_expression(true));
    }
    expect_op("]");
    return e;
  }

  ExprPtr parse_dict() {
    auto e = node<Expr>(EK::Dict, cur());
    expect_op("{");
    while (!is_op("}")) {
      if (!e->items.empty()) {
        expect_op(",");
        if (is_op("}")) break;
      }
      e->items.push_back(parse_expression(true));
      expect_op(":");
      e->items.push_back(parse_expression(true));
    }
    expect_op("}");
    return e;
  }

  ExprPtr parse_postfix(ExprPtr e) {
    int extra = 0;
    while (true) {
      if (is_op(".") || is_op("[") || is_op("(")) chain(extra);
      if (is_op(".") || is_op("["))
        e = parse_subscript(std::move(e));
      else if (is_op("("))
        e = parse_call(std::move(e));
      else
        return e;
    }
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    int extra = 0;
    while (true) {
      if (is_op("|") || is_name("is") || is_op("(")) chain(extra);
      if (is_op("|")) {
        const Token& at = next();
        auto f = node<Expr>(EK::Filter, at);
        f->a = std::move(e);
        f->filter = parse_filter_spec(true);
        e = std::move(f);
      } else if (is_name("is")) {
        e = parse_test(std::move(e));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj) {
    const Token& at = cur();
    if (skip_op(".")) {
      const Token& t = cur();
      if (t.type == TokType::Name) {
        auto e = node<Expr>(EK::Attr, at);
        e->a = std::move(obj);
        e->name = next().text;
        return e;
      }
      if (t.type == TokType::Integer) {
        auto e = node<Expr>(EK::Item, at);
        e->a = std::move(obj);
        e->b = node<Expr>(EK::Literal, t);
        e->b->literal = Value::integer(t.ival);
        next();
        return e;
      }
      fail(t, "expected a name after '.', got " + describe(t));
    }
    expect_op("[");
    std::vector<ExprPtr> args;
    while (!is_op("]")) {
      if (!args.empty()) {
        expect_op(",");
        if (is_op("]")) break;
      }
      args.push_back(parse_subscribed());
    }
    expect_op("]");
    if (args.empty()) fail(at, "empty subscript");
    ExprPtr key;
    if (args.size() == 1) {
      key = std::move(args[0]);
    } else {
      key = node<Expr>(EK::Tuple, at);
      key->items = std::move(args);
    }
    if (key->kind == EK::Slice) {
      key->a = std::move(obj);
      return key;
    }
    auto e = node<Expr>(EK::Item, at);
    e->a = std::move(obj);
    e->b = std::move(key);
    return e;
  }

  // An index or a slice `start:stop:step` inside [...].
  ExprPtr parse_subscribed() {
    const Token& at = cur();
    ExprPtr start;
    if (!is_op(":")) {
      start = parse_expression(true);
      if (!is_op(":")) return start;
    }
    next();  // ':'
    auto s = node<Expr>(EK::Slice, at);
    s->items.resize(3);
    s->items[0] = std::move(start);
    if (!is_op("]") && !is_op(",") && !is_op(":")) s->items[1] = parse_expression(true);
    if (skip_op(":"))
      if (!is_op("]") && !is_op(",")) s->items[2] = parse_expression(true);
    return s;
  }

  void parse_call_args(std::vector<ExprPtr>& args, KwargExprs& kwargs) {
    expect_op("(");
    while (!is_op(")")) {
      if (!args.empty() || !kwargs.empty()) {
        expect_op(",");
        if (is_op(")")) break;
      }
      if (is_op("*") || is_op("**")) fail(cur(), "*args and **kwargs in calls are not supported");
      if (cur().type == TokType::Name && peek().type == TokType::Op && peek().text == "=") {
        std::string key = next().text;
        next();
        kwargs.emplace_back(key, parse_expression(true));
      } else {
        if (!kwargs.empty()) fail(cur(), "positional argument after keyword argument");
        args.push_back(parse_expression(true));
      }
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto e = node<Expr>(EK::Call, cur());
    e->a = std::move(callee);
    parse_call_args(e->items, e->kwargs);
    return e;
  }

  // `name(.name)*` with optional call arguments; validated against the known filters.
  FilterSpec parse_filter_spec(bool is_filter) {
    FilterSpec f;
    f.line = cur().line;
    f.col = cur().col;
    const Token& start = cur();
    f.name = expect_name(is_filter ? "a filter name" : "a test name");
    while (is_op(".") && peek().type == TokType::Name) {
      next();
      f.name += "." + next().text;
    }
    if (is_filter && !is_known_filter(f.name)) fail(start, unknown_filter_message(f.name));
    if (is_filter && is_op("(")) parse_call_args(f.args, f.kwargs);
    return f;
  }

  ExprPtr parse_test(ExprPtr operand) {
    auto e = node<Expr>(EK::Test, cur());
    next();  // 'is'
    e->negated = skip_name("not");
    const Token& start = cur();
    e->filter = parse_filter_spec(false);
    if (!is_known_test(e->filter.name)) fail(start, unknown_test_message(e->filter.name));
    if (is_op("(")) {
      parse_call_args(e->filter.args, e->filter.kwargs);
    } else {
      // One argument without parentheses: `x is divisibleby 3`, `x is sameas none`.
      TokType ty = cur().type;
      bool starts_arg = ty == TokType::Name || ty == TokType::String || ty == TokType::Integer ||
                        ty == TokType::Float || is_op("(") || is_op("[") || is_op("{");
      if (starts_arg && !is_name("else") && !is_name("or") && !is_name("and")) {
        if (is_name("is")) fail(cur(), "tests cannot be chained with 'is'");
        e->filter.args.push_back(parse_postfix(parse_primary()));
      }
    }
    e->a = std::move(operand);
    return e;
  }
};

}  // namespace

Program parse_program(std::string_view source) { return Parser(lex(source)).run(); }

}  // namespace lowrank::tok::jinja
