"""The budgeted jinja2 sandbox that chat templates render in (see chat_template.py for why).

`ImmutableSandboxedEnvironment` with transformers' options, filters, globals and `{% generation %}` tag,
whose hooks (call, attribute/item lookup, intercepted operators, filters, `~` concatenation) check the
deadline and character budget of the render in progress, held in a context variable (`METER`) so one
shared environment and its compiled templates serve every thread without a lock.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from datetime import datetime
from functools import wraps
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace

from lorasp_core.serving.types import TemplateBudget

MAX_RANGE_ITEMS = 10_000  # chat templates range over messages, never over millions of items
MAX_INT_BITS = 4096  # operands of ** and * on ints: a few steps would otherwise take minutes


class BudgetExceeded(Exception):
    """Raised inside a render; deliberately not a TemplateError/LookupError that jinja might swallow."""


# A render is pure Python and holds the GIL; other tenants' request threads get it back only at the
# interpreter's switch interval (5 ms) each time they release it for a torch op, so a long render slows
# their whole request. Every YIELD_EVERY_S of rendering, the render sleeps YIELD_S to hand the GIL over.
# Templates that render in under a millisecond (all real ones) never reach it.
YIELD_EVERY_S = 0.001
YIELD_S = 0.0001


class Meter:
    def __init__(self, budget: TemplateBudget) -> None:
        self.budget = budget
        now = time.perf_counter()
        self.deadline = now + budget.timeout_ms / 1000.0
        self.next_yield = now + YIELD_EVERY_S

    def tick(self) -> None:
        now = time.perf_counter()
        if now > self.deadline:
            raise BudgetExceeded(f"took longer than its budget of {self.budget.timeout_ms:g} ms to render")
        if now >= self.next_yield:
            time.sleep(YIELD_S)
            self.next_yield = time.perf_counter() + YIELD_EVERY_S

    def size(self, chars: int, what: str = "output") -> None:
        if chars > self.budget.max_chars:
            raise BudgetExceeded(f"{what} exceeds the budget of {self.budget.max_chars} characters")


METER: ContextVar[Meter | None] = ContextVar("lorasp_chat_template_meter", default=None)


def _tick() -> Meter | None:
    meter = METER.get()
    if meter is not None:
        meter.tick()
    return meter


def _check_args(meter: Meter | None, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Numeric arguments (widths, counts, repeats) beyond the output budget can only build huge strings."""
    if meter is None:
        return
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and abs(value) > meter.budget.max_chars:
            raise BudgetExceeded(
                f"argument {value} exceeds the budget of {meter.budget.max_chars} characters"
            )


def _budgeted_range(*args: int) -> range:
    items = range(*args)
    if len(items) > MAX_RANGE_ITEMS:
        raise BudgetExceeded(f"range of {len(items)} items exceeds the limit of {MAX_RANGE_ITEMS}")
    return items


def _sized(value: Any) -> int | None:
    return len(value) if isinstance(value, (str, list, tuple)) else None


class _BudgetedCodeGenerator(CodeGenerator):
    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        # `a ~ b` compiles to a direct str_join the sandbox never sees; route it through the budget.
        self.write("environment.budgeted_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    # transformers' override: no HTML escaping, and the json.dumps options templates use.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


class _TemplateNamespace(Namespace):
    """jinja's namespace() without underscore attributes (transformers' guard against CPython internals)."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805  # jinja's own signature trick
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with an underscore")


class _GenerationTag(jinja2.ext.Extension):
    """transformers' `{% generation %}...{% endgeneration %}` (marks assistant text): rendered as its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Callable[[], str]) -> str:
        return caller()


def _budgeted_filter(function: Callable[..., Any]) -> Callable[..., Any]:
    skip = 2 if hasattr(function, "jinja_pass_arg") else 1  # (context,) value, then the arguments

    @wraps(function)  # keeps jinja's pass_context / pass_environment markers
    def run(*args: Any, **kwargs: Any) -> Any:
        _check_args(_tick(), args[skip:], kwargs)
        return function(*args, **kwargs)

    return run


class BudgetedEnvironment(ImmutableSandboxedEnvironment):
    code_generator_class = _BudgetedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%", "//"})

    def __init__(self) -> None:
        super().__init__(
            trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, jinja2.ext.loopcontrols]
        )
        self.filters["tojson"] = _tojson
        self.filters = {name: _budgeted_filter(f) for name, f in self.filters.items()}
        self.globals.update(
            range=_budgeted_range,
            raise_exception=_raise_exception,
            strftime_now=_strftime_now,
            dict=dict,
            namespace=_TemplateNamespace,
        )
        self.globals.pop("lipsum", None)  # generates text in one uninterruptible call; no template needs it

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # A {% for %} body with no call or lookup in it never reaches a hook (nested loops over a long
        # message would run unchecked): every loop iterates through budgeted_iter instead.
        tree = super()._parse(source, name, filename)
        for loop in tree.find_all(nodes.For):
            budgeted = nodes.EnvironmentAttribute("budgeted_iter").set_lineno(loop.lineno)
            loop.iter = nodes.Call(budgeted, [loop.iter], [], None, None).set_lineno(loop.lineno)
        return tree

    def budgeted_iter(self, iterable: Any) -> Iterator[Any]:
        for index, item in enumerate(iterable):
            if index % 64 == 0:
                _tick()
            yield item

    def budgeted_concat(self, parts: Sequence[Any]) -> str:
        meter = _tick()
        strings = [str(part) for part in parts]
        if meter is not None:
            meter.size(sum(len(s) for s in strings), "a concatenated string")
        return "".join(strings)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        meter = _tick()
        if meter is not None:
            if isinstance(left, int) and isinstance(right, int):
                bits = left.bit_length() + right.bit_length()
                if bits > MAX_INT_BITS or (
                    operator == "**" and right * max(left.bit_length(), 1) > MAX_INT_BITS
                ):
                    raise BudgetExceeded(f"integer arithmetic beyond {MAX_INT_BITS} bits")
            elif operator == "*":
                count, sized = (left, _sized(right)) if isinstance(left, int) else (right, _sized(left))
                if isinstance(count, int) and sized is not None:
                    meter.size(sized * max(count, 0), "a repeated value")
            elif operator == "+" and _sized(left) is not None and _sized(right) is not None:
                meter.size(len(left) + len(right), "a concatenated value")
            elif operator == "%" and isinstance(left, str):
                _check_args(meter, _spec_widths(left, _PERCENT_WIDTHS), {})
        return super().call_binop(context, operator, left, right)

    def getattr(self, obj: Any, attribute: str) -> Any:
        _tick()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _tick()
        return super().getitem(obj, argument)

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        meter = _tick()
        _check_args(meter, args, kwargs)
        bound_to = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if isinstance(bound_to, str):  # "{:>999999}".format(x): the sandbox wraps str.format
            _check_args(meter, _spec_widths(bound_to, _FORMAT_WIDTHS), {})
        return super().call(__context, __obj, *args, **kwargs)


# Widths and precisions in printf-style ("%9999s") and str.format ("{:>9999}") specs.
_PERCENT_WIDTHS = re.compile(r"%[-+ #0]*(\d*)(?:\.(\d+))?")
_FORMAT_WIDTHS = re.compile(r"\{[^{}]*?:[^{}]*?(\d+)(?:\.(\d+))?")


def _spec_widths(text: str, pattern: re.Pattern[str]) -> list[int]:
    return [int(group) for match in pattern.finditer(text) for group in match.groups() if group]
