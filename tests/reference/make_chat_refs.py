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


def make_env():
    # Mirrors transformers.utils.chat_template_utils._cached_compile_jinja_template (minus the
    # {% generation %} tracker, which no fixture uses).
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
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

    os.makedirs(args.out, exist_ok=True)
    out_path = os.path.join(args.out, "chat_refs.json")
    meta = {"jinja2": jinja2.__version__, "transformers": transformers_version,
            "python": sys.version.split()[0], "fixtures": [os.path.basename(p) for p in paths],
            "mismatches_between_paths": len(mismatches)}
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "cases": records}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    errors = sum(1 for r in records if "error" in r)
    print(f"wrote {out_path}: {len(records)} cases ({errors} raise) from {len(paths)} templates; "
          f"renderer: {'transformers ' + transformers_version if transformers_version else 'jinja2 ' + jinja2.__version__}")
    for name, case, mine, ref in mismatches:
        print(f"MISMATCH {name}/{case}: jinja2={mine!r} transformers={ref!r}", file=sys.stderr)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
