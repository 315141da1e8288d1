"""A transformers causal LM advanced one token per step for every active sequence.

The sequences share one padded key/value cache: tensors of shape ``[batch, heads, time,
head_dim]`` per layer, left-padded, with a ``[batch, time]`` attention mask and explicit
position ids, so one forward pass decodes one token for all of them. A joining sequence
is prefilled (joiners together, left-padded) and its cache is padded and concatenated
onto the batch; a finished or cancelled sequence is cut out of the batch at once, and
columns that only padding uses are trimmed away. All methods run on one worker thread
at a time (the StepModel contract), so there are no locks.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from atomr_infer_core import (
    ExecuteBatch,
    OutputConstraint,
    RequestKind,
    RuntimeKind,
    SequenceOutput,
    SessionRebuildCause,
    StopScanner,
    TransportKind,
    advance_sequence,
    hold_tool_call,
    out_of_memory,
    output_constraint,
    render_prompt,
    resolve_sampling,
)
from atomr_infer_core._guided import GrammarCompiler, Guide
from atomr_infer_core.errors import BadRequestError, ContextLengthExceededError

from ._cache import cache_argument, make_cache, returned_layers
from ._config import TorchConfig
from ._device import expected_transport, pick_device, pick_dtype, transport_for
from ._weights import resolve_weights

__all__ = ["TorchCausalLM", "render_prompt"]  # render_prompt: from core, re-exported

log = logging.getLogger("atomr_infer.torch")


def lookup_draft(tokens: Sequence[int], k: int, *, longest: int = 3) -> list[int]:
    """Prompt-lookup (n-gram) draft: the ``k`` tokens that followed the latest earlier
    occurrence of the sequence's last ``longest``..1 tokens; empty when none occurs.
    Extraction and editing answers copy spans of their input, so this guesses well
    there and costs nothing."""
    n_tokens = len(tokens)
    if k <= 0:
        return []
    for n in range(min(longest, n_tokens - 1), 0, -1):
        tail = list(tokens[n_tokens - n :])
        for start in range(n_tokens - n - 1, -1, -1):
            if list(tokens[start : start + n]) == tail:
                return list(tokens[start + n : start + n + k])
    return []


#: shortest shared prompt prefix worth caching, and how many prefixes are kept
MIN_PREFIX_TOKENS = 8
PREFIX_CACHE_ENTRIES = 8
#: recent prompts (token ids only) a lone joiner is compared with: a prefix it shares
#: with one of them is cached, though the two requests never joined one step
RECENT_PROMPTS = 16


def _common_length(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit``."""
    n = 0
    for x, y in zip(a[:limit], b[:limit], strict=False):
        if x != y:
            break
        n += 1
    return n


