#!/usr/bin/env python3
"""Reference outputs for lowrank's chat-template interpreter.

For every tokenizer_config-style fixture in --fixtures (tests/fixtures/chat/*.json) and every
conversation in CASES, render the fixture's chat template the way transformers'
apply_chat_template does, and write the results to OUTDIR/chat_refs.json. The C++ test
tests/tokenizer/chat_template_test.cpp replays every case and compares byte for byte.

Rendering (two independent paths when possible; they must agree):
  * "jinja2": an ImmutableSandboxedEnvironment configured like transformers'
    _compile_jinja_template (trim_blocks, lstrip_blocks, loopcontrols, its tojson filter,
    raise_exception and strftime_now globals), called with messages, tools, documents,
    add_generation_prompt, the named special tokens and the case's extra kwargs.
  * "transformers": transformers.utils.chat_template_utils.render_jinja_template (what
    apply_chat_template calls), when transformers is importable.
Template choice and template variables follow apply_chat_template: a list of named templates
uses "tool_use" when tools are given and it exists, else "default"; the named special tokens
(bos, eos, unk, sep, pad, cls, mask; a string or {"content": ...}) become variables, and
kwargs override them.

Usage: python3 tests/reference/make_chat_refs.py --fixtures tests/fixtures/chat --out OUTDIR
Needs jinja2 >= 3.1 (transformers optional). Exit status 1 if the two paths disagree.
"""
import argparse
import glob
import json
import os
import sys
from datetime import datetime

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

SPECIAL_TOKEN_KEYS = ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"]

# A tool schema whose keys are deliberately not in sorted order: templates that print tools
# with tojson or iterate them with items() must keep insertion order.
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name, e.g. Paris"},
                    "unit": {"type": ["string", "integer"], "enum": ["celsius", "fahrenheit"],
                             "description": " Temperature unit "},
                    "days": {"type": "array", "items": {"type": "integer"}, "description": "Forecast days"},
                },
                "required": ["city"],
            },
            "return": {"type": "number", "description": "Temperature in degrees"},
        },
    }
]

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "Hello! What is 2 + 2?"}
A1 = {"role": "assistant", "content": "2 + 2 = 4."}
U2 = {"role": "user", "content": "And times 3?"}
A2 = {"role": "assistant", "content": "  12, of course.  "}

TOOL_CALL = {"role": "assistant", "content": "", "tool_calls": [
    {"id": "call00001", "type": "function",
     "function": {"name": "get_weather", "arguments": {"unit": "celsius", "city": "Paris"}}}]}
TOOL_RESULT = {"role": "tool", "tool_call_id": "call00001", "name": "get_weather",
               "content": "{\"temperature\": 18, \"unit\": \"celsius\"}"}

CASES = [
    {"name": "system_multi_turn", "add_generation_prompt": True, "messages": [SYSTEM, U1, A1, U2]},
    {"name": "system_multi_turn_train", "add_generation_prompt": False, "messages": [SYSTEM, U1, A1, U2, A2]},
    {"name": "no_system", "add_generation_prompt": True, "messages": [U1, A1, U2]},
    {"name": "no_system_train", "add_generation_prompt": False, "messages": [U1, A1]},
    {"name": "single_user", "add_generation_prompt": True, "messages": [U1]},
    {"name": "single_user_no_prompt", "add_generation_prompt": False, "messages": [U1]},
    {"name": "unicode_whitespace", "add_generation_prompt": True, "messages": [
        {"role": "system", "content": " Be brief.\n"},
        {"role": "user", "content": "Héllo, 世界! 🌍 \"double\" and 'single' quotes\n\tnew line, \\backslash\\ and {{ braces }} {% tags %}  "},
        {"role": "assistant", "content": "\n  Ответ: «да» — ✓ ünïcödé\r\n\n"},
        {"role": "user", "content": "\u00a0non-breaking\u2003spaces\u00a0"}]},
    {"name": "not_alternating", "add_generation_prompt": True, "messages": [U1, U2]},
    {"name": "starts_with_assistant", "add_generation_prompt": False, "messages": [A1, U2]},
    {"name": "empty", "add_generation_prompt": True, "messages": []},
    {"name": "think_inline", "add_generation_prompt": False, "messages": [
        U1, {"role": "assistant", "content": "<think>\nLet me add.\n</think>\n\n2 + 2 = 4."},
        U2, {"role": "assistant", "content": "<think>Triple it.</think>12."}]},
    {"name": "think_inline_prompt", "add_generation_prompt": True, "messages": [
        U1, {"role": "assistant", "content": "<think>\nA\n</think>\n\nB"}, U2]},
    {"name": "reasoning_content", "add_generation_prompt": False, "messages": [
        SYSTEM, U1, {"role": "assistant", "content": "4.", "reasoning_content": "\nTwo plus two is four.\n"}]},
    {"name": "enable_thinking_false", "add_generation_prompt": True, "messages": [U1],
     "kwargs": {"enable_thinking": False}},
    {"name": "tools", "add_generation_prompt": False, "tools": TOOLS, "messages": [
        SYSTEM, {"role": "user", "content": "Weather in Paris?"}, TOOL_CALL, TOOL_RESULT,
        {"role": "assistant", "content": "It is 18 °C in Paris."}]},
    {"name": "tools_prompt", "add_generation_prompt": True, "tools": TOOLS,
     "messages": [{"role": "user", "content": "Weather in Paris?"}]},
]


