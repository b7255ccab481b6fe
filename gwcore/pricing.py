# cython: annotation_typing=False
# Cython compiles this file in place; it is also the pure-Python twin (see gwcore/_twins.py).
# Annotations only document here: they never become C-level type checks.
"""Prices per model and the cost of one usage record.

It owns the price table shipped with the package (``gwcore/pricing.json``: USD per million tokens
for input, output, cached input and reasoning, with the date the prices were taken), the overrides
from the YAML config (``pricing:``) and the one cost formula. It never guesses: a model without a
price, or a record without token counts, costs ``None`` (unknown), never 0. No I/O after loading;
called once per request, never per chunk.

YAML shape (a key is ``model`` or ``provider/model``, the provider being the configured name)::

    pricing:
      gpt-4o: {input: 2.5, output: 10, cached_input: 1.25}
      groq-fast/llama-3.1-8b-instant: {input: 0.05, output: 0.08}
      my-local-model: {input: 0, output: 0}      # free, so cost 0 rather than unknown
      some-model: null                            # no price: cost unknown
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from gwcore.config import ConfigError
from gwcore.usage import Pricer, UsageRecord

__all__ = ["ModelPrice", "PriceTable"]

_FIELDS = ("input", "output", "cached_input", "reasoning")
# Version suffixes a provider adds to a model name: -2024-08-06, -20250514, -latest.
_VERSION_SUFFIX = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8}|latest)$")
_NOT_FOUND = object()  # not in the lookup memo (a memoized price may be None)


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens. ``cached_input`` None: the input price; ``reasoning`` None: the
    output price (reasoning tokens are output tokens everywhere we know)."""

    input: float
    output: float
    cached_input: float | None = None
    reasoning: float | None = None

    def cost(
        self,
        prompt: int | None,
        completion: int | None,
        cached: int | None = None,
        reasoning: int | None = None,
    ) -> float | None:
        """Token counts in OpenAI semantics (prompt includes cached, completion includes
        reasoning) -> USD, or None when neither prompt nor completion was reported."""
        return _cost(self, prompt, completion, cached, reasoning)


def _cost(
    price: ModelPrice,
    prompt: int | None,
    completion: int | None,
    cached: int | None,
    reasoning: int | None,
) -> float | None:
    """``ModelPrice.cost``, the one formula (``PriceTable.cost`` calls it without a method
    call; compiled: a C call)."""
    if prompt is None and completion is None:
        return None
    prompt = prompt or 0
    completion = completion or 0
    cached = min(cached or 0, prompt)
    reasoning = min(reasoning or 0, completion)
    cached_price = price.input if price.cached_input is None else price.cached_input
    reasoning_price = price.output if price.reasoning is None else price.reasoning
    return (
        (prompt - cached) * price.input
        + cached * cached_price
        + (completion - reasoning) * price.output
        + reasoning * reasoning_price
    ) / 1e6


def _price(value: Any, where: str) -> ModelPrice | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError("must be a mapping of input/output/cached_input/reasoning prices", where)
    unknown = sorted(set(map(str, value)) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"unknown price field (known: {', '.join(_FIELDS)})", f"{where}.{unknown[0]}"
        )
    out: dict[str, float] = {}
    for name in _FIELDS:
        v = value.get(name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ConfigError(
                "must be a non-negative number (USD per 1M tokens)", f"{where}.{name}"
            )
        out[name] = float(v)
    for name in ("input", "output"):
        if name not in out:
            raise ConfigError("required", f"{where}.{name}")
    return ModelPrice(**out)


class PriceTable(Pricer):
    """Model name -> price, with the lookup rules of ``lookup``.

    An extension type in the compiled module (``pricing.pxd``): ``cost`` and ``lookup`` are C
    calls inside it, and ``cost`` reads a ``UsageRecord``'s fields as struct members."""

    def __init__(self, prices: Mapping[str, ModelPrice | None], as_of: str | None = None) -> None:
        self._prices = dict(prices)
        self.as_of = as_of
        self._memo: dict[tuple[str, str | None, str], ModelPrice | None] = {}

    @classmethod
    def builtin(cls) -> PriceTable:
        """The table shipped with the package."""
        text = resources.files("gwcore").joinpath("pricing.json").read_text(encoding="utf-8")
        data = json.loads(text)
        prices: dict[str, ModelPrice | None] = {}
        for kind, models in data["providers"].items():
            for model, value in models.items():
                price = _price(value, f"pricing.json:{kind}.{model}")
                prices[f"{kind}/{model}"] = price
                prices.setdefault(model, price)  # the first provider listed wins a bare name
        return cls(prices, data.get("as_of"))

    @classmethod
    def from_config(cls, section: Any) -> PriceTable:
        """The shipped table with the YAML ``pricing:`` section laid over it."""
        table = cls.builtin()
        if section is None:
            return table
        if not isinstance(section, Mapping):
            raise ConfigError("must map model names to prices", "pricing")
        overrides = {
            str(model): _price(value, f"pricing.{model}") for model, value in section.items()
        }
        return table.with_overrides(overrides)

    def with_overrides(self, overrides: Mapping[str, ModelPrice | None]) -> PriceTable:
        return PriceTable({**self._prices, **overrides}, self.as_of)

    def __contains__(self, model: str) -> bool:
        return model in self._prices

    def names(self) -> Iterable[str]:
        return self._prices.keys()

    def lookup(self, provider: str, kind: str | None, model: str) -> ModelPrice | None:
        """``provider/model``, ``kind/model``, ``model``; then the same without a version suffix
        (``-2024-08-06``, ``-20250514``, ``-latest``) and without a vendor prefix
        (OpenRouter's ``openai/gpt-4o``). A key present with a null price stops the search."""
        key = (provider, kind, model)
        memo = self._memo
        price = memo.get(key, _NOT_FOUND)  # one hash lookup when memoized
        if price is not _NOT_FOUND:
            return price
        price = self._find(provider, kind, model)
        if len(memo) < 4096:  # bounded: model names come from clients
            memo[key] = price
        return price

    def _find(self, provider: str, kind: str | None, model: str) -> ModelPrice | None:
        prices = self._prices
        names = [model]
        bare = _VERSION_SUFFIX.sub("", model)
        if bare != model:
            names.append(bare)
        for name in list(names):
            _, sep, rest = name.partition("/")
            if sep and rest:
                names.append(rest)
                names.append(_VERSION_SUFFIX.sub("", rest))
        for name in names:
            for candidate in (f"{provider}/{name}", f"{kind}/{name}" if kind else None, name):
                if candidate is not None and candidate in prices:
                    return prices[candidate]
        return None

    def cost(self, rec: UsageRecord, kind: str | None = None) -> float | None:
        if type(rec) is UsageRecord:
            r = rec  # compiled: typed, its fields read as struct members
            return self._price_tokens(
                self.lookup(r.provider, kind, r.upstream_model),
                r.prompt_tokens,
                r.completion_tokens,
                r.cached_tokens,
                r.reasoning_tokens,
            )
        return self._price_tokens(
            self.lookup(rec.provider, kind, rec.upstream_model),
            rec.prompt_tokens,
            rec.completion_tokens,
            rec.cached_tokens,
            rec.reasoning_tokens,
        )

    def _price_tokens(
        self,
        price: ModelPrice | None,
        prompt: int | None,
        completion: int | None,
        cached: int | None,
        reasoning: int | None,
    ) -> float | None:
        if price is None:
            return None
        if type(price) is ModelPrice:  # not a subclass's own cost: the formula, called directly
            return _cost(price, prompt, completion, cached, reasoning)
        return price.cost(prompt, completion, cached, reasoning)
