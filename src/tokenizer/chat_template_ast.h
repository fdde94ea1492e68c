#pragma once
// Syntax tree of a parsed chat template (the Jinja subset lowrank interprets).
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "chat_template_value.h"

namespace lowrank::tok::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;
using KwargExprs = std::vector<std::pair<std::string, ExprPtr>>;

// `name(args, key=value)` of a filter or test.
struct FilterSpec {
  std::string name;
  std::vector<ExprPtr> args;
  KwargExprs kwargs;
  int line = 0, col = 0;
};

struct Expr {
  enum class Kind {
    Literal,   // literal
    Name,      // name
    List,      // items
    Tuple,     // items
    Dict,      // items: key0, value0, key1, value1, ...
    Attr,      // a.name
    Item,      // a[b]
    Slice,     // a[items[0]:items[1]:items[2]] (each may be null)
    Call,      // a(items..., kwargs...)
    Filter,    // a | filter   (a is null inside {% filter %} / {% set x | f %})
    Test,      // a is [not] filter.name(filter.args)
    Not,       // not a
    Neg,       // -a
    Pos,       // +a
    Binary,    // a <name> b for + - * / // % **
    And,       // a and b
    Or,        // a or b
    Compare,   // items[0] ops[0] items[1] ops[1] items[2] ... (==, !=, <, <=, >, >=, in, not in)
    Concat,    // items joined with ~
    CondExpr,  // b if a else c (c may be null)
  };
  Kind kind;
  int line = 0, col = 0;
  Value literal;
  std::string name;
  ExprPtr a, b, c;
  std::vector<ExprPtr> items;
  std::vector<std::string> ops;
  KwargExprs kwargs;
  FilterSpec filter;  // Filter, Test
  bool negated = false;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
  enum class Kind {
    Text,      // text
    Output,    // {{ expr }}
    If,        // branches (condition, body); else_body
    For,       // for targets in expr [if cond] body [else else_body]
    Set,       // set targets = expr
    SetAttr,   // set targets[0].targets[1] = expr  (namespace attribute)
    SetBlock,  // set targets[0] [| filters] body endset
    Macro,     // macro text(params) body
    Break,
    Continue,
    With,         // with params body
    FilterBlock,  // filter filters body
    Generation,   // generation body (transformers' assistant-mask tag; rendered as-is)
  };
  Kind kind;
  int line = 0, col = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr cond;
  std::vector<std::pair<ExprPtr, Body>> branches;
  Body body, else_body;
  std::vector<std::string> targets;
  bool unpack = false;  // targets came as a tuple: a, b = ...
  std::vector<FilterSpec> filters;
  KwargExprs params;  // Macro: (name, default or null); With: (name, value)
};

struct Program {
  Body body;
};

}  // namespace lowrank::tok::jinja
