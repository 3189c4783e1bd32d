"""Chat templates: hostile templates stop fast with ChatTemplateError; real ones render as before.

"As before" = what a plain jinja2 ImmutableSandboxedEnvironment(trim_blocks, lstrip_blocks)
renders, which is how tinygraph rendered templates before the limits were added.
"""

from __future__ import annotations

import re
import time

import pytest

jinja2 = pytest.importorskip("jinja2")
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

from tinygraph.io import LoadError, apply_chat_template  # noqa: E402
from tinygraph.io.chat_template import MAX_CHARS, TIME_LIMIT_S, ChatTemplateError  # noqa: E402

MSGS = [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is 2+2?\nAnswer briefly."}]

# Templates in the formats of real models, written for these tests.
CHATML_SMOLLM = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}"
    "{% set content = '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}\n"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}\n"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}\n"
    "{% endif %}\n"
    "  {% if message['role'] == 'user' %}\n"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}\n"
    "{{ message['content'] + eos_token }}"
    "{% endif %}\n"
    "{% endfor %}"
)
SPECIAL = {"bos_token": "<s>", "eos_token": "</s>"}


def plain_jinja(template: str, **kw) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    return env.from_string(template).render(**kw)


@pytest.mark.parametrize("template, want", [
    (CHATML_SMOLLM, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                    "<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
                    "<|im_start|>user\nWhat is 2+2?\nAnswer briefly.<|im_end|>\n<|im_start|>assistant\n"),
    (LLAMA3, "<s><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant"
             "<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?\n"
             "Answer briefly.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    (MISTRAL, "<s>[INST] Hi there [/INST]Hello!</s>[INST] What is 2+2?\nAnswer briefly. [/INST]"),
])
def test_real_templates_render_as_before(template: str, want: str) -> None:
    got = apply_chat_template(template, MSGS, add_generation_prompt=True, **SPECIAL)
    assert got == want
    assert got == plain_jinja(template, messages=MSGS, add_generation_prompt=True, **SPECIAL)


def test_default_model_template_renders_as_before() -> None:
    from tinygraph.hub import DownloadError, default_model_path
    from tinygraph.io.gguf_loader import field_value, open_reader

    try:
        path = default_model_path()
    except DownloadError as e:
        pytest.skip(f"default model not downloadable here: {e}")
    template = field_value(open_reader(path), "tokenizer.chat_template")
    for msgs in (MSGS, [{"role": "system", "content": "Be terse."}] + MSGS):
        for gen in (True, False):
            want = plain_jinja(template, messages=msgs, add_generation_prompt=gen)
            assert apply_chat_template(template, msgs, add_generation_prompt=gen) == want


def test_mistral_template_error_is_a_load_error() -> None:
    bad = [{"role": "assistant", "content": "x"}]
    with pytest.raises(ChatTemplateError, match=r"my-model chat template failed to render: TemplateError: "
                                                r"Conversation roles must alternate.*line 3") as ei:
        apply_chat_template(MISTRAL, bad, template_name="my-model chat template", **SPECIAL)
    assert isinstance(ei.value, LoadError) and isinstance(ei.value, ValueError)


# (template, what the message says) — each must stop quickly with ChatTemplateError
ATTACKS = [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "longer than"),
    ("{% set x = range(5000) %}{% for a in x %}{% for b in x %}{% for c in x %}{% endfor %}{% endfor %}"
     "{% endfor %}", "longer than"),  # no call inside the loops: the loop bodies check the clock
    ("{% macro f() %}{% for i in range(100000) %}{{ caller() }}{% endfor %}{% endmacro %}"
     "{% call f() %}{% call f() %}{% endcall %}{% endcall %}", "longer than"),
    ("{{ range(10**9)|length }}", "range of 1000000000 items"),
    ("{{ 1/0 }}", "ZeroDivisionError"),
    ("{{ 1 // 0 }}", "ZeroDivisionError"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    ("{{ 'a' * 10**10 }}", "repeating 1 items 10000000000 times"),
    ("{{ [1, 2] * 10**9 }}", "repeating 2 items"),
    ("{{ 10 ** (10 ** 10) }}", "too large"),
    ("{{ 2.0 ** 100000 }}", "OverflowError"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     "exceeds the limit"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
     "concatenation exceeds"),
    ("{% set s = 'a' * 1000000 %}{% for i in range(100000) %}{{ s }}{% endfor %}", "produced more than"),
    ("{% set s = 'a' * 999999 %}{% set y %}{% for i in range(10000) %}{{ s }}{% endfor %}{% endset %}",
     "produced more than"),
    ("{% set s = 'a' * 1000000 %}{{ ([s] * 1000)|join }}", "joined text would exceed"),
    ("{% set s = 'a' * 1000000 %}{{ ''.join([s] * 1000) }}", "joined text would exceed"),
    ("{{ 'x'|center(10**9) }}", "center(1000000000) is too wide"),
    ("{{ 'x'.ljust(10**9) }}", "ljust(1000000000) is too wide"),
    ("{{ 'x'|indent(10**9, true) }}", "indent(1000000000) is too wide"),
    ("{{ '%999999999d' % 1 }}", "too wide"),
    ("{{ '%*d' % (10**9, 1) }}", "too wide"),
    ("{{ '{:999999999}'.format(1) }}", "too wide"),
    ("{{ '{:{}}'.format(1, 10**9) }}", "too wide"),
    ("{{ '%999999999d'|format(1) }}", "too wide"),
    ("{{ ('a' * 1000)|replace('a', 'b' * 10000) }}", "replace() could make"),
    ("{{ raise_exception('custom failure') }}", "TemplateError: custom failure"),
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "failed to render"),
    ("{% for %}", "TemplateSyntaxError"),
    ("{{ messages[7].content }}", "UndefinedError"),
    ("{{ messages.append(1) }}", "SecurityError"),
]


@pytest.mark.parametrize("template, says", ATTACKS, ids=range(len(ATTACKS)))
def test_hostile_templates_stop_fast(template: str, says: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(ChatTemplateError, match=rf"^chat template.*{re.escape(says)}") as ei:
        apply_chat_template(template, MSGS)
    assert time.monotonic() - t0 < TIME_LIMIT_S + 1.5
    assert isinstance(ei.value, ValueError)
    assert "line 1" in str(ei.value)  # names where in the template


def test_limits_leave_room_for_real_prompts() -> None:
    # a long conversation near the output limit still renders
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": "x" * 9000} for i in range(100)]
    out = apply_chat_template(CHATML_SMOLLM, msgs)
    assert len(out) < MAX_CHARS and out.count("<|im_start|>") == 102
    assert apply_chat_template("{{ range(100000)|length }}", MSGS) == "100000"
