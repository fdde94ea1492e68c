#pragma once
// Parser for chat templates: tokens -> syntax tree, following Jinja's grammar and operator
// precedence. Unknown filters and tests are rejected here (as Jinja does at compile time).
#include <string_view>

#include "chat_template_ast.h"

namespace lowrank::tok::jinja {

// Throws Error("chat template line L, column C: ...") on a syntax error.
Program parse_program(std::string_view source);

}  // namespace lowrank::tok::jinja
