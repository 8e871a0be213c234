"""The trigger grammar of SPEC §2: parse, format, list terms and evaluate expressions."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from supervisord.core.errors import TriggerError
from supervisord.core.model import EVENT_NAMES, EVENT_TYPES, And, Expr, Or, Term

# Tokens: parentheses, the symbolic operators, or a run of anything else that is
# not whitespace. `&&`/`||` split words, so `a&&b` needs no spaces.
_TOKEN: Final = re.compile(r"\s*(?:(\(|\)|&&|\|\|)|((?:[^\s()&|]|&(?!&)|\|(?!\|))+))")
_INTEGER: Final = re.compile(r"[0-9]+")
_GLOBAL_TYPES: Final = ("globaltime", "globalrepeat")
# One item of a Qube job dependency (what a job waits for before it starts, set at
# submission): `link-complete-job-220`, `link-done-work-220`, or a bare job id `220`.
_DEPENDENCY_ITEM: Final = re.compile(r"(?i:link)-\S*|[0-9]+(?:\.[0-9]+)?")


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "(" ")" "and" "or" "word" "end"
    text: str
    column: int  # 1-based


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while text[pos:].strip():
        match = _TOKEN.match(text, pos)
        if match is None:  # pragma: no cover - every non-blank character forms a token
            raise TriggerError(f"unexpected character at column {pos + 1} in {text!r}")
        symbol, word = match.group(1), match.group(2)
        column = match.start(1 if symbol else 2) + 1
        if symbol:
            kind = {"&&": "and", "||": "or"}.get(symbol, symbol)
            tokens.append(_Token(kind, symbol, column))
        elif word.lower() in ("and", "or"):
            tokens.append(_Token(word.lower(), word, column))
        else:
            tokens.append(_Token("word", word, column))
        pos = match.end()
    tokens.append(_Token("end", "", len(text) + 1))
    return tokens


class _Parser:
    """Recursive descent over the token list; one instance per parse."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.index = 0

    def peek(self) -> _Token:
        return self.tokens[self.index]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def parse(self) -> Expr:
        if self.peek().kind == "end":
            raise TriggerError("empty trigger")
        expr = self.expr(after=None)
        token = self.peek()
        if token.kind == ")":
            raise TriggerError(f"unexpected ')' at column {token.column}")
        if token.kind != "end":
            raise TriggerError(
                f"expected '&&' or '||' before {token.text!r} at column {token.column}"
            )
        return expr

    def expr(self, after: _Token | None) -> Expr:
        operands = [self.conjunction(after)]
        while self.peek().kind == "or":
            operands.append(self.conjunction(self.take()))
        return operands[0] if len(operands) == 1 else Or(tuple(operands))

    def conjunction(self, after: _Token | None) -> Expr:
        operands = [self.term(after)]
        while self.peek().kind == "and":
            operands.append(self.term(self.take()))
        return operands[0] if len(operands) == 1 else And(tuple(operands))

    def term(self, after: _Token | None) -> Expr:
        token = self.take()
        if token.kind == "word":
            return parse_term(token.text)
        if token.kind == "(":
            inner = self.expr(after=token)
            if self.peek().kind != ")":
                raise TriggerError(f"missing ')' to close '(' at column {token.column}")
            self.take()
            return inner
        where = "at the start" if after is None else f"after {after.text!r}"
        if token.kind == "end":
            raise TriggerError(f"expected a term {where}")
        raise TriggerError(f"expected a term {where}, got {token.text!r} at column {token.column}")


def parse_trigger(text: str) -> Expr:
    """Parse a trigger expression; raise TriggerError saying what is wrong and where."""
    _refuse_dependency(text)
    return _Parser(text).parse()


def _refuse_dependency(text: str) -> None:
    """Raise TriggerError when ``text`` is a Qube job dependency string (SPEC §2): the
    comma list a job waits on at submission, which sites paste here by mistake."""
    items = [item.strip() for item in text.strip().split(",")]
    if not all(_DEPENDENCY_ITEM.fullmatch(item) for item in items):
        return
    if len(items) > 1:
        why = "a comma list of what a job waits for before it starts"
    elif items[0][0].isdigit():
        why = "a bare job id, which a job waits for before it starts"
    else:
        why = "'link' is not an event name"
    raise TriggerError(
        f"{text.strip()!r} is a Qube job dependency, not a callback trigger ({why});"
        f" {_hint(items[0]) if len(items) == 1 else _HINT}"
    )


_HINT: Final = "a trigger names events as name-type-context, e.g. complete-job-220"