# Interpreter unit cases: (name, template, variables). Rendered with the same environment; the C++
# test renders each with ChatTemplate::parse(template).render_ordered(variables).
UNIT_CASES = [
    # text, output and whitespace control (trim_blocks, lstrip_blocks, -, +)
    ("text", "plain text\nline two\n", {}),
    ("output", "a{{ x }}b", {"x": "X"}),
    ("trailing_newline_dropped", "x\n\n", {}),
    ("crlf_normalized", "a\r\nb\rc{{ '\r\n' }}", {}),
    ("trim_blocks", "{% if true %}\nx\n{% endif %}\ny", {}),
    ("lstrip_blocks", "a\n    {% if true %}\n    b\n    {% endif %}\nc", {}),
    ("lstrip_not_for_output", "a\n    {{ 'b' }}\n", {}),
    ("lstrip_at_start", "   {% if true %}x{% endif %}", {}),
    ("lstrip_after_text", "t  {% if true %}x{% endif %}", {}),
    ("minus_strips", "a   {{- 'b' -}}   c  {%- if true -%}  d  {%- endif %}\n\n e", {}),
    ("plus_keeps", "a\n  {%+ if true +%}\nb{% endif %}", {}),
    ("comment", "a{# gone #}b\n  {# own line #}\nc{#- x -#}  d", {}),
    ("raw", "{% raw %}{{ not parsed }} {% if %}{% endraw %}!", {}),
    ("output_keeps_newline", "{{ 'a' }}\n{{ 'b' }}\n", {}),
    ("nested_indent", "{% for x in xs %}\n  {% if x %}\n    <{{ x }}>\n  {% endif %}\n{% endfor %}\n", {"xs": [1, 0, 2]}),
    # literals and printing
    ("print_values", "{{ none }}|{{ true }}|{{ false }}|{{ 1 }}|{{ -3 }}|{{ 1.0 }}|{{ 1.5e300 }}|{{ 1e-7 }}|{{ 0.1 + 0.2 }}|{{ 1e16 }}|{{ 123456.0 }}", {}),
    ("print_containers", "{{ [1, 'a', none, true, 2.5] }}|{{ {'k': 'v', 'n': [1]} }}|{{ (1,) }}|{{ (1, 'b') }}|{{ [] }}|{{ {} }}", {}),
    ("print_repr_quotes", "{{ ['it\\'s', \"say \\\"hi\\\"\", 'both \\' \"', 'tab\\tnl\\n', 'é ü 中'] }}", {}),
    ("string_escapes", "{{ 'a\\nb\\tc\\\\d\\'e\\x41\\u00e9\\U0001F600\\101' }}|{{ \"it's\" }}|{{ 'x' 'y' }}", {}),
    ("undefined_prints_empty", "[{{ missing }}][{{ d.missing }}][{{ l[5] }}]", {"d": {}, "l": [1]}),
    ("numbers", "{{ 7 / 2 }} {{ 4 / 2 }} {{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7.5 // 2 }} {{ 2 ** 10 }} {{ 2 ** -1 }} {{ 2 ** 3 ** 2 }} {{ -2 ** 2 }} {{ 1_000 }} {{ 0x1f }}", {}),
    ("bool_arithmetic", "{{ true + 1 }} {{ true * 3 }} {{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' * 3 }} {{ [1] * 2 }} {{ 3 * 'ab' }}", {}),
    ("concat", "{{ 'n=' ~ 3 ~ true ~ none ~ 1.0 ~ [1] ~ missing }}", {}),
    ("string_plus", "{{ 'a' + 'b' }}{{ [1] + [2] }}", {}),
    # comparisons and logic
    ("comparisons", "{{ 1 < 2 }}{{ 2 <= 1 }}{{ 'a' == 'a' }}{{ 'a' != 'a' }}{{ 3 > 2 }}{{ 1 >= 1 }}{{ 1 < 2 < 3 }}{{ 3 > 2 > 2 }}{{ 'a' < 'b' }}{{ [1, 2] < [1, 3] }}{{ [1, 2] == [1, 2] }}{{ {'a': 1} == {'a': 1} }}{{ (1, 2) == [1, 2] }}", {}),
    ("logic_values", "{{ true and false }}|{{ 0 or 'x' }}|{{ [] and 1 }}|{{ 'a' and 'b' }}|{{ not true }}|{{ not (1 == 2) }}|{{ none or none }}", {}),
    ("in_operator", "{{ 'b' in 'abc' }}{{ 2 in [1, 2] }}{{ 'k' in d }}{{ 'q' not in d }}{{ 1 in [1.0] }}{{ 'a' in missing }}{{ none in [none] }}", {"d": {"k": 1}}),
    ("conditional_expr", "{{ 'yes' if flag else 'no' }}|{{ 'a' if false }}|{{ 1 if false else 2 if true else 3 }}", {"flag": True}),
    # subscripts and slices
    ("subscripts", "{{ xs[0] }}{{ xs[-1] }}{{ d['k'] }}{{ d.k }}{{ xs.0 }}{{ s[1] }}{{ s[-1] }}{{ nested.a.b[1].c }}", {"xs": [1, 2, 3], "d": {"k": "v"}, "s": "héllo", "nested": {"a": {"b": [0, {"c": "deep"}]}}}),
    ("slices", "{{ xs[1:] }}{{ xs[:2] }}{{ xs[::-1] }}{{ xs[::2] }}{{ xs[1::2] }}{{ xs[-1:0:-1] }}{{ xs[:-2:-1] }}{{ xs[10:] }}{{ 'héllo'[1:3] }}{{ 'abc'[::-1] }}{{ 'héllo'[::-1] }}", {"xs": [1, 2, 3, 4, 5]}),
    # statements
    ("if_elif_else", "{% for n in [1, 2, 3] %}{% if n == 1 %}one{% elif n == 2 %}two{% else %}many{% endif %},{% endfor %}", {}),
    ("for_loop_vars", "{% for x in items %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}|{{ loop.previtem }}-{{ loop.nextitem }};{% endfor %}", {"items": ["a", "b", "c"]}),
    ("for_else", "{% for x in [] %}x{% else %}empty{% endfor %}{% for x in missing %}y{% else %}none{% endfor %}", {}),
    ("for_filter", "{% for x in [1, 2, 3, 4] if x % 2 == 0 %}{{ loop.index }}:{{ x }}/{{ loop.length }}{% if not loop.last %},{% endif %}{% endfor %}", {}),
    ("for_unpack", "{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for a, b in [[1, 2], (3, 4)] %}{{ a }}{{ b }}{% endfor %}{% for k in d %}{{ k }}{% endfor %}", {"d": {"x": 1, "y": "z", "a": 0}}),
    ("for_string", "{% for c in 'hé!' %}[{{ c }}]{% endfor %}", {}),
    ("loop_cycle", "{% for x in [1, 2, 3] %}{{ loop.cycle('odd', 'even') }} {% endfor %}", {}),
    ("nested_loops", "{% for a in [1, 2] %}{% set outer = loop %}{% for b in 'xy' %}{{ outer.index }}{{ loop.index }}{{ a }}{{ b }} {% endfor %}{% endfor %}", {}),
    ("break_continue", "{% for n in [1, 2, 3, 4, 5] %}{% if n == 2 %}{% continue %}{% endif %}{% if n == 4 %}{% break %}{% endif %}{{ n }}{% endfor %}", {}),
    ("set_scoping", "{% set a = 1 %}{% for x in [1, 2] %}[{{ a }}]{% set a = 2 %}[{{ a }}]{% endfor %}{{ a }}{% if true %}{% set b = 3 %}{% endif %}{{ b }}{% for x in [1] %}{% set c = 4 %}{% endfor %}[{{ c }}]", {}),
    ("set_in_iteration", "{% for x in [1, 2] %}{% if loop.first %}{% set a = 1 %}{% endif %}[{{ a }}]{% endfor %}", {}),
    ("set_tuple", "{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set t = (1,) %}{{ t }}{% set (c, d) = [3, 4] %}{{ c }}{{ d }}", {}),
    ("set_block", "{% set x %}\n  hello {{ name }}\n{% endset %}[{{ x }}]{% set y | upper %}abc{% endset %}{{ y }}", {"name": "you"}),
    ("namespace", "{% set ns = namespace(total=0, seen=false) %}{% for x in [1, 2, 3] %}{% set ns.total = ns.total + x %}{% if x == 2 %}{% set ns.seen = true %}{% endif %}{% endfor %}{{ ns.total }} {{ ns.seen }} {{ ns }}", {}),
    ("namespace_added_attr", "{% set ns = namespace() %}{% set ns.a = 'x' %}{{ ns.a }}{{ ns.missing is defined }}{% set n2 = namespace({'k': 1}, j=2) %}{{ n2.k }}{{ n2.j }}", {}),
    ("macro", "{% macro greet(name, punct='!') %}Hi {{ name }}{{ punct }}{% endmacro %}{{ greet('A') }} {{ greet('B', '?') }} {{ greet(punct='.', name='C') }}", {}),
    ("macro_varargs", "{% macro m(a, b='B') %}{{ a }}{{ b }}{{ varargs }}{{ kwargs }}{% endmacro %}{{ m(1) }}|{{ m(1, 2, 3, k=4) }}|{{ m() }}", {}),
    ("macro_scope", "{% set g = 7 %}{% macro m() %}{{ g }}{{ h }}{{ v }}{% endmacro %}{% set h = 3 %}{{ m() }}", {"v": "V"}),
    ("macro_recursion", "{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * (fact(n - 1) | int) }}{% endif %}{% endmacro %}{{ fact(5) }}", {}),
    ("with_block", "{% with a = 1, b = 'x' %}{{ a }}{{ b }}{% endwith %}[{{ a }}]", {}),
    ("filter_block", "{% filter upper %}hello {{ name }}{% endfilter %}", {"name": "x"}),
    ("generation_tag", "{% for m in msgs %}{% if m.role == 'assistant' %}{% generation %}[{{ m.content }}]{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}", {"msgs": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}),
    ("generators_truthy", "{% if msgs | selectattr('role', 'equalto', 'nobody') %}always{% endif %}|{{ msgs | selectattr('role', 'equalto', 'nobody') | list | length }}|{{ none | select | list }}|{{ [3, 1] | reverse | list }}", {"msgs": [{"role": "user"}]}),
    # filters
    ("filter_strings", "{{ '  x  ' | trim }}|{{ 'xxhixx' | trim('x') }}|{{ 'Ab' | upper }}{{ 'Ab' | lower }}|{{ 'hello wORLD' | title }}|{{ \"they're x-ray\" | title }}|{{ 'hELLO' | capitalize }}|{{ 'a b' | replace(' ', '_') }}|{{ 'aaa' | replace('a', 'b', 2) }}|{{ 'Straße ÉCOLE' | upper }}{{ 'ΟΔΟΣ' | lower }}", {}),
    ("filter_length", "{{ xs | length }}{{ 'héllo' | length }}{{ d | length }}{{ missing | length }}{{ xs | count }}", {"xs": [1, 2, 3], "d": {"a": 1}}),
    ("filter_default", "{{ 'a' | default('b') }}{{ missing | default('d') }}{{ none | default('n') }}{{ '' | default('e', true) }}{{ none | default('n', true) }}{{ missing | d('dd') }}{{ missing | default }}", {}),
    ("filter_join", "{{ xs | join('-') }}|{{ xs | join }}|{{ users | join(', ', attribute='name') }}", {"xs": [1, 2, 3], "users": [{"name": "a"}, {"name": "b"}]}),
    ("filter_first_last", "{{ xs | first }}{{ xs | last }}{{ 'abc' | first }}{{ 'abc' | last }}{{ [] | first }}{{ {'k': 1, 'j': 2} | first }}", {"xs": [1, 2, 3]}),
    ("filter_list_items", "{{ 'abc' | list }}|{{ {'b': 1, 'a': 2} | items | list }}|{{ {'b': 1, 'a': 2} | list }}|{{ missing | items | list }}|{{ (1, 2) | list }}", {}),
    ("filter_string", "{{ x | string }}|{{ 1.0 | string }}|{{ none | string }}|{{ [1, 'a'] | string }}|{{ missing | string }}|{{ 5 | safe }}", {"x": True}),
    ("filter_select", "{{ [1, 2, 3] | select('odd') | list }}{{ [1, 2, 3] | reject('odd') | list }}{{ [0, 1, '', 'a'] | select | list }}{{ [1, 5, 3] | select('gt', 2) | list }}{{ [1, 5, 3] | select('>', 2) | list }}", {}),
    ("filter_selectattr", "{{ msgs | selectattr('role', 'equalto', 'user') | list | length }} {{ (msgs | selectattr('role', 'equalto', 'user') | list)[-1].content }} {{ msgs | rejectattr('role', 'eq', 'user') | map(attribute='role') | join(',') }} {{ items | selectattr('on') | map(attribute='n') | list }} {{ msgs | selectattr('tool_calls', 'undefined') | list | length }} {{ msgs | selectattr('role', 'in', ['system', 'tool']) | list | length }}", {"msgs": [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a", "tool_calls": []}, {"role": "user", "content": "u2"}], "items": [{"n": 1, "on": True}, {"n": 2, "on": False}, {"n": 3}]}),
    ("filter_map", "{{ [1, 2] | map('string') | join(',') }}|{{ [{'a': 1}, {'b': 2}] | map(attribute='a') | list }}|{{ [{'a': 1}, {'b': 2}] | map(attribute='a', default=0) | list }}|{{ ['a', 'b'] | map('upper') | list }}|{{ [' a', 'b '] | map('trim') | join }}|{{ [{'x': {'y': 5}}] | map(attribute='x.y') | list }}", {}),
    ("filter_sort_unique", "{{ [3, 1, 2] | sort }}{{ ['b', 'A', 'a'] | sort }}{{ ['b', 'A', 'a'] | sort(case_sensitive=true) }}{{ [3, 1, 2] | sort(reverse=true) }}{{ [1, 2, 2, 1] | unique | list }}{{ ['a', 'A', 'b'] | unique | list }}{{ users | sort(attribute='age') | map(attribute='n') | join }}", {"users": [{"n": "x", "age": 3}, {"n": "y", "age": 1}]}),
    ("filter_reverse", "{{ [1, 2] | reverse | list }}{{ 'abé' | reverse }}", {}),
    ("filter_numbers", "{{ 3 | float }}|{{ '3' | int + 1 }}|{{ '3.7' | int }}|{{ 'x' | int }}|{{ 'x' | int(7) }}|{{ 2.5 | round }}|{{ 3.5 | round }}|{{ 2.567 | round(2) }}|{{ 2.1 | round(0, 'ceil') }}|{{ 2.5 | int }}|{{ -3 | abs }}|{{ [1, 2, 3] | sum }}|{{ [1, 5, 3] | max }}|{{ [4, 2] | min }}|{{ ['b', 'A'] | max }}", {}),
    ("filter_dictsort", "{{ {'b': 1, 'a': 2} | dictsort }}{{ {'b': 1, 'a': 2} | dictsort(by='value') }}{{ {'b': 1, 'a': 2} | dictsort(reverse=true) }}", {}),
    ("filter_tojson", "{{ {'a': [1, 'x', none, true, 1.5]} | tojson }}|{{ 'x\"y</\\n' | tojson }}|{{ none | tojson }}|{{ 'é😀\\u2028\\x01' | tojson }}|{{ 'é' | tojson(ensure_ascii=true) }}|{{ 1e20 | tojson }}|{{ [] | tojson(indent=2) }}", {}),
    ("filter_tojson_indent", "{{ d | tojson(indent=4) }}\n{{ d | tojson(indent=0) }}\n{{ [1, [2]] | tojson(indent='\\t') }}\n{{ d | tojson(sort_keys=true) }}\n{{ d | tojson(separators=(',', ':')) }}", {"d": {"b": [1, {"c": "x"}], "a": {}, "e": [], "z": {"y": None}}}),
    ("filter_misc", "{{ 'a < b & \"c\"' | e }}|{{ 'one two  three' | wordcount }}|{{ 'x' | center(5) }}|{{ 'a\\nb\\n\\nc' | indent(2) }}|{{ 'a\\nb' | indent(2, true) }}|{{ '%s-%d' | format('a', 3) }}|{{ d | attr('k') }}|{{ [1, 'a'] | pprint }}", {"d": {"k": "v"}}),
    # tests
    ("tests", "{{ x is defined }}{{ y is defined }}{{ y is undefined }}{{ n is none }}{{ s is string }}{{ d is mapping }}{{ l is sequence }}{{ 1 is number }}{{ 1.5 is float }}{{ 1 is integer }}{{ true is boolean }}{{ true is number }}{{ true is integer }}{{ 'a' is iterable }}{{ 1 is iterable }}{{ y is iterable }}{{ none is iterable }}", {"x": 1, "n": None, "s": "s", "d": {}, "l": []}),
    ("tests_compare", "{{ 3 is odd }}{{ 4 is even }}{{ 9 is divisibleby 3 }}{{ 9 is divisibleby(2) }}{{ 'a' is equalto 'a' }}{{ 2 is eq 2 }}{{ 2 is ne 3 }}{{ 1 is lt 2 }}{{ 2 is gt 3 }}{{ 2 is in [1, 2] }}{{ 'ab' is lower }}{{ 'AB' is upper }}{{ 'Ab' is lower }}{{ true is true }}{{ false is false }}{{ 0 is false }}{{ none is sameas none }}{{ x is not none }}{{ not x is none }}", {"x": 1}),
    # string methods
    ("str_methods", "{{ ' x '.strip() }}|{{ 'abc'.startswith('ab') }}{{ 'abc'.endswith('x') }}{{ 'abc'.startswith(('x', 'a')) }}|{{ 'ab'.upper() }}{{ 'AB'.lower() }}|{{ 'hello wORLD'.title() }}|{{ \"they're\".title() }}|{{ ' x '.lstrip() }}|{{ ' x '.rstrip() }}|{{ 'hELLO'.capitalize() }}|{{ 'a,b'.replace(',', ';') }}|{{ 'abcb'.find('b') }}{{ 'abcb'.rfind('b') }}{{ 'abc'.find('z') }}|{{ 'aXa'.count('a') }}|{{ '-'.join(['a', 'b']) }}|{{ 'x'.zfill(3) }}|{{ 'x'.center(5, '*') }}|{{ 'a=b=c'.partition('=') }}|{{ 'prefix_x'.removeprefix('prefix_') }}", {}),
    ("str_strip_chars", "[{{ '\\n\\nx\\n'.strip('\\n') }}][{{ 'xxay'.lstrip('x') }}][{{ 'ayyx'.rstrip('xy') }}][{{ ' a '.strip(none) }}][{{ '\\u00a0\\u3000 wide \\u2003'.strip() }}]", {}),
    ("str_split", "{{ 'a<b>c<b>'.split('<b>') }}{{ ' a  b '.split() }}{{ 'x'.split(',') }}{{ 'a,b,c'.split(',', 1) }}{{ 'a,b,c'.rsplit(',', 1) }}{{ ' a b c '.split(none, 1) }}{{ 'r</think>a'.split('</think>')[-1] }}{{ 'l1\\nl2\\r\\nl3'.splitlines() }}", {}),
    ("str_format", "{{ '{} and {}'.format('a', 1) }}|{{ '{1}{0}'.format('a', 'b') }}|{{ '{x}!'.format(x=3) }}|{{ '{:>5}|{:<4}|{:^5}|{:05d}|{:.2f}'.format('r', 'l', 'c', 42, 3.14159) }}|{{ '{{literal}}'.format() }}|{{ '%s=%s' % ('k', 'v') }}|{{ '%5.1f%%' % 12.345 }}|{{ '%(a)s' % {'a': 1} }}|{{ '%r' % 'q' }}", {}),
    ("str_predicates", "{{ '123'.isdigit() }}{{ '12a'.isdigit() }}{{ 'abc'.isalpha() }}{{ 'ab1'.isalnum() }}{{ '  '.isspace() }}{{ ''.isspace() }}{{ 'AB'.isupper() }}{{ 'ab'.islower() }}", {}),
    ("dict_methods", "{{ d.get('k') }}{{ d.get('q', 'dflt') }}{{ d.get('q') }}{{ d.keys() | list }}{{ d.values() | list }}{{ d.items() | list }}{{ d['k'] }}", {"d": {"k": "v", "n": 1}}),
    ("list_methods", "{{ [1, 2, 2].count(2) }}{{ ['a', 'b'].index('b') }}", {}),
    # globals
    ("range", "{% for i in range(3) %}{{ i }}{% endfor %}|{{ range(1, 8, 3) | list }}|{{ range(3, -1, -1) | list }}|{{ range(0, 3, -1) | list }}|{{ range(2) | length }}", {}),
    ("dict_global", "{{ dict(a=1, b='x') }}{{ dict(a=1).a }}", {}),
    ("globals_defined", "{{ strftime_now is defined }} {{ raise_exception is defined }} {{ range is defined }} {{ namespace is defined }} {{ nothing is defined }}", {}),
    ("joiner", "{% set j = joiner(' | ') %}{% for x in [1, 2, 3] %}{{ j() }}{{ x }}{% endfor %}", {}),
    # real-template idioms
    ("qwen3_reasoning_split", "{% set c = m.content %}{% if '</think>' in c %}[{{ c.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') }}][{{ c.split('</think>')[-1].lstrip('\\n') }}]{% endif %}", {"m": {"content": "<think>\nreason\n</think>\n\nanswer"}}),
    ("reverse_scan", "{% set ns = namespace(last=-1) %}{% for m in msgs[::-1] %}{% set i = (msgs | length - 1) - loop.index0 %}{% if ns.last == -1 and m.role == 'user' %}{% set ns.last = i %}{% endif %}{% endfor %}{{ ns.last }}", {"msgs": [{"role": "user"}, {"role": "assistant"}, {"role": "user"}, {"role": "assistant"}]}),
    ("content_parts", "{% for m in msgs %}{% if m.content is string %}{{ m.content }}{% else %}{% for p in m.content %}{% if p.type == 'text' %}{{ p.text }}{% elif p.type == 'image' %}<img>{% endif %}{% endfor %}{% endif %}|{% endfor %}", {"msgs": [{"content": "plain"}, {"content": [{"type": "image"}, {"type": "text", "text": "caption"}]}]}),
    ("tool_arguments", "{% for t in calls %}{% if t.arguments is string %}{{ t.arguments }}{% else %}{{ t.arguments | tojson }}{% endif %};{% endfor %}", {"calls": [{"arguments": "{\"a\": 1}"}, {"arguments": {"z": 1, "a": [True, None]}}]}),
    # errors
    ("error_raise", "{% if true %}{{ raise_exception('Custom message: ' ~ n) }}{% endif %}", {"n": 3}),
    ("error_undefined_attr", "{{ x.y }}", {}),
    ("error_undefined_item", "{{ messages[0]['role'] }}", {"messages": []}),
    ("error_undefined_arith", "{{ u + 1 }}", {}),
    ("error_type_concat", "{{ 'a' + 1 }}", {}),
    ("error_compare", "{{ 1 < 'a' }}", {}),
    ("error_not_iterable", "{% for x in n %}{% endfor %}", {"n": None}),
    ("error_zero_div", "{{ 1 / 0 }}", {}),
    ("error_unknown_call", "{{ foo() }}", {}),
    ("error_unknown_filter", "{{ x | nosuchfilter }}", {}),
    ("error_unknown_test", "{{ x is nosuchtest }}", {}),
    ("error_syntax_if", "line1\n{% if %}", {}),
    ("error_unclosed_for", "{% for x in y %}", {}),
    ("error_unclosed_tag", "{{ x ", {}),
    ("error_unexpected_end", "{% endif %}", {}),
    ("error_namespace_attr", "{% set d = {'a': 1} %}{% set d.a = 2 %}", {}),
    ("error_list_mutation", "{% set l = [1] %}{{ l.append(2) }}", {}),
    ("error_tojson_undefined", "{{ missing | tojson }}", {}),
    ("error_big_range", "{{ range(1000000) | length }}", {}),
]


def special_tokens(config):
    out = {}
    for key in SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out


def select_template(config, tools):
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t["name"]: t["template"] for t in template}
        if tools is not None and "tool_use" in named:
            return named["tool_use"]
        return named["default"]
    return template


class GenerationTag(jinja2.ext.Extension):
    """transformers' AssistantTracker as rendering sees it: {% generation %}...{% endgeneration %}
    outputs its body unchanged (the tracker only records where it was)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def make_env():
    # Mirrors transformers.utils.chat_template_utils._cached_compile_jinja_template.
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def outcome(fn):
    try:
        return {"output": fn()}
    except jinja2.exceptions.TemplateError as e:  # raise_exception and undefined errors
        return {"error": str(e), "error_type": type(e).__name__}
    except Exception as e:  # TypeError etc. from Python operators inside the template
        return {"error": str(e), "error_type": type(e).__name__}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixtures", required=True, help="folder of tokenizer_config-style *.json fixtures")
    ap.add_argument("--out", required=True, help="output folder; chat_refs.json is written there")
    args = ap.parse_args()

    try:
        from transformers.utils.chat_template_utils import render_jinja_template
        import transformers
        transformers_version = transformers.__version__
    except Exception as e:  # transformers missing or too old: jinja2 path only
        render_jinja_template = None
        transformers_version = None
        print(f"note: transformers path unavailable ({e}); using jinja2 only", file=sys.stderr)
    if render_jinja_template is not None:
        # Probe the call signature once, so an API change shows as a note, not as 200 mismatches.
        try:
            probe, _ = render_jinja_template(conversations=[[{"role": "user", "content": "x"}]], tools=None,
                                             documents=None, chat_template="{{ messages[0].content }}{{ b }}",
                                             add_generation_prompt=False, b="y")
            assert probe == ["xy"], probe
        except Exception as e:
            print(f"note: transformers {transformers_version} render_jinja_template unusable ({e!r}); "
                  "using jinja2 only", file=sys.stderr)
            render_jinja_template = None
            transformers_version = None

    env = make_env()
    paths = sorted(glob.glob(os.path.join(args.fixtures, "*.json")))
    paths = [p for p in paths if not os.path.basename(p).startswith("chat_refs")]
    if not paths:
        sys.exit(f"no fixtures in {args.fixtures}")

    records, mismatches = [], []
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
        specials = special_tokens(config)
        for case in CASES:
            tools = case.get("tools")
            kwargs = dict(config.get("_test_kwargs", {}))
            kwargs.update(case.get("kwargs", {}))
            template = select_template(config, tools)
            messages = json.loads(json.dumps(case["messages"]))  # fresh copy per render

            def via_jinja():
                variables = {**specials, **kwargs}
                return env.from_string(template).render(
                    messages=messages, tools=tools, documents=None,
                    add_generation_prompt=case["add_generation_prompt"], **variables)

            result = outcome(via_jinja)
            renderer = f"jinja2 {jinja2.__version__}"
            if render_jinja_template is not None:
                def via_transformers():
                    rendered, _ = render_jinja_template(
                        conversations=[json.loads(json.dumps(case["messages"]))], tools=tools,
                        documents=None, chat_template=template,
                        add_generation_prompt=case["add_generation_prompt"], **{**specials, **kwargs})
                    return rendered[0]

                ref = outcome(via_transformers)
                renderer = f"transformers {transformers_version}"
                if ref.get("output") != result.get("output") or ("error" in ref) != ("error" in result):
                    mismatches.append((name, case["name"], result, ref))
                result = ref
            record = {"template": name, "case": case["name"], "messages": case["messages"],
                      "add_generation_prompt": case["add_generation_prompt"], "kwargs": kwargs,
                      "renderer": renderer}
            if tools is not None:
                record["tools"] = tools
            record.update(result)
            records.append(record)

    unit_records = []
    for uname, utemplate, uvars in UNIT_CASES:
        def via_unit():
            return env.from_string(utemplate).render(**json.loads(json.dumps(uvars)))

        record = {"name": uname, "template": utemplate, "vars": uvars}
        record.update(outcome(via_unit))
        unit_records.append(record)

    os.makedirs(args.out, exist_ok=True)
    out_path = os.path.join(args.out, "chat_refs.json")
    meta = {"jinja2": jinja2.__version__, "transformers": transformers_version,
            "python": sys.version.split()[0], "fixtures": [os.path.basename(p) for p in paths],
            "mismatches_between_paths": len(mismatches)}
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "cases": records, "unit_cases": unit_records}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    errors = sum(1 for r in records if "error" in r)
    print(f"wrote {out_path}: {len(records)} cases ({errors} raise) from {len(paths)} templates, "
          f"{len(unit_records)} interpreter cases; "
          f"renderer: {'transformers ' + transformers_version if transformers_version else 'jinja2 ' + jinja2.__version__}")
    for name, case, mine, ref in mismatches:
        print(f"MISMATCH {name}/{case}: jinja2={mine!r} transformers={ref!r}", file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
