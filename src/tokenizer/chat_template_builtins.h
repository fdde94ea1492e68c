#pragma once
// The library of the chat-template interpreter: operators, attribute/item access, filters,
// tests, methods of str/dict/list, and global functions - each with Python/Jinja semantics.
#include <optional>
#include <string>
#include <string_view>

#include "chat_template_value.h"

namespace lowrank::tok::jinja {

class Interpreter;

// ---- operators and access (chat_template_ops.cpp) ------------------------------------------
// Arithmetic: + - * / // % **. Throws Error with Python's TypeError wording on bad operands.
Value binary_op(std::string_view op, const Value& a, const Value& b);
// `a in b` (Python containment; False for an Undefined container).
bool contains(const Value& container, const Value& item);
// Jinja's environment.getattr / getitem: obj.name and obj[key], Undefined when missing.
Value get_attr(const Value& obj, const std::string& name);
Value get_item(const Value& obj, const Value& key);
Value get_slice(const Value& obj, const Value* start, const Value* stop, const Value* step);
// Python's printf-style `fmt % args`.
std::string percent_format(const std::string& fmt, const Value& args);
// str.format(*args, **kwargs) for {}, {0}, {name} fields (with simple format specs).
std::string str_format(const std::string& fmt, const CallArgs& args);

// ---- filters and tests (chat_template_filters.cpp) -----------------------------------------
bool is_known_filter(std::string_view name);
bool is_known_test(std::string_view name);
// Why an unknown name fails to parse: "No filter named 'x'." or "... is not supported ...".
std::string unknown_filter_message(std::string_view name);
std::string unknown_test_message(std::string_view name);
Value apply_filter(Interpreter& in, std::string_view name, const Value& v, const CallArgs& args);
bool apply_test(Interpreter& in, std::string_view name, const Value& v, const CallArgs& args);

// ---- methods and globals (chat_template_methods.cpp) ---------------------------------------
bool has_method(const Value& obj, std::string_view name);
// obj.name(args) for str, dict and list methods; nullopt when obj has no such method.
std::optional<Value> call_method(const Value& obj, std::string_view name, const CallArgs& args);
// range, namespace, dict, raise_exception, strftime_now, joiner, cycler; Undefined if unknown.
Value global_function(std::string_view name);

// ---- small helpers shared by the above ------------------------------------------------------
int64_t to_index(const Value& v, std::string_view what);  // an int argument, or Error
const std::string& need_string(const Value& v, std::string_view what);

}  // namespace lowrank::tok::jinja