def _hint(item: str) -> str:
    """How to write a trigger on the event a dependency item waits for (a bare id waits
    for its job to complete)."""
    if item[0].isdigit():
        return f"a callback on that event is written complete-job-{item.partition('.')[0]}"
    suggestion = item.partition("-")[2]
    try:
        parse_term(suggestion)
    except TriggerError:
        return _HINT
    return f"a callback on that event is written {suggestion}"


def parse_term(text: str) -> Term:
    """Parse one event term such as ``complete-work-self-Segment:1-100``."""
    head, _, rest = text.partition("-")
    if head.lower() == "link" or _DEPENDENCY_ITEM.fullmatch(text):
        _refuse_dependency(text)
    if head.lower() in _GLOBAL_TYPES:
        kind = head.lower()
        _check_extra(kind, rest or None, text)
        return Term(None, kind, None, rest)
    parts = text.split("-", 3)
    if len(parts) < 3:
        raise TriggerError(f"expected name-type-context in {text!r}")
    name, kind, context = parts[0].lower(), parts[1].lower(), parts[2]
    extra = parts[3] if len(parts) == 4 else None
    if name not in EVENT_NAMES:
        raise TriggerError(f"unknown event name {parts[0]!r} in {text!r}")
    if kind not in EVENT_TYPES:
        raise TriggerError(f"unknown event type {parts[1]!r} in {text!r}")
    if not context:
        raise TriggerError(f"empty context in {text!r}")
    if context.lower() in ("self", "parent"):
        context = context.lower()
    if kind == "job" and extra == "*":
        extra = None
    _check_extra(kind, extra, text)
    return Term(name, kind, context, extra)


def _check_extra(kind: str, extra: str | None, text: str) -> None:
    problem = _extra_problem(kind, extra)
    if problem:
        raise TriggerError(f"{problem} in {text!r}")


def _extra_problem(kind: str, extra: str | None) -> str | None:
    """Why ``extra`` is not valid for a term of type ``kind``, or None if it is."""
    if kind == "job":
        return None if extra is None else f"a job term takes no extra, got {extra!r}"
    if extra == "":
        return "empty extra"
    if kind == "subjob":
        ok = extra is None or extra == "*" or _INTEGER.fullmatch(extra) is not None
        return None if ok else f"expected a subjob id or '*', got {extra!r}"
    if kind in ("time", "globaltime"):
        ok = extra is not None and _INTEGER.fullmatch(extra) is not None
        return None if ok else f"expected a Qube time (an integer), got {_shown(extra)}"
    if kind in ("repeat", "globalrepeat"):
        return None if _is_repeat(extra) else f"expected time-interval, got {_shown(extra)}"
    return None


def _is_repeat(extra: str | None) -> bool:
    start, dash, interval = (extra or "").partition("-")
    return (
        bool(dash)
        and _INTEGER.fullmatch(start) is not None
        and _INTEGER.fullmatch(interval) is not None
        and int(interval) > 0
    )


def _shown(extra: str | None) -> str:
    return "nothing" if extra is None else repr(extra)


def format_trigger(expr: Expr) -> str:
    """Canonical text for ``expr``; parse_trigger(format_trigger(e)) == e."""
    if isinstance(expr, Term):
        return str(expr)
    if isinstance(expr, And):
        # Any compound operand of an And needs parentheses: an Or would bind
        # looser, and a nested And would otherwise flatten into this one.
        return " && ".join(_operand(op, isinstance(op, And | Or)) for op in expr.operands)
    return " || ".join(_operand(op, isinstance(op, Or)) for op in expr.operands)


def _operand(expr: Expr, wrap: bool) -> str:
    text = format_trigger(expr)
    return f"({text})" if wrap else text


def terms_of(expr: Expr) -> tuple[Term, ...]:
    """The terms of ``expr``, left to right, duplicates kept."""
    return tuple(_walk(expr))


def _walk(expr: Expr) -> Iterator[Term]:
    if isinstance(expr, Term):
        yield expr
    else:
        for operand in expr.operands:
            yield from _walk(operand)


def evaluate(expr: Expr, truth: Sequence[bool]) -> bool:
    """Value of ``expr`` when term i of terms_of(expr) has value truth[i]."""
    count = len(terms_of(expr))
    if len(truth) != count:
        raise ValueError(f"expected {count} truth values, got {len(truth)}")
    return _evaluate(expr, iter(truth))


def _evaluate(expr: Expr, values: Iterator[bool]) -> bool:
    if isinstance(expr, Term):
        return next(values)
    # Evaluate every operand (no short-circuit) so each consumes its own terms.
    results = [_evaluate(operand, values) for operand in expr.operands]
    return all(results) if isinstance(expr, And) else any(results)
