// Chat templates: parity with transformers/jinja2 on real model templates (expected outputs in
// tests/fixtures/chat/expected/chat_refs.json, made by tests/reference/make_chat_refs.py), and
// unit tests of the interpreter.
#include "lowrank/tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <ctime>
#include <fstream>
#include <sstream>

#include "lowrank/core/error.h"

using lowrank::tok::ChatTemplate;
using ojson = nlohmann::ordered_json;
using json = nlohmann::json;

namespace {

std::string fixture_dir() { return std::string(LOWRANK_SOURCE_DIR) + "/tests/fixtures/chat/"; }

ojson read_ojson(const std::string& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << path;
  std::stringstream ss;
  ss << f.rdbuf();
  return ojson::parse(ss.str());
}

const ojson& refs() {
  static const ojson r = read_ojson(fixture_dir() + "expected/chat_refs.json");
  return r;
}

std::string render(const std::string& tpl, const ojson& vars = ojson::object()) {
  return ChatTemplate::parse(tpl).render_ordered(vars);
}

// The Error message of rendering (or parsing) `tpl`, or "" if it did not throw.
std::string error_of(const std::string& tpl, const ojson& vars = ojson::object()) {
  try {
    render(tpl, vars);
  } catch (const lowrank::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

// ---- parity with transformers on real templates ------------------------------------------------

TEST(ChatTemplateRefs, RealTemplatesMatchTransformers) {
  const ojson& cases = refs().at("cases");
  ASSERT_GE(cases.size(), 150u);
  std::map<std::string, ojson> configs;
  int compared = 0, raised = 0;
  for (const auto& c : cases) {
    const std::string name = c.at("template").get<std::string>() + "/" + c.at("case").get<std::string>();
    SCOPED_TRACE(name);
    const std::string tname = c.at("template");
    if (!configs.count(tname)) configs[tname] = read_ojson(fixture_dir() + tname + ".json");
    const ojson& config = configs[tname];
    ojson extra = c.at("kwargs");
    if (c.contains("tools")) extra["tools"] = c.at("tools");
    bool agp = c.at("add_generation_prompt");
    if (c.contains("output")) {
      std::string got;
      try {
        got = lowrank::tok::apply_chat_template_ordered(config, c.at("messages"), agp, extra);
      } catch (const lowrank::Error& e) {
        ADD_FAILURE() << "unexpected error: " << e.what();
        continue;
      }
      EXPECT_EQ(got, c.at("output").get<std::string>());
      // The nlohmann::json (sorted-key) entry points agree when key order cannot show.
      if (!c.contains("tools")) {
        json config_j = json::parse(config.dump()), messages_j = json::parse(c.at("messages").dump());
        json extra_j = json::parse(extra.dump());
        std::string got_j = extra_j.empty() ? lowrank::tok::apply_chat_template(config_j, messages_j, agp)
                                            : lowrank::tok::apply_chat_template(config_j, messages_j, agp, extra_j);
        EXPECT_EQ(got_j, got);
      }
      ++compared;
    } else {
      std::string what;
      try {
        lowrank::tok::apply_chat_template_ordered(config, c.at("messages"), agp, extra);
        ADD_FAILURE() << "expected an error: " << c.at("error").get<std::string>();
      } catch (const lowrank::Error& e) {
        what = e.what();
      }
      // raise_exception() messages pass through exactly; other errors are ours to word.
      if (c.at("error_type") == "TemplateError") EXPECT_EQ(what, c.at("error").get<std::string>());
      ++raised;
    }
  }
  EXPECT_GT(compared, 100);
  EXPECT_GT(raised, 20);
}

TEST(ChatTemplateRefs, InterpreterCasesMatchJinja) {
  const ojson& cases = refs().at("unit_cases");
  ASSERT_GE(cases.size(), 80u);
  for (const auto& c : cases) {
    SCOPED_TRACE(c.at("name").get<std::string>() + ": " + c.at("template").get<std::string>());
    if (c.contains("output")) {
      try {
        EXPECT_EQ(render(c.at("template"), c.at("vars")), c.at("output").get<std::string>());
      } catch (const lowrank::Error& e) {
        ADD_FAILURE() << "unexpected error: " << e.what();
      }
    } else {
      std::string what = error_of(c.at("template"), c.at("vars"));
      EXPECT_FALSE(what.empty()) << "expected an error like: " << c.at("error").get<std::string>();
      if (c.at("error_type") == "TemplateError") EXPECT_EQ(what, c.at("error").get<std::string>());
    }
  }
}

TEST(ChatTemplateBuiltins, AreTheFixtureTemplates) {
  const std::pair<const char*, const char*> pairs[] = {{"llama3", "llama3_instruct"}, {"llama2", "llama2_chat"},
                                                       {"mistral", "mistral_v02"},    {"gemma", "gemma"},
                                                       {"chatml", "chatml"},          {"qwen3", "qwen3"}};
  for (const auto& [builtin, fixture] : pairs) {
    auto tpl = lowrank::tok::builtin_chat_template(builtin);
    ASSERT_TRUE(tpl.has_value()) << builtin;
    EXPECT_EQ(*tpl, lowrank::tok::chat_template_from_config(read_ojson(fixture_dir() + fixture + ".json"))) << builtin;
    EXPECT_NO_THROW(ChatTemplate::parse(*tpl));
  }
  EXPECT_FALSE(lowrank::tok::builtin_chat_template("nope").has_value());
  EXPECT_EQ(lowrank::tok::builtin_chat_template_names().size(), 6u);
}

// ---- apply_chat_template and config handling ---------------------------------------------------

TEST(ChatTemplateConfig, SpecialTokensAndTemplateChoice) {
  json config = {{"bos_token", {{"content", "<B>"}, {"lstrip", false}}},
                 {"eos_token", "<E>"},
                 {"chat_template",
                  "{{ bos_token }}{% for m in messages %}{{ m.role }}:{{ m.content }}{{ eos_token }}"
                  "{% endfor %}{% if add_generation_prompt %}>{% endif %}{{ tools is none }}"}};
  json messages = lowrank::tok::to_json({{"user", "hi"}, {"assistant", "yo"}});
  EXPECT_EQ(lowrank::tok::apply_chat_template(config, messages, true), "<B>user:hi<E>assistant:yo<E>>True");
  EXPECT_EQ(lowrank::tok::apply_chat_template(config, messages, false), "<B>user:hi<E>assistant:yo<E>True");
  // Extra variables override the special tokens, as kwargs do in transformers.
  EXPECT_EQ(lowrank::tok::apply_chat_template(config, messages, false, {{"eos_token", "|"}}),
            "<B>user:hi|assistant:yo|True");

  json listed = {{"chat_template",
                  json::array({{{"name", "tool_use"}, {"template", "T"}}, {{"name", "default"}, {"template", "D"}}})}};
  EXPECT_EQ(lowrank::tok::apply_chat_template(listed, json::array(), false), "D");
  EXPECT_EQ(lowrank::tok::apply_chat_template(listed, json::array(), false, {{"tools", json::array()}}), "T");

  json none = {{"bos_token", "<s>"}};
  try {
    lowrank::tok::apply_chat_template(none, messages, true);
    FAIL() << "expected an error";
  } catch (const lowrank::Error& e) {
    EXPECT_NE(std::string(e.what()).find("--chat-template"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("llama3"), std::string::npos) << e.what();
  }
  json no_default = {{"chat_template", json::array({{{"name", "a"}, {"template", "A"}}})}};
  EXPECT_THROW(lowrank::tok::apply_chat_template(no_default, messages, true), lowrank::Error);
  EXPECT_THROW(lowrank::tok::apply_chat_template(config, json::object(), true), lowrank::Error);
  EXPECT_THROW(ChatTemplate::parse("x").render(json::array()), lowrank::Error);
}

TEST(ChatTemplateConfig, KeyOrderIsKeptWithOrderedJson) {
  ojson vars = ojson::parse(R"({"d": {"z": 1, "a": 2}})");
  EXPECT_EQ(render("{{ d | tojson }}{% for k, v in d.items() %}{{ k }}{% endfor %}", vars), "{\"z\": 1, \"a\": 2}za");
  // nlohmann::json sorts keys; documented, and still renders.
  EXPECT_EQ(ChatTemplate::parse("{{ d | tojson }}").render(json::parse(R"({"d": {"z": 1, "a": 2}})")),
            "{\"a\": 2, \"z\": 1}");
}

TEST(ChatTemplateConfig, FindsTemplateInModelFolder) {
  std::string dir = ::testing::TempDir() + "chat_tpl_model/";
  std::system(("mkdir -p " + dir).c_str());
  for (const char* f : {"chat_template.jinja", "chat_template.json", "tokenizer_config.json"})
    std::remove((dir + f).c_str());
  EXPECT_FALSE(lowrank::tok::find_chat_template(dir).has_value());
  std::ofstream(dir + "tokenizer_config.json") << R"({"chat_template": "from config"})";
  EXPECT_EQ(lowrank::tok::find_chat_template(dir).value(), "from config");
  std::ofstream(dir + "chat_template.jinja") << "from jinja file";
  EXPECT_EQ(lowrank::tok::find_chat_template(dir).value(), "from jinja file");
  std::ofstream(dir + "chat_template.jinja").close();
  std::remove((dir + "chat_template.jinja").c_str());
  std::ofstream(dir + "tokenizer_config.json") << "{not json";
  EXPECT_THROW(lowrank::tok::find_chat_template(dir), lowrank::Error);
}

// ---- interpreter unit tests --------------------------------------------------------------------

TEST(ChatTemplateInterp, ExpressionsAndFilters) {
  EXPECT_EQ(render("{{ 1 + 2 * 3 }}|{{ (1 + 2) * 3 }}|{{ 10 - 2 - 3 }}|{{ 2 ** 3 }}|{{ 7 // 2 }}|{{ -7 % 3 }}"),
            "7|9|5|8|3|2");
  EXPECT_EQ(render("{{ 'a' ~ 1 ~ none }}|{{ 'ab' * 2 }}|{{ [1, 2][::-1] }}|{{ 'abc'[1:] }}"), "a1None|abab|[2, 1]|bc");
  EXPECT_EQ(render("{{ x | default('d') | upper }}|{{ '  a  ' | trim | length }}|{{ [3, 1] | sort | join(',') }}"),
            "D|1|1,3");
  EXPECT_EQ(render("{{ messages | length - 1 }}", {{"messages", {1, 2, 3}}}), "2");
  EXPECT_EQ(render("{{ 'a' + ' b ' | trim + 'c' }}"), "abc");  // filters bind tighter than +
  EXPECT_EQ(render("{{ -1 | abs }}|{{ not true or true }}|{{ 1 if none else 2 }}"), "1|True|2");
  EXPECT_EQ(render("{{ {'b': 1, 'a': [1, 'é']} | tojson(indent=2) }}"),
            "{\n  \"b\": 1,\n  \"a\": [\n    1,\n    \"é\"\n  ]\n}");
}

TEST(ChatTemplateInterp, UndefinedIsFalsyAndEmpty) {
  EXPECT_EQ(render("[{{ nope }}]{% if nope %}yes{% else %}no{% endif %}{{ nope is defined }}{{ nope | length }}"),
            "[]noFalse0");
  EXPECT_EQ(render("{% for x in nope %}x{% endfor %}{{ nope | default('dflt') }}{{ 'a' in nope }}"), "dfltFalse");
  EXPECT_EQ(render("{{ m.missing is defined }}{{ m.missing }}", {{"m", {{"role", "user"}}}}), "False");
  std::string err = error_of("{{ nope.attr }}");
  EXPECT_NE(err.find("'nope' is undefined"), std::string::npos) << err;
}

TEST(ChatTemplateInterp, WhitespaceControl) {
  EXPECT_EQ(render("{% for x in [1, 2] %}\n  {{ x }}\n{% endfor %}\n"), "  1\n  2\n");
  EXPECT_EQ(render("{%- for x in [1, 2] -%}\n  {{ x }}\n{%- endfor %}"), "12");
  EXPECT_EQ(render("a  {{- ' b ' -}}  c"), "a b c");
  EXPECT_EQ(render("  {# comment #}\nx"), "x");
  EXPECT_EQ(render("x\n"), "x");
  EXPECT_EQ(render("x\n\n"), "x\n");
}

TEST(ChatTemplateInterp, LoopsScopesNamespacesMacros) {
  EXPECT_EQ(render("{% for x in 'ab' %}{{ loop.index }}{{ x }}{% if loop.last %}.{% endif %}{% endfor %}"), "1a2b.");
  EXPECT_EQ(render("{% set n = 0 %}{% for x in [1, 2] %}{% set n = n + x %}{% endfor %}{{ n }}"), "0");
  EXPECT_EQ(render("{% set ns = namespace(n=0) %}{% for x in [1, 2] %}{% set ns.n = ns.n + x %}{% endfor %}{{ ns.n }}"),
            "3");
  EXPECT_EQ(render("{% macro m(x, y=2) %}<{{ x }}{{ y }}>{% endmacro %}{{ m(1) }}{{ m(3, y=4) }}"), "<12><34>");
  EXPECT_EQ(render("{% for x in [1, 2, 3, 4] if x is even %}{{ x }}{% else %}none{% endfor %}"), "24");
}

TEST(ChatTemplateInterp, RaiseExceptionMessageIsExact) {
  std::string tpl =
      "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}"
      "{% endif %}{% endfor %}";
  EXPECT_EQ(error_of(tpl, {{"messages", {{{"role", "system"}}}}}), "System role not supported");
  EXPECT_EQ(render(tpl, {{"messages", {{{"role", "user"}}}}}), "");
}

TEST(ChatTemplateInterp, StrftimeNowUsesLocalTime) {
  char buf[64];
  std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  std::strftime(buf, sizeof buf, "%d %b %Y", &local);
  std::string got = render("{{ strftime_now('%d %b %Y') }}");
  // Allow a date change between the two calls.
  if (got != buf) {
    std::time_t later = std::time(nullptr);
    localtime_r(&later, &local);
    std::strftime(buf, sizeof buf, "%d %b %Y", &local);
  }
  EXPECT_EQ(got, buf);
}

TEST(ChatTemplateInterp, SyntaxErrorsNameLineAndColumn) {
  auto parse_error = [](const std::string& tpl) {
    try {
      ChatTemplate::parse(tpl);
    } catch (const lowrank::Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  std::string e1 = parse_error("line one\n{% if x %}\n  {{ x | nosuchfilter }}\n{% endif %}");
  EXPECT_NE(e1.find("line 3, column 10"), std::string::npos) << e1;
  EXPECT_NE(e1.find("nosuchfilter"), std::string::npos) << e1;
  std::string e2 = parse_error("a\n{% for x in xs %}\nb");
  EXPECT_NE(e2.find("endfor"), std::string::npos) << e2;
  EXPECT_NE(e2.find("line 2"), std::string::npos) << e2;
  std::string e3 = parse_error("{{ x is nosuchtest }}");
  EXPECT_NE(e3.find("nosuchtest"), std::string::npos) << e3;
  std::string e4 = parse_error("{% if %}");
  EXPECT_NE(e4.find("line 1, column 7"), std::string::npos) << e4;
  std::string e5 = parse_error("{{ x | groupby('a') }}");
  EXPECT_NE(e5.find("not supported"), std::string::npos) << e5;
  std::string e6 = parse_error("{% endif %}");
  EXPECT_NE(e6.find("endif"), std::string::npos) << e6;
  std::string e7 = parse_error("{{ 'unterminated }}");
  EXPECT_NE(e7.find("line 1"), std::string::npos) << e7;
  std::string e8 = parse_error("{% include 'x' %}");
  EXPECT_NE(e8.find("not supported"), std::string::npos) << e8;
  std::string e9 = parse_error("{# open comment");
  EXPECT_NE(e9.find("comment"), std::string::npos) << e9;
}

TEST(ChatTemplateInterp, RuntimeErrorsNameTheLine) {
  std::string e = error_of("ok\n{{ 'a' + 1 }}");
  EXPECT_NE(e.find("line 2"), std::string::npos) << e;
  EXPECT_NE(e.find("concatenate"), std::string::npos) << e;
  std::string r = error_of("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  EXPECT_NE(r.find("recursed"), std::string::npos) << r;
  std::string ns = error_of("{% set d = {} %}{% set d.a = 1 %}");
  EXPECT_NE(ns.find("namespace"), std::string::npos) << ns;
}

TEST(ChatTemplateInterp, HostileInputFailsCleanly) {
  // Bad templates and inputs must give Error, never crash.
  const char* bad[] = {"{{",
                       "{%",
                       "{{ (((( }}",
                       "{{ [1, 2 }}",
                       "{% for %}",
                       "{% set %}",
                       "{{ 'a' | }}",
                       "{% macro %}",
                       "{{ x.}}",
                       "{{ 1 +}}",
                       "{% if x %}{% else %}{% else %}{% endif %}",
                       "{{ '\\x4' }}",
                       "{{ 99999999999999999999 }}",
                       "{% raw %}never closed"};
  for (const char* tpl : bad) EXPECT_FALSE(error_of(tpl).empty()) << tpl;
  EXPECT_FALSE(error_of("{{ 'x' * 1000000000 }}").empty());
  // Work and memory are bounded: loops in loops, a filter or a search over a long list in a loop,
  // strings and lists that double (each would run for hours or take the machine's memory).
  for (const char* runaway : {"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                              "{% for i in range(100000) %}{{ range(100000) | join(',') | length }}{% endfor %}",
                              "{% set b = range(100000) | list %}{% for i in range(100000) %}{{ 7 in b }}{% endfor %}"}) {
    const std::string e = error_of(runaway);
    EXPECT_NE(e.find("runaway loop"), std::string::npos) << runaway << ": " << e;
  }
  std::string doubling = "{% set s = 'x' * 100000 %}{% set l = [1] * 100000 %}";
  for (int k = 0; k < 12; ++k) doubling += "{% set s = s ~ s %}";
  EXPECT_NE(error_of(doubling).find("over the template limit"), std::string::npos) << error_of(doubling);
  std::string list_doubling = "{% set l = [1] * 100000 %}";
  for (int k = 0; k < 12; ++k) list_doubling += "{% set l = l + l %}";
  EXPECT_NE(error_of(list_doubling).find("over the template limit"), std::string::npos) << error_of(list_doubling);
  // A long conversation is far inside the budget.
  EXPECT_TRUE(error_of("{% for i in range(20000) %}{{ i }}: {{ 'message ' * 20 }}\n{% endfor %}").empty());
  EXPECT_FALSE(error_of("{{ 2 ** 200 }}").empty());
  EXPECT_FALSE(error_of("{{ none.x.y }}").empty());
  // Deep nesting is refused instead of overflowing the stack.
  std::string deep_parens = "{{ " + std::string(20000, '(') + "1" + std::string(20000, ')') + " }}";
  EXPECT_NE(error_of(deep_parens).find("nests too deeply"), std::string::npos);
  std::string long_sum = "{{ 1";
  for (int k = 0; k < 100000; ++k) long_sum += "+1";
  EXPECT_NE(error_of(long_sum + " }}").find("nests too deeply"), std::string::npos);
  std::string many_filters = "{{ 'x'";
  for (int k = 0; k < 100000; ++k) many_filters += "|trim";
  EXPECT_NE(error_of(many_filters + " }}").find("nests too deeply"), std::string::npos);
  std::string ok_sum = "{{ 0";
  for (int k = 0; k < 100; ++k) ok_sum += "+1";
  EXPECT_EQ(render(ok_sum + " }}"), "100");  // ordinary lengths are fine
}