@attrs.define(eq=False)
class _Row:
    """One active sequence: where it is in the shared cache and how it samples."""

    seq_id: str
    prompt_len: int
    max_new: int
    temperature: float
    top_p: float
    top_k: int
    generator: Any
    scanner: StopScanner
    pos: int
    ignore_eos: bool = False
    generated: list[int] = attrs.Factory(list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    #: the grammar state of a constrained sequence (response_format, a tool call)
    guide: Guide | None = None
    constraint: OutputConstraint | None = None
    #: ``None``: no logprobs; else how many alternatives each token reports
    top_logprobs: int | None = None
    #: the prompt's token ids (prompt-lookup drafts copy from them)
    prompt: list[int] = attrs.Factory(list)

    @property
    def plain_greedy(self) -> bool:
        """Greedy with nothing reshaping the logits: drafts can be verified by argmax."""
        return (
            self.temperature <= 0
            and self.guide is None
            and self.top_logprobs is None
            and not (self.presence_penalty or self.frequency_penalty)
        )


class TorchCausalLM:
    """A ``StepModel`` over a transformers causal LM (``task = "generate"``).

    ``batch.extra["ignore_eos"] = True`` keeps generating past end-of-sequence tokens
    (as vLLM's ``ignore_eos``; benchmarks use it for fixed-length outputs).
    """

    runtime_kind = RuntimeKind(RuntimeKind.TORCH)
    capabilities = frozenset({RequestKind.CHAT, RequestKind.COMPLETION})

    def __init__(self, config: TorchConfig, *, weights: str, name: str = "torch") -> None:
        self.config = config
        self.weights = weights
        self.name = name
        self.max_batch_size = config.max_batch_size
        self.step_token_budget = config.step_token_budget
        #: shared prompt prefixes are cached (the host routes replicas by prefix then)
        self.prefix_cache = config.prefix_cache
        #: resolved by ``load`` ("auto" becomes "cpu" or "cuda:0")
        self.device = config.device
        self.transport_kind: TransportKind = expected_transport(config.device)
        self.model: Any = None
        self.tokenizer: Any = None
        self.path: Path | None = None
        #: the keyword this model's forward takes its cache under (set by ``load``)
        self._cache_argument = "past_key_values"
        self._prefixes: OrderedDict[tuple[int, ...], tuple[list[Any], list[Any]]] = OrderedDict()
        self._recent: deque[tuple[int, ...]] = deque(maxlen=RECENT_PROMPTS)
        #: compiled grammars for this tokenizer (built at the first constrained request)
        self._grammars: GrammarCompiler | None = None
        #: prompt-lookup draft tokens proposed and accepted so far
        self.drafted = 0
        self.accepted = 0
        self._reset()

    # -- session ----------------------------------------------------------------------

    def _reset(self) -> None:
        self._rows: list[_Row] = []
        self._keys: list[Any] = []
        self._values: list[Any] = []
        self._mask: Any = None

    def load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.device = pick_device(self.config.device)
        self.transport_kind = transport_for(self.device)
        self.path = resolve_weights(self.weights, self.config.cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        dtype = pick_dtype(self.config.dtype, self.device)
        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype)
        self.model = model.to(self.device).eval()
        self._cache_argument = cache_argument(self.model)
        self._torch = torch
        gen = self.model.generation_config
        eos = gen.eos_token_id if gen is not None else None
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos_ids)
        cfg = self.model.config
        self.max_positions = int(
            getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048)
        )
        self.pad_id = self.tokenizer.pad_token_id or 0
        out_embeddings = self.model.get_output_embeddings()
        self.vocab_size = int(
            out_embeddings.weight.shape[0] if out_embeddings is not None else cfg.vocab_size
        )
        self._grammars = None
        self._prefixes.clear()
        self._recent.clear()
        self._reset()
        log.info(
            "torch deployment %r: loaded %s on %s (%s)", self.name, self.path, self.device, dtype
        )

    def rebuild(self, cause: SessionRebuildCause) -> None:
        log.warning("torch deployment %r: rebuilding the model session (%s)", self.name, cause)
        self._reset()
        self.model = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
        self.load()

    # -- prompts ----------------------------------------------------------------------

    def _guide(self, constraint: OutputConstraint | None) -> Guide | None:
        """A grammar state for ``constraint`` (compiled once per schema); raises
        UnsupportedParameterError for a schema the grammar library cannot compile."""
        if constraint is None:
            return None
        if self._grammars is None:
            self._grammars = GrammarCompiler(
                self.tokenizer, vocab_size=self.vocab_size, eos_ids=self.eos_ids
            )
        return self._grammars.guide(constraint)

    def encode(self, batch: ExecuteBatch) -> list[int]:
        constraint = output_constraint(batch)
        tools = constraint.tools if constraint is not None and constraint.is_tool_call else ()
        text, special = render_prompt(self.tokenizer, batch, tools=tools)
        ids = self.tokenizer(text, add_special_tokens=special)["input_ids"]
        if not ids:
            if self.tokenizer.bos_token_id is None:
                raise BadRequestError("the prompt is empty", param="prompt")
            ids = [self.tokenizer.bos_token_id]
        return list(ids)

    def prompt_tokens(self, batch: ExecuteBatch) -> int:
        """Prefill cost of ``batch``: its prompt tokens less a cached shared prefix."""
        if batch.kind is RequestKind.EMBEDDING:
            raise BadRequestError(
                f"deployment {self.name!r} generates text; it does not embed", param="model"
            )
        ids = self.encode(batch)
        self._guide(output_constraint(batch))  # compile now: a bad schema fails before a slot
        cached = max(
            (len(p) for p in self._prefixes if len(p) < len(ids) and tuple(ids[: len(p)]) == p),
            default=0,
        )
        return len(ids) - cached

    def embed(self, inputs: Sequence[str], dimensions: int | None = None) -> list[list[float]]:
        raise BadRequestError(
            f"deployment {self.name!r} is a text generator; deploy an embedding model "
            '(task = "embed") for /v1/embeddings',
            param="model",
        )

    # -- the step ---------------------------------------------------------------------

    def step(
        self, joining: Sequence[tuple[str, ExecuteBatch]], leaving: Sequence[str]
    ) -> list[SequenceOutput]:
        torch = self._torch
        outputs: list[SequenceOutput] = []
        try:
            with torch.inference_mode():
                if leaving:
                    self._drop(set(leaving))
                rows, prompts = self._joiners(joining, outputs)
                if self._rows:
                    outputs += self._decode()
                if rows:
                    outputs += self._prefill(rows, prompts)
                done = {o.seq_id for o in outputs if o.finish_reason is not None or o.error}
                if done:
                    self._drop(done)
        except torch.OutOfMemoryError as exc:
            return self._out_of_memory(joining, outputs, exc)
        return outputs

    def _out_of_memory(
        self,
        joining: Sequence[tuple[str, ExecuteBatch]],
        outputs: list[SequenceOutput],
        exc: BaseException,
    ) -> list[SequenceOutput]:
        """The step ran out of device memory: every sequence of the step fails with a
        typed, retryable error (those that finished or failed earlier in it keep their
        outputs), the batch and the prefix cache are dropped and the allocator's cached
        memory is released, so the next step starts from an empty batch."""
        ended = [o for o in outputs if o.finish_reason is not None or o.error is not None]
        settled = {o.seq_id for o in ended}
        failing = [r.seq_id for r in self._rows if r.seq_id not in settled]
        failing += [s for s, _ in joining if s not in settled and s not in failing]
        tokens = sum(r.pos for r in self._rows)
        log.error(
            "torch deployment %r: out of memory on %s in a step of %d sequences (%d tokens): "
            "%s; failing them and releasing the cached memory",
            self.name,
            self.device,
            len(failing),
            tokens,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
        self._reset()
        self._prefixes.clear()
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
        dtype = str(next(self.model.parameters()).dtype).removeprefix("torch.")
        error = out_of_memory(
            name=self.name,
            device=self.device,
            work=f"a step of {len(failing)} sequence(s) (the batch held {tokens} tokens)",
            lower_dtype=f'the dtype (runtime_config.dtype = "bfloat16" or "float16"; now {dtype})',
        )
        return ended + [SequenceOutput(seq_id=s, error=error) for s in failing]

    def _new_row(self, seq_id: str, batch: ExecuteBatch, prompt_len: int) -> _Row:
        s = batch.sampling
        room = self.max_positions - prompt_len
        if room <= 0:
            raise ContextLengthExceededError(
                f"the prompt takes {prompt_len} tokens; deployment {self.name!r} fits "
                f"{self.max_positions}. Shorten the prompt.",
                tokens=prompt_len,
                max_tokens=self.max_positions,
            )
        sampling = resolve_sampling(s, self.config.sampling_defaults)
        constraint = output_constraint(batch)
        generator = None
        if not sampling.greedy:
            generator = self._torch.Generator(device="cpu")
            generator.manual_seed(s.seed if s.seed is not None else random.getrandbits(63))
        return _Row(
            seq_id=seq_id,
            prompt_len=prompt_len,
            max_new=min(s.max_tokens or self.config.default_max_tokens, room),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            generator=generator,
            scanner=StopScanner(s.stop),
            pos=prompt_len,
            ignore_eos=bool(batch.extra.get("ignore_eos", False)),
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            guide=self._guide(constraint),
            constraint=constraint,
            top_logprobs=(s.top_logprobs or 0) if s.logprobs else None,
        )

    def _forward(
        self,
        ids: Any,
        mask: Any,
        positions: Any,
        keys: list[Any],
        values: list[Any],
        *,
        every_position: bool = False,
    ):
        cache = make_cache(list(zip(keys, values, strict=True)))
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_argument: cache},
        )
        layers = returned_layers(out)
        logits = out.logits if every_position else out.logits[:, -1, :]
        return logits, [la.keys for la in layers], [la.values for la in layers]

    def _decode(self) -> list[SequenceOutput]:
        if self.config.speculative == "prompt_lookup":
            drafts = [
                lookup_draft(r.prompt + r.generated, self._draft_room(r)) if r.plain_greedy else []
                for r in self._rows
            ]
            if any(drafts):
                return self._decode_drafts(drafts)
        torch = self._torch
        rows = self._rows
        ids = torch.tensor([[r.generated[-1]] for r in rows], device=self.device)
        positions = torch.tensor([[r.pos] for r in rows], device=self.device)
        mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        logits, self._keys, self._values = self._forward(
            ids, mask, positions, self._keys, self._values
        )
        self._mask = mask
        for r in rows:
            r.pos += 1
        return self._advance(rows, logits)

    def _joiners(
        self, joining: Sequence[tuple[str, ExecuteBatch]], outputs: list[SequenceOutput]
    ) -> tuple[list[_Row], list[list[int]]]:
        """Rows and prompts of the joiners; one that cannot join fails alone (its error
        goes to ``outputs``)."""
        rows: list[_Row] = []
        prompts: list[list[int]] = []
        for seq_id, batch in joining:
            try:
                ids = self.encode(batch)
                rows.append(self._new_row(seq_id, batch, len(ids)))
            except (BadRequestError, ContextLengthExceededError) as exc:
                outputs.append(SequenceOutput(seq_id=seq_id, error=exc))
                continue
            prompts.append(ids)
            rows[-1].prompt = list(ids)
        return rows, prompts

    def _prefill(self, rows: list[_Row], prompts: list[list[int]]) -> list[SequenceOutput]:
        torch = self._torch
        prefix = self._shared_prefix(prompts)
        if self.config.prefix_cache:
            self._recent.extend(tuple(p) for p in prompts)
        if prefix:
            ids, mask, positions, past_keys, past_values = self._after_prefix(prefix, prompts)
        else:
            width = max(len(p) for p in prompts)
            ids = torch.tensor(
                [[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.device
            )
            mask = torch.tensor(
                [[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device
            )
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            past_keys, past_values = [], []
        logits, keys, values = self._forward(ids, mask, positions, past_keys, past_values)
        self._merge(rows, keys, values, mask)
        return self._advance(rows, logits)

    def _draft_room(self, row: _Row) -> int:
        """Draft tokens ``row`` may take: within the output and the context window."""
        left = row.max_new - len(row.generated) - 1
        return max(0, min(self.config.speculative_tokens, left, self.max_positions - row.pos - 1))

    def _decode_drafts(self, drafts: list[list[int]]) -> list[SequenceOutput]:
        """One forward pass that verifies every row's draft: each row feeds its last
        token and its draft (right-padded to the longest), keeps the draft tokens that
        greedy decoding would have chosen plus the model's next token, and masks the
        cache columns of the rest, so the text is exactly plain greedy decoding's."""
        torch = self._torch
        rows = self._rows
        width = 1 + max(len(d) for d in drafts)
        feed = [
            [r.generated[-1], *d] + [self.pad_id] * (width - 1 - len(d))
            for r, d in zip(rows, drafts, strict=True)
        ]
        fresh = [[1] * (1 + len(d)) + [0] * (width - 1 - len(d)) for d in drafts]
        ids = torch.tensor(feed, device=self.device)
        positions = torch.tensor(
            [[r.pos + j for j in range(width)] for r in rows], device=self.device
        )
        mask = torch.cat(
            [self._mask, torch.tensor(fresh, device=self.device, dtype=self._mask.dtype)], dim=1
        )
        logits, self._keys, self._values = self._forward(
            ids, mask, positions, self._keys, self._values, every_position=True
        )
        chosen = logits.argmax(dim=-1).tolist()
        outputs: list[SequenceOutput] = []
        kept = [row[:] for row in fresh]
        # sampled, constrained or logprob rows: their one new token, the usual way
        others = [i for i, r in enumerate(rows) if not r.plain_greedy]
        if others:
            for i in others:
                rows[i].pos += 1
            index = torch.tensor(others, device=self.device)
            outputs += self._advance([rows[i] for i in others], logits[index, 0, :])
        for i, (row, draft) in enumerate(zip(rows, drafts, strict=True)):
            if not row.plain_greedy:
                continue
            accepted = 0
            while accepted < len(draft) and draft[accepted] == chosen[i][accepted]:
                accepted += 1
            for j in range(1 + accepted, width):
                kept[i][j] = 0  # rejected draft tokens: never attended again
            tokens = [*draft[:accepted], chosen[i][accepted]]
            row.pos += 1 + accepted
            self.drafted += len(draft)
            self.accepted += accepted
            outputs.append(self._advance_tokens(row, tokens))
        self._mask = torch.cat(
            [self._mask, torch.tensor(kept, device=self.device, dtype=self._mask.dtype)], dim=1
        )
        return outputs

    def _advance_tokens(self, row: _Row, tokens: list[int]) -> SequenceOutput:
        """``row`` advanced by several greedy tokens at once, as one output."""
        text = ""
        out = None
        for token in tokens:
            row.generated.append(token)
            out = advance_sequence(
                seq_id=row.seq_id,
                generated=row.generated,
                eos_ids=self.eos_ids,
                ignore_eos=row.ignore_eos,
                max_new=row.max_new,
                prompt_len=row.prompt_len,
                scanner=row.scanner,
                decode=self._detokenize,
            )
            text += out.text_delta
            if out.finish_reason is not None:
                break
        assert out is not None
        return attrs.evolve(out, text_delta=text, new_tokens=len(tokens))

    # -- prefix cache ---------------------------------------------------------------

    def _shared_prefix(self, prompts: list[list[int]]) -> tuple[int, ...]:
        """A prompt prefix every joiner starts with (a system prompt, a chat template's
        preamble) whose keys and values are cached or worth caching; empty for none.
        Worth caching: at least ``MIN_PREFIX_TOKENS`` shared by all joiners, or, for a
        lone joiner, shared with one of the last ``RECENT_PROMPTS`` prompts (requests
        that arrive one by one, as cache-aware routing sends them to one replica).

        The prefix always leaves at least one token of each prompt to prefill, so the
        next-token logits come from this step's forward pass.
        """
        if not self.config.prefix_cache:
            return ()
        limit = min(len(p) for p in prompts) - 1
        for cached in sorted(self._prefixes, key=len, reverse=True):
            n = len(cached)
            if n <= limit and all(tuple(p[:n]) == cached for p in prompts):
                self._prefixes.move_to_end(cached)
                return cached
        first = prompts[0]
        if len(prompts) < 2:
            # a lone joiner: the longest prefix it shares with a recent prompt (the
            # request before it carried the same system prompt, in an earlier step)
            common = max((_common_length(first, seen, limit) for seen in self._recent), default=0)
            return tuple(first[:common]) if common >= MIN_PREFIX_TOKENS else ()
        common = 0
        while common < limit and all(p[common] == first[common] for p in prompts):
            common += 1
        return tuple(first[:common]) if common >= MIN_PREFIX_TOKENS else ()

    def _prefix_cache(self, prefix: tuple[int, ...]) -> tuple[list[Any], list[Any]]:
        hit = self._prefixes.get(prefix)
        if hit is not None:
            return hit
        torch = self._torch
        ids = torch.tensor([list(prefix)], device=self.device)
        mask = torch.ones_like(ids)
        positions = torch.arange(len(prefix), device=self.device)[None, :]
        _, keys, values = self._forward(ids, mask, positions, [], [])
        self._prefixes[prefix] = (keys, values)
        while len(self._prefixes) > PREFIX_CACHE_ENTRIES:
            self._prefixes.popitem(last=False)
        return keys, values

    def _after_prefix(self, prefix: tuple[int, ...], prompts: list[list[int]]) -> tuple[Any, ...]:
        """Inputs that prefill only what follows a cached prefix: the prefix's keys and
        values repeated per row, then each remainder (padding sits between the two)."""
        torch = self._torch
        n = len(prefix)
        keys, values = self._prefix_cache(prefix)
        rows = len(prompts)
        rests = [p[n:] for p in prompts]
        width = max(len(r) for r in rests)
        ids = torch.tensor(
            [[self.pad_id] * (width - len(r)) + r for r in rests], device=self.device
        )
        mask = torch.tensor(
            [[1] * n + [0] * (width - len(r)) + [1] * len(r) for r in rests], device=self.device
        )
        positions = torch.tensor(
            [[n] * (width - len(r)) + list(range(n, n + len(r))) for r in rests],
            device=self.device,
        )
        past_keys = [k.expand(rows, -1, -1, -1).contiguous() for k in keys]
        past_values = [v.expand(rows, -1, -1, -1).contiguous() for v in values]
        return ids, mask, positions, past_keys, past_values

    def _merge(self, rows: list[_Row], keys: list[Any], values: list[Any], mask: Any) -> None:
        """Append prefilled rows to the shared cache, left-padding the shorter side."""
        torch = self._torch
        if not self._rows:
            self._rows, self._keys, self._values, self._mask = list(rows), keys, values, mask
            return
        old_t, new_t = self._mask.shape[1], mask.shape[1]
        width = max(old_t, new_t)

        def pad(t: Any, current: int) -> Any:
            if current == width:
                return t
            return torch.nn.functional.pad(t, (0, 0, width - current, 0))

        self._keys = [
            torch.cat([pad(a, old_t), pad(b, new_t)]) for a, b in zip(self._keys, keys, strict=True)
        ]
        self._values = [
            torch.cat([pad(a, old_t), pad(b, new_t)])
            for a, b in zip(self._values, values, strict=True)
        ]
        self._mask = torch.cat(
            [
                torch.nn.functional.pad(self._mask, (width - old_t, 0)),
                torch.nn.functional.pad(mask, (width - new_t, 0)),
            ]
        )
        self._rows += rows

    def _drop(self, seq_ids: set[str]) -> None:
        """Cut sequences out of the shared cache and trim all-padding columns."""
        keep = [i for i, r in enumerate(self._rows) if r.seq_id not in seq_ids]
        if len(keep) == len(self._rows):
            return
        if not keep:
            self._reset()
            return
        torch = self._torch
        index = torch.tensor(keep, device=self.device)
        self._rows = [self._rows[i] for i in keep]
        mask = self._mask.index_select(0, index)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0
        self._mask = mask[:, start:]
        self._keys = [k.index_select(0, index)[:, :, start:] for k in self._keys]
        self._values = [v.index_select(0, index)[:, :, start:] for v in self._values]

    # -- sampling and text ----------------------------------------------------------

    def _shape(self, rows: list[_Row], logits: Any) -> Any:
        """Logits after each row's penalties and grammar mask (rows without either are
        left as they are, so free sequences decode exactly as alone)."""
        torch = self._torch
        logits = logits.float()
        for i, row in enumerate(rows):
            if (row.presence_penalty or row.frequency_penalty) and row.generated:
                counts = torch.bincount(
                    torch.tensor(row.generated, device=logits.device), minlength=logits.shape[-1]
                )[: logits.shape[-1]].float()
                logits[i] -= row.frequency_penalty * counts + row.presence_penalty * (counts > 0)
        guides = [r.guide for r in rows]
        if self._grammars is not None and any(g is not None for g in guides):
            allowed = torch.from_numpy(self._grammars.masks(guides)).to(logits.device)
            width = logits.shape[-1]
            logits = logits.masked_fill(~allowed[:, :width], float("-inf"))
        return logits

    def _logprobs(self, row: _Row, logprobs: Any, token: int) -> dict[str, Any]:
        """OpenAI's ``logprobs.content`` entry for ``token`` (from the shaped logits)."""
        torch = self._torch

        def entry(tok: int, value: float) -> dict[str, Any]:
            text = self.tokenizer.decode([tok])
            return {"token": text, "logprob": value, "bytes": list(text.encode())}

        out = entry(token, float(logprobs[token]))
        top: list[dict[str, Any]] = []
        if row.top_logprobs:
            values, ids = torch.topk(logprobs, row.top_logprobs)
            top = [entry(int(t), float(v)) for v, t in zip(values, ids, strict=True)]
        out["top_logprobs"] = top
        return out

    def _sample(self, rows: list[_Row], logits: Any) -> list[int]:
        torch = self._torch
        greedy = logits.argmax(dim=-1).tolist()
        tokens: list[int] = []
        for i, row in enumerate(rows):
            if row.temperature <= 0:
                tokens.append(int(greedy[i]))
                continue
            scores = logits[i].cpu() / row.temperature
            if 0 < row.top_k < scores.shape[-1]:
                kth = torch.topk(scores, row.top_k).values[-1]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            if row.top_p < 1.0:
                ordered, order = torch.sort(scores, descending=True)
                cumulative = torch.softmax(ordered, dim=-1).cumsum(dim=-1)
                cut = cumulative - torch.softmax(ordered, dim=-1) >= row.top_p
                cut[0] = False  # the most likely token always stays
                scores = scores.index_put((order[cut],), torch.tensor(float("-inf")))
            probs = torch.softmax(scores, dim=-1)
            tokens.append(int(torch.multinomial(probs, 1, generator=row.generator)))
        return tokens

    def _advance(self, rows: list[_Row], logits: Any) -> list[SequenceOutput]:
        logits = self._shape(rows, logits)
        tokens = self._sample(rows, logits)
        logprobs = None
        if any(r.top_logprobs is not None for r in rows):
            logprobs = self._torch.log_softmax(logits, dim=-1).cpu()
        outputs = []
        for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            row.generated.append(token)
            if row.guide is not None:
                row.guide.consume(token)
            out = advance_sequence(
                seq_id=row.seq_id,
                generated=row.generated,
                eos_ids=self.eos_ids,
                ignore_eos=row.ignore_eos,
                max_new=row.max_new,
                prompt_len=row.prompt_len,
                scanner=row.scanner,
                decode=self._detokenize,
            )
            if logprobs is not None and row.top_logprobs is not None:
                entry = self._logprobs(row, logprobs[i], token)
                out = attrs.evolve(out, logprobs={"content": [entry]})
            text = row.scanner.text[: row.scanner.sent]
            outputs.append(
                hold_tool_call(out, row.constraint, text, "call_" + row.seq_id.replace("#", "_"))
            )
        return outputs

    def _detokenize(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)
