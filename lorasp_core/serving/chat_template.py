"""Chat templates rendered as untrusted code: jinja2's immutable sandbox under a time and size budget.

An adapter's chat template comes from a tenant (an uploaded lorasp.json), so it may raise, not parse,
divide by zero, or loop for ever. transformers already renders in `ImmutableSandboxedEnvironment`
(no attribute escapes, no mutation of lists/dicts); that sandbox stops nothing that is merely slow or
big. Here the same environment (same options, filters, globals and `{% generation %}` tag as
transformers', so the text is identical) also checks a per-render deadline and output budget at every
point a template can spend work: each call, attribute/item lookup, intercepted operator, filter,
`~` concatenation and emitted chunk; `range()` and operands of `*`, `+`, `**` are capped so no single
step can allocate or compute without bound. Every failure is a `ChatTemplateError` naming the problem.
Rendering takes no lock: compiled templates are shared, the budget lives in a context variable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import jinja2

from lorasp_core.serving.template_sandbox import METER, BudgetedEnvironment, BudgetExceeded, Meter
from lorasp_core.serving.types import ChatTemplateError, TemplateBudget

MAX_TEMPLATE_CHARS = 100_000  # the source itself: compiling is not interruptible, so bound its size

# What the upload check renders: every role a chat can carry, so role-specific branches are exercised.
PROBE_MESSAGES: tuple[dict[str, str], ...] = (
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi, how can I help?"},
    {"role": "user", "content": "Tell me a joke."},
)


_ENVIRONMENT = BudgetedEnvironment()


@lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
    if len(source) > MAX_TEMPLATE_CHARS:
        raise ChatTemplateError(f"is {len(source)} characters long, over the limit of {MAX_TEMPLATE_CHARS}")
    try:
        return _ENVIRONMENT.from_string(source)
    except jinja2.TemplateSyntaxError as error:
        raise ChatTemplateError(f"does not parse: line {error.lineno}: {error.message}") from error
    except (jinja2.TemplateError, RecursionError, MemoryError, ValueError) as error:
        raise ChatTemplateError(f"does not compile: {error}") from error


def render_chat_template(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    budget: TemplateBudget,
    add_generation_prompt: bool = True,
    variables: Mapping[str, str] | None = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The template's text for `messages` (plus the tokenizer's special tokens as `variables`, as
    transformers passes them, and the OpenAI tool definitions as `tools`); raises ChatTemplateError for
    any failure, budget included."""
    meter = Meter(budget)
    # Set before compiling too: jinja folds constant filter calls at compile time, and a filter that
    # refuses its arguments there is simply left for the render (where it fails with the reason).
    token = METER.set(meter)
    try:
        template = _compile(source)
        chunks: list[str] = []
        total = 0
        plain = [{str(k): _plain(v) for k, v in message.items()} for message in messages]
        # tools/documents as transformers passes them when absent (None, not undefined: `is not none`).
        context = {
            **(variables or {}),
            "messages": plain,
            "tools": [_plain(tool) for tool in tools] if tools else None,
            "documents": None,
            "add_generation_prompt": add_generation_prompt,
        }
        for chunk in template.generate(**context):
            total += len(chunk)
            meter.size(total)
            meter.tick()
            chunks.append(chunk)
        return "".join(chunks)
    except ChatTemplateError:
        raise
    except BudgetExceeded as error:
        raise ChatTemplateError(str(error)) from None
    except jinja2.TemplateError as error:  # raise_exception(), undefined names, sandbox violations
        raise ChatTemplateError(f"raised an error: {error.message or type(error).__name__}") from None
    except RecursionError:
        raise ChatTemplateError("recursed too deeply") from None
    except Exception as error:  # ZeroDivisionError, TypeError, ...: the template's bug, not the server's
        raise ChatTemplateError(f"raised {type(error).__name__}: {error}") from None
    finally:
        METER.reset(token)


def _plain(value: Any) -> Any:
    """A copy made of JSON values only (str, numbers, bool, None, lists, dicts): what a template may see.
    Anything else (an object with methods) becomes its string."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def check_chat_template(
    source: str, *, budget: TemplateBudget, variables: Mapping[str, str] | None = None
) -> None:
    """Upload-time check: the template compiles and renders a probe conversation within its budget."""
    text = render_chat_template(source, PROBE_MESSAGES, budget=budget, variables=variables)
    if not text.strip():
        raise ChatTemplateError("renders an empty prompt for a probe conversation")
