"""Token masks that make a local model's output match an :class:`OutputConstraint`.

The grammar library is llguidance (chosen over xgrammar and outlines-core: it compiles a
JSON schema lazily in about a millisecond where outlines-core builds an index over the
whole vocabulary first, needs no torch, and its per-step mask is tens of microseconds for
SmolLM2's 49k-token vocabulary; docs/benchmarks.md has the figures). It and numpy are
imported when a :class:`GrammarCompiler` is built, which only the local runtime plugins
do (they depend on both); importing this module imports neither.

One :class:`GrammarCompiler` per loaded tokenizer compiles each distinct schema once and
keeps the compiled matcher (LRU); every sequence gets its own copy (:class:`Guide`), so
constrained and free sequences share a step and each row of the step's logits is masked
with its own sequence's state. Blocking calls: run them where the model runs (the
engine's worker thread).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ._constraints import OutputConstraint
from .errors import UnsupportedParameterError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

__all__ = ["GrammarCompiler", "Guide", "allowed_tokens"]

#: compiled schemas kept per tokenizer
GRAMMAR_CACHE_ENTRIES = 64
#: JSON laid out as ``json.dumps`` does: flexible whitespace lets a small model emit
#: newlines until it runs out of tokens
JSON_LAYOUT: JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


class Guide:
    """One sequence's grammar state: the mask for its next token, fed the tokens it takes."""

    def __init__(self, matcher: Any, constraint: OutputConstraint) -> None:
        self._matcher = matcher
        self.constraint = constraint

    def fill(self, bitmask: Any, row: int) -> None:
        """Write the allowed next tokens into ``bitmask[row]`` (int32, 32 tokens a word)."""
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(self._matcher, bitmask, row)

    def consume(self, token: int) -> None:
        self._matcher.consume_token(token)

    @property
    def accepting(self) -> bool:
        """The output so far is a complete match (end of sequence is allowed)."""
        return bool(self._matcher.is_accepting())


def allowed_tokens(bitmask: Any, vocab_size: int) -> Any:
    """``bitmask`` (``[rows, words]`` int32) as a ``[rows, vocab_size]`` boolean array."""
    import numpy as np

    bits = np.unpackbits(bitmask.view(np.uint8), axis=1, bitorder="little")
    if bits.shape[1] < vocab_size:
        bits = np.pad(bits, ((0, 0), (0, vocab_size - bits.shape[1])))
    return bits[:, :vocab_size].astype(bool)


class GrammarCompiler:
    """Compiles constraints for one tokenizer, each distinct schema once.

    Args:
        tokenizer: a fast Hugging Face tokenizer.
        vocab_size: the width of the model's logits (may exceed the tokenizer's size;
            the extra ids are never allowed).
        eos_ids: the tokens that end a sequence (allowed once the output is complete).
    """

    def __init__(self, tokenizer: Any, *, vocab_size: int, eos_ids: Iterable[int]) -> None:
        import llguidance.hf

        eos = sorted(eos_ids)
        self.vocab_size = vocab_size
        self._tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=eos if len(eos) > 1 else eos[0]
        )
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        #: schemas compiled so far (a cache hit does not count)
        self.compilations = 0

    def guide(self, constraint: OutputConstraint) -> Guide:
        """A fresh :class:`Guide` for ``constraint``.

        Raises UnsupportedParameterError naming the request field and the construct the
        library cannot compile (``"not"``, a malformed ``pattern``, …).
        """
        template = self._compiled.get(constraint.schema)
        if template is None:
            template = self._compile(constraint)
        self._compiled.move_to_end(constraint.schema)
        return Guide(template.deep_copy(), constraint)

    def _compile(self, constraint: OutputConstraint) -> Any:
        from llguidance import LLMatcher

        try:
            grammar = LLMatcher.grammar_from_json_schema(constraint.schema, defaults=JSON_LAYOUT)
        except ValueError as exc:
            raise _uncompilable(constraint, str(exc)) from None
        matcher = LLMatcher(self._tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise _uncompilable(constraint, matcher.get_error())
        self.compilations += 1
        self._compiled[constraint.schema] = matcher
        while len(self._compiled) > GRAMMAR_CACHE_ENTRIES:
            self._compiled.popitem(last=False)
        return matcher

    def masks(self, guides: Sequence[Guide | None]) -> Any:
        """``[len(guides), vocab_size]`` booleans: the tokens each row may take next
        (a row without a guide allows everything)."""
        import numpy as np
        from llguidance.numpy import allocate_token_bitmask

        bitmask = allocate_token_bitmask(len(guides), self.vocab_size)
        for row, guide in enumerate(guides):
            if guide is not None:
                guide.fill(bitmask, row)
        allowed = allowed_tokens(bitmask, self.vocab_size)
        assert allowed.dtype == np.bool_
        return allowed


def _uncompilable(constraint: OutputConstraint, detail: str) -> UnsupportedParameterError:
    detail = " ".join(line.strip() for line in detail.splitlines() if line.strip())[:300]
    return UnsupportedParameterError(
        f"{constraint.param}: the schema cannot be enforced by the local decoder: {detail}",
        param=constraint.param,
    )
