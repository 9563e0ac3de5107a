"""Chat templates are tenant code: rendered in the sandbox under a budget, never under a shared lock."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from serving_fixtures import TINY_LLAMA_NAME, make_llama_adapter, make_tiny_tokenizer

from lorasp_core.serving import (
    AdapterLoadError,
    ChatTemplateError,
    GenerationRequest,
    ServingEngine,
    TemplateBudget,
)
from lorasp_core.serving.chat_template import (
    MAX_TEMPLATE_CHARS,
    PROBE_MESSAGES,
    check_chat_template,
    render_chat_template,
)

EngineFactory = Callable[..., ServingEngine]
BUDGET = TemplateBudget(timeout_ms=300, max_chars=10_000)
# Three nested empty loops: ~10^12 iterations, with no output and no call inside the innermost one.
SLOW = "{% for i in range(9999) %}{% for j in range(9999) %}{% for k in range(9999) %}" + "{% endfor %}" * 3

HOSTILE = {
    "raises": ("{{ raise_exception('bad turn') }}", "bad turn"),
    "unparsable": ("{% if messages %}never closed", "does not parse"),
    "zero_division": ("{{ 1 // 0 }}", "ZeroDivisionError"),
    "undefined": ("{{ nope.deeper }}", "undefined"),
    "slow_loops": (SLOW, "300 ms"),
    "huge_range": ("{% for i in range(10**6) %}{% endfor %}", "exceeds"),
    "big_output": ("{% for i in range(5000) %}{{ 'abc' }}{% endfor %}", "output exceeds"),
    "concat_bomb": (
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
        "concatenated",
    ),
    "plus_bomb": (
        "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
        "concatenated",
    ),
    "repeat_bomb": ("{{ 'a' * 10**9 }}", "repeated"),
    "power": ("{{ 7 ** 1000000 }}", "bits"),
    "filter_width": ("{{ 'a'|center(10**9) }}", "argument"),
    "printf_width": ("{{ '%999999999s' % 'a' }}", "argument"),
    "format_width": ("{{ '{:>999999999}'.format('a') }}", "argument"),
    "recursion": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursed"),
    "exponential_macro": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
        "300 ms",
    ),
    "dunder": ("{{ messages.__class__.__mro__ }}", "unsafe"),
    "mutation": ("{{ messages.append(1) }}", "unsafe"),
    "too_long": ("x" * (MAX_TEMPLATE_CHARS + 1), "over the limit"),
    "empty": ("{# nothing #}", "empty prompt"),
    "lipsum": ("{{ lipsum(5000) }}", "undefined"),
}


def test_renders_exactly_like_transformers() -> None:
    tokenizer = make_tiny_tokenizer()
    variables = dict(tokenizer.special_tokens_map)
    for messages in ([PROBE_MESSAGES[1]], list(PROBE_MESSAGES)):
        for add_generation_prompt in (True, False):
            ours = render_chat_template(
                tokenizer.chat_template,
                messages,
                budget=BUDGET,
                variables=variables,
                add_generation_prompt=add_generation_prompt,
            )
            theirs = tokenizer.apply_chat_template(
                messages, add_generation_prompt=add_generation_prompt, tokenize=False
            )
            assert ours == theirs and "<|im_start|>" in ours


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_templates_fail_with_their_reason_within_the_budget(name: str) -> None:
    template, reason = HOSTILE[name]
    started = time.monotonic()
    with pytest.raises(ChatTemplateError) as caught:
        check_chat_template(template, budget=BUDGET)
    assert reason in caught.value.problem, caught.value.problem
    assert time.monotonic() - started < 10  # a hang guard: the budget is 0.3 s


def test_loops_without_calls_over_a_long_message_are_cut_off() -> None:
    """No call, lookup or output inside the loops: only the per-iteration hook can stop them."""
    loops = "{% set c = messages[0].content %}{% for a in c %}{% for b in c %}{% for d in c %}"
    template = loops + "{% endfor %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(ChatTemplateError, match="300 ms"):
        render_chat_template(template, [{"role": "user", "content": "x" * 3000}], budget=BUDGET)
    assert time.monotonic() - started < 10  # a hang guard: 2.7e10 iterations otherwise


def test_absent_tools_are_none_as_in_transformers() -> None:
    template = "{% if tools is not none %}TOOLS{% endif %}{% if documents is none %}NODOCS{% endif %}ok"
    ours = render_chat_template(template, PROBE_MESSAGES, budget=BUDGET)
    theirs = make_tiny_tokenizer().apply_chat_template(
        list(PROBE_MESSAGES), chat_template=template, tokenize=False
    )
    assert ours == theirs == "NODOCSok"


def test_bounded_but_legitimate_templates_render() -> None:
    template = "{% for m in messages %}{{ m.role|upper }}: {{ m.content|tojson }}{{ '-' * 3 }}{% endfor %}"
    text = render_chat_template(template, PROBE_MESSAGES, budget=BUDGET)
    assert text.startswith('SYSTEM: "You are a helpful assistant."---')


@pytest.fixture
def engine(make_engine: EngineFactory) -> ServingEngine:
    return make_engine(max_adapters=2, template_budget=TemplateBudget(timeout_ms=3000))


def adapter_with_template(source: Path, target: Path, template: str) -> Path:
    shutil.copytree(source, target, dirs_exist_ok=True)
    (target / "lorasp.json").write_text(json.dumps({"chat_template": template}))
    return target


@pytest.fixture(scope="module")
def plain_adapter(adapter_dir: Path) -> Path:
    make_llama_adapter(adapter_dir / "plain", seed=9)
    return adapter_dir / "plain"


def chat(adapter_id: str | None) -> GenerationRequest:
    return GenerationRequest(
        model=TINY_LLAMA_NAME,
        adapter_id=adapter_id,
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=2,
    )


def test_check_adapter_rejects_a_bad_template(
    engine: ServingEngine, plain_adapter: Path, tmp_path: Path
) -> None:
    bad = adapter_with_template(plain_adapter, tmp_path / "bad", "{{ 1 / 0 }}")
    with pytest.raises(AdapterLoadError) as caught:
        engine.check_adapter("bad", bad, TINY_LLAMA_NAME)
    assert caught.value.file == "lorasp.json" and "ZeroDivisionError" in caught.value.problem
    good = adapter_with_template(plain_adapter, tmp_path / "good", "Q: {{ messages[-1].content }} A:")
    engine.check_adapter("good", good, TINY_LLAMA_NAME)


def test_a_loaded_bad_template_fails_its_own_requests_only(
    engine: ServingEngine, plain_adapter: Path, tmp_path: Path
) -> None:
    engine.load_adapter(
        "bad", adapter_with_template(plain_adapter, tmp_path / "bad", "{{ x.y.z }}"), TINY_LLAMA_NAME
    )
    with pytest.raises(ChatTemplateError, match="undefined"):
        engine.generate(chat("bad"))
    assert engine.generate(chat(None)).text() is not None
    engine.unload_adapter("bad")  # the failed request released the adapter: it is freed at once
    assert engine.loaded_adapters() == []


def test_rendering_holds_no_lock_that_other_requests_need(
    engine: ServingEngine, plain_adapter: Path, tmp_path: Path
) -> None:
    engine.load_adapter(
        "slow", adapter_with_template(plain_adapter, tmp_path / "slow", SLOW), TINY_LLAMA_NAME
    )
    resident = engine.base_model(TINY_LLAMA_NAME)
    failure: list[BaseException] = []

    def slow_chat() -> None:
        try:
            engine.generate(chat("slow"))
        except ChatTemplateError as error:
            failure.append(error)

    thread = threading.Thread(target=slow_chat)
    thread.start()
    time.sleep(0.3)  # the render runs for its whole 3 s budget
    assert thread.is_alive()
    assert resident.tokenizer_lock.acquire(timeout=0.2)  # free while the slow template renders
    resident.tokenizer_lock.release()
    assert engine.generate_batch([chat(None)])[0].completion_tokens == 2  # another request is served
    assert thread.is_alive()  # ... before the slow render gave up
    thread.join(timeout=30)
    assert len(failure) == 1 and "3000 ms" in failure[0].problem  # type: ignore[attr-defined]
