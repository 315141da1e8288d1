"""ONNX Runtime step models: a sentence encoder and a causal LM.

Causal LM graphs written by ``export-onnx`` carry their KV cache as inputs and outputs
(``past_keys``/``past_values`` → ``present_keys``/``present_values``): the active
sequences share one left-padded cache, decode one token per run for all of them, and
joiners are prefilled together and merged in, as in the torch runtime. Graphs without
cache inputs (``export-onnx`` with ``kv_cache=False``) are recomputed over the whole
sequence each step. Graphs with ``past_key_values.*`` inputs (Hugging Face Optimum
exports) are refused with a clear error for now. Every method runs on one worker thread
at a time (the StepModel contract).
"""

from __future__ import annotations

import json
import logging
import random
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
from atomr_infer_core.errors import (
    BadRequestError,
    ConfigError,
    ContextLengthExceededError,
)

from ._config import OnnxConfig, OnnxTask
from ._session import is_out_of_memory, open_session, shrink_options

__all__ = ["OnnxCausalLM", "OnnxEncoder", "locate_model", "model_task"]

log = logging.getLogger("atomr_infer.onnx")

#: how an onnx deployment takes less memory (the end of an out-of-memory error's advice)
_LOWER_PRECISION = (
    "the precision (export-onnx writes float32 graphs; the torch runtime serves the same "
    'weights with runtime_config.dtype = "bfloat16")'
)


def locate_model(path: str) -> tuple[Path, Path]:
    """``(model.onnx, tokenizer folder)`` for a folder or a ``.onnx`` file."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "model.onnx"
    if not p.is_file():
        raise ConfigError(
            [
                (
                    "runtime_config.path",
                    f"{path!r}: no ONNX model there; give a folder written by "
                    "`python -m atomr_infer export-onnx MODEL OUT` or a .onnx file",
                )
            ]
        )
    return p, p.parent


def model_task(onnx_file: Path, configured: OnnxTask) -> OnnxTask:
    """The task from the config, else from atomr_onnx.json, else from the graph."""
    if configured is not OnnxTask.AUTO:
        return configured
    manifest = onnx_file.parent / "atomr_onnx.json"
    if manifest.is_file():
        return OnnxTask(json.loads(manifest.read_text())["task"])
    import onnx

    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    names = {o.name for o in graph.output}
    return OnnxTask.GENERATE if "logits" in names else OnnxTask.EMBED


class _OnnxBase:
    runtime_kind = RuntimeKind(RuntimeKind.ONNX)

    def __init__(self, config: OnnxConfig, *, path: str, name: str = "onnx") -> None:
        self.config = config
        self.path = path
        self.name = name
        self.max_batch_size = config.max_batch_size
        self.transport_kind = TransportKind.LOCAL_CPU
        self.session: Any = None
        self.tokenizer: Any = None
        #: the execution providers ONNX Runtime actually uses (health reads this)
        self.execution_providers: tuple[str, ...] = ()
        #: set when a requested GPU provider is not in use
        self.provider_fallback: str | None = None
        #: the next run gives the arenas' free memory back (set after running out of it)
        self._shrink_next = False

    def load(self) -> None:
        from transformers import AutoTokenizer

        onnx_file, folder = locate_model(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.session, self.execution_providers, self.provider_fallback = open_session(
            onnx_file,
            self.config.providers,
            name=self.name,
            intra_op_threads=self.config.intra_op_threads,
        )
        gpu = any(p != "CPUExecutionProvider" for p in self.execution_providers)
        self.transport_kind = TransportKind.LOCAL_GPU if gpu else TransportKind.LOCAL_CPU
        self.input_names = {i.name for i in self.session.get_inputs()}
        if any(n.startswith("past_key_values") for n in self.input_names):
            raise ConfigError(
                [
                    (
                        "runtime_config.path",
                        f"{self.path!r} has KV-cache inputs (an Optimum export); this runtime "
                        "serves graphs without them for now: export with "
                        "`python -m atomr_infer export-onnx`",
                    )
                ]
            )
        self._loaded()

    def _loaded(self) -> None:
        pass

    def health(self) -> dict[str, Any]:
        """What health endpoints show for this model."""
        return {
            "execution_providers": list(self.execution_providers),
            "provider_fallback": self.provider_fallback,
        }

    def rebuild(self, cause: SessionRebuildCause) -> None:
        log.warning("onnx deployment %r: rebuilding the session (%s)", self.name, cause)
        self.session = None
        self.load()

    def _run(self, names: list[str], feed: dict[str, Any]) -> Any:
        """``session.run``; the first run after an out-of-memory error shrinks the arenas."""
        if not self._shrink_next:
            return self.session.run(names, feed)
        self._shrink_next = False
        return self.session.run(names, feed, shrink_options(self.execution_providers))

    def _feed(self, ids: Any, mask: Any) -> dict[str, Any]:
        import numpy as np

        feed = {"input_ids": ids.astype(np.int64), "attention_mask": mask.astype(np.int64)}
        if "token_type_ids" in self.input_names:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        if "position_ids" in self.input_names:
            feed["position_ids"] = np.clip(mask.cumsum(-1) - 1, 0, None).astype(np.int64)
        return feed


class OnnxEncoder(_OnnxBase):
    """Sentence embeddings: mean-pooled over the attention mask, L2-normalised."""

    capabilities = frozenset({RequestKind.EMBEDDING})

    def _loaded(self) -> None:
        self.output_name = self.session.get_outputs()[0].name
        self.max_length = int(min(self.tokenizer.model_max_length, 512))

    def prompt_tokens(self, batch: ExecuteBatch) -> int:
        texts = list(batch.inputs or [batch.prompt_text()])
        enc = self.tokenizer(texts, truncation=True, max_length=self.max_length)
        return sum(len(ids) for ids in enc["input_ids"])

    def step(
        self, joining: Sequence[tuple[str, ExecuteBatch]], leaving: Sequence[str]
    ) -> list[SequenceOutput]:
        error = BadRequestError(
            f"deployment {self.name!r} is an embedding model; use /v1/embeddings", param="model"
        )
        return [SequenceOutput(seq_id=seq_id, error=error) for seq_id, _ in joining]

    def embed(self, inputs: Sequence[str], dimensions: int | None = None) -> list[list[float]]:
        try:
            return self._embed(inputs, dimensions)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            # the engine fails this call's requests with it and keeps serving
            device = "cuda:0" if "CUDAExecutionProvider" in self.execution_providers else "cpu"
            log.error(
                "onnx deployment %r: out of memory on %s embedding %d texts: %s",
                self.name,
                device,
                len(inputs),
                str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            )
            self._shrink_next = True
            raise out_of_memory(
                name=self.name,
                device=device,
                work=f"embedding {len(inputs)} texts",
                lower_dtype=_LOWER_PRECISION,
            ) from None

    def _embed(self, inputs: Sequence[str], dimensions: int | None) -> list[list[float]]:
        import numpy as np

        vectors: list[list[float]] = []
        for start in range(0, len(inputs), self.max_batch_size):
            texts = list(inputs[start : start + self.max_batch_size])
            enc = self.tokenizer(
                texts,
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="np",
            )
            mask = enc["attention_mask"]
            (hidden,) = self._run([self.output_name], self._feed(enc["input_ids"], mask))
            weights = mask[..., None].astype(hidden.dtype)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
            if dimensions is not None:
                if not 1 <= dimensions <= pooled.shape[1]:
                    raise BadRequestError(
                        f"deployment {self.name!r} embeds in {pooled.shape[1]} dimensions; "
                        f"dimensions must be between 1 and {pooled.shape[1]} (got {dimensions})",
                        param="dimensions",
                    )
                pooled = pooled[:, :dimensions]
            norms = np.linalg.norm(pooled, axis=-1, keepdims=True)
            vectors += (pooled / np.clip(norms, 1e-12, None)).astype(np.float64).tolist()
        return vectors


@attrs.define(eq=False)
class _Row:
    seq_id: str
    tokens: list[int]
    prompt_len: int
    max_new: int
    temperature: float
    top_p: float
    top_k: int
    rng: Any
    scanner: StopScanner
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    #: the grammar state of a constrained sequence (response_format, a tool call)
    guide: Guide | None = None
    constraint: OutputConstraint | None = None
    #: ``None``: no logprobs; else how many alternatives each token reports
    top_logprobs: int | None = None

    @property
    def generated(self) -> list[int]:
        return self.tokens[self.prompt_len :]


class OnnxCausalLM(_OnnxBase):
    """A causal LM graph (logits for every position), recomputed each step for the batch."""

    capabilities = frozenset({RequestKind.CHAT, RequestKind.COMPLETION})

    def _loaded(self) -> None:
        folder = locate_model(self.path)[1]
        config: dict[str, Any] = {}
        if (folder / "config.json").is_file():
            config = json.loads((folder / "config.json").read_text())
        gen: dict[str, Any] = {}
        if (folder / "generation_config.json").is_file():
            gen = json.loads((folder / "generation_config.json").read_text())
        eos = gen.get("eos_token_id", config.get("eos_token_id"))
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            eos_ids.add(self.tokenizer.eos_token_id)
        self.eos_ids = frozenset(eos_ids)
        self.max_positions = int(
            config.get("max_position_embeddings") or config.get("n_positions") or 2048
        )
        self.pad_id = self.tokenizer.pad_token_id or 0
        logits = next(o for o in self.session.get_outputs() if o.name == "logits")
        width = logits.shape[-1]
        self.vocab_size = int(width if isinstance(width, int) else config.get("vocab_size"))
        self._grammars: GrammarCompiler | None = None
        self._rows: list[_Row] = []
        self.kv_cache = "past_keys" in self.input_names
        if self.kv_cache:
            shape = next(i.shape for i in self.session.get_inputs() if i.name == "past_keys")
            self._cache_dims = (int(shape[0]), int(shape[2]), int(shape[4]))
        self._reset_cache()

    def _reset_cache(self) -> None:
        self._keys: Any = None
        self._values: Any = None
        self._mask: Any = None

    def rebuild(self, cause: SessionRebuildCause) -> None:
        self._rows = []
        self._reset_cache()
        super().rebuild(cause)

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
        ids = list(self.tokenizer(text, add_special_tokens=special)["input_ids"])
        if not ids:
            if self.tokenizer.bos_token_id is None:
                raise BadRequestError("the prompt is empty", param="prompt")
            ids = [self.tokenizer.bos_token_id]
        return ids

    def prompt_tokens(self, batch: ExecuteBatch) -> int:
        ids = self.encode(batch)
        self._guide(output_constraint(batch))  # compile now: a bad schema fails before a slot
        return len(ids)

    def embed(self, inputs: Sequence[str], dimensions: int | None = None) -> list[list[float]]:
        raise BadRequestError(
            f"deployment {self.name!r} is a text generator; deploy an embedding model "
            "for /v1/embeddings",
            param="model",
        )

    def _new_row(self, seq_id: str, batch: ExecuteBatch) -> _Row:
        import numpy as np

        ids = self.encode(batch)
        room = self.max_positions - len(ids)
        if room <= 0:
            raise ContextLengthExceededError(
                f"the prompt takes {len(ids)} tokens; deployment {self.name!r} fits "
                f"{self.max_positions}. Shorten the prompt.",
                tokens=len(ids),
                max_tokens=self.max_positions,
            )
        s = batch.sampling
        sampling = resolve_sampling(s, self.config.sampling_defaults)
        seed = s.seed if s.seed is not None else random.getrandbits(63)
        constraint = output_constraint(batch)
        return _Row(
            seq_id=seq_id,
            tokens=ids,
            prompt_len=len(ids),
            max_new=min(s.max_tokens or self.config.default_max_tokens, room),
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            rng=np.random.default_rng(seed),
            scanner=StopScanner(s.stop),
            ignore_eos=bool(batch.extra.get("ignore_eos", False)),
            presence_penalty=sampling.presence_penalty,
            frequency_penalty=sampling.frequency_penalty,
            guide=self._guide(constraint),
            constraint=constraint,
            top_logprobs=(s.top_logprobs or 0) if s.logprobs else None,
        )

    def step(
        self, joining: Sequence[tuple[str, ExecuteBatch]], leaving: Sequence[str]
    ) -> list[SequenceOutput]:
        outputs: list[SequenceOutput] = []
        self._drop(set(leaving))
        new_rows: list[_Row] = []
        for seq_id, batch in joining:
            try:
                new_rows.append(self._new_row(seq_id, batch))
            except (BadRequestError, ContextLengthExceededError) as exc:
                outputs.append(SequenceOutput(seq_id=seq_id, error=exc))
        try:
            if self.kv_cache:
                if self._rows:
                    outputs += self._decode()
                if new_rows:
                    outputs += self._prefill(new_rows)
            else:
                self._rows += new_rows
                if self._rows:
                    outputs += self._recompute()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            return self._out_of_memory(new_rows, outputs, exc)
        self._drop({o.seq_id for o in outputs if o.finish_reason is not None})
        return outputs

    def _out_of_memory(
        self, new_rows: list[_Row], outputs: list[SequenceOutput], exc: BaseException
    ) -> list[SequenceOutput]:
        """A run ran out of memory: every sequence of the step fails with a typed,
        retryable error (those that finished or failed earlier in it keep their
        outputs), the batch is dropped and the next run shrinks the arenas."""
        ended = [o for o in outputs if o.finish_reason is not None or o.error is not None]
        settled = {o.seq_id for o in ended}
        rows = self._rows + [r for r in new_rows if r not in self._rows]
        failing = [r.seq_id for r in rows if r.seq_id not in settled]
        tokens = sum(len(r.tokens) for r in rows)
        device = "cuda:0" if "CUDAExecutionProvider" in self.execution_providers else "cpu"
        log.error(
            "onnx deployment %r: out of memory on %s in a step of %d sequences (%d tokens): "
            "%s; failing them and releasing the arenas' free memory",
            self.name,
            device,
            len(failing),
            tokens,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
        )
        self._rows = []
        self._reset_cache()
        self._shrink_next = True
        error = out_of_memory(
            name=self.name,
            device=device,
            work=f"a step of {len(failing)} sequence(s) (the batch held {tokens} tokens)",
            lower_dtype=_LOWER_PRECISION,
        )
        return ended + [SequenceOutput(seq_id=s, error=error) for s in failing]

    def _recompute(self) -> list[SequenceOutput]:
        import numpy as np

        width = max(len(r.tokens) for r in self._rows)
        ids = np.array([[self.pad_id] * (width - len(r.tokens)) + r.tokens for r in self._rows])
        mask = np.array([[0] * (width - len(r.tokens)) + [1] * len(r.tokens) for r in self._rows])
        (logits,) = self._run(["logits"], self._feed(ids, mask))
        return self._advance(self._rows, logits[:, -1, :])

    def _run_cached(self, ids: Any, mask: Any, positions: Any, keys: Any, values: Any) -> Any:
        import numpy as np

        feed = {
            "input_ids": ids.astype(np.int64),
            "attention_mask": mask.astype(np.int64),
            "position_ids": positions.astype(np.int64),
            "past_keys": keys,
            "past_values": values,
        }
        return self._run(["logits", "present_keys", "present_values"], feed)

    def _decode(self) -> list[SequenceOutput]:
        import numpy as np

        rows = self._rows
        ids = np.array([[r.tokens[-1]] for r in rows])
        positions = np.array([[len(r.tokens) - 1] for r in rows])
        mask = np.concatenate([self._mask, np.ones((len(rows), 1), dtype=np.int64)], axis=1)
        logits, self._keys, self._values = self._run_cached(
            ids, mask, positions, self._keys, self._values
        )
        self._mask = mask
        return self._advance(rows, logits)

    def _prefill(self, rows: list[_Row]) -> list[SequenceOutput]:
        import numpy as np

        layers, heads, head_dim = self._cache_dims
        width = max(len(r.tokens) for r in rows)
        ids = np.array([[self.pad_id] * (width - len(r.tokens)) + r.tokens for r in rows])
        mask = np.array([[0] * (width - len(r.tokens)) + [1] * len(r.tokens) for r in rows])
        positions = np.clip(mask.cumsum(-1) - 1, 0, None)
        empty = np.zeros((layers, len(rows), heads, 0, head_dim), dtype=np.float32)
        logits, keys, values = self._run_cached(ids, mask, positions, empty, empty)
        if not self._rows:
            self._keys, self._values, self._mask = keys, values, mask.astype(np.int64)
        else:
            old_t, new_t = self._mask.shape[1], mask.shape[1]
            total = max(old_t, new_t)

            def pad(a: Any, t: int) -> Any:
                widths = [(0, 0)] * a.ndim
                widths[3 if a.ndim == 5 else 1] = (total - t, 0)
                return np.pad(a, widths)

            self._keys = np.concatenate([pad(self._keys, old_t), pad(keys, new_t)], axis=1)
            self._values = np.concatenate([pad(self._values, old_t), pad(values, new_t)], axis=1)
            self._mask = np.concatenate([pad(self._mask, old_t), pad(mask, new_t)], axis=0)
        self._rows += rows
        return self._advance(rows, logits)

    def _drop(self, seq_ids: set[str]) -> None:
        import numpy as np

        if not seq_ids:
            return
        keep = [i for i, r in enumerate(self._rows) if r.seq_id not in seq_ids]
        if len(keep) == len(self._rows):
            return
        self._rows = [self._rows[i] for i in keep]
        if not self.kv_cache:
            return
        if not keep:
            self._reset_cache()
            return
        mask = self._mask[keep]
        used = np.flatnonzero(mask.any(axis=0))
        start = int(used[0]) if len(used) else 0
        self._mask = mask[:, start:]
        self._keys = self._keys[:, keep, :, start:]
        self._values = self._values[:, keep, :, start:]

    def _sample(self, row: _Row, logits: Any) -> int:
        import numpy as np

        if row.temperature <= 0:
            return int(np.argmax(logits))
        scores = logits.astype(np.float64) / row.temperature
        if 0 < row.top_k < scores.shape[-1]:
            kth = np.partition(scores, -row.top_k)[-row.top_k]
            scores = np.where(scores < kth, -np.inf, scores)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        if row.top_p < 1.0:
            order = np.argsort(-probs)
            before = np.cumsum(probs[order]) - probs[order]
            drop = order[before >= row.top_p]
            drop = drop[drop != order[0]]
            probs[drop] = 0.0
            probs /= probs.sum()
        return int(row.rng.choice(len(probs), p=probs))

    def _shape(self, rows: list[_Row], logits: Any) -> Any:
        """Logits after each row's penalties and grammar mask (rows without either are
        left as they are, so free sequences decode exactly as alone)."""
        import numpy as np

        guides = [r.guide for r in rows]
        penalized = any(r.presence_penalty or r.frequency_penalty for r in rows)
        if not penalized and all(g is None for g in guides):
            return logits
        logits = np.array(logits, dtype=np.float32)
        for i, row in enumerate(rows):
            if (row.presence_penalty or row.frequency_penalty) and row.generated:
                counts = np.bincount(row.generated, minlength=logits.shape[-1])[: logits.shape[-1]]
                logits[i] -= row.frequency_penalty * counts + row.presence_penalty * (counts > 0)
        if self._grammars is not None and any(g is not None for g in guides):
            allowed = self._grammars.masks(guides)[:, : logits.shape[-1]]
            logits = np.where(allowed, logits, -np.inf).astype(np.float32)
        return logits

    def _logprobs(self, row: _Row, logits: Any, token: int) -> dict[str, Any]:
        """OpenAI's ``logprobs.content`` entry for ``token`` (from the shaped logits)."""
        import numpy as np

        top = logits.max()
        logprobs = logits - top - np.log(np.exp(logits - top).sum())

        def entry(tok: int) -> dict[str, Any]:
            text = self.tokenizer.decode([tok])
            return {"token": text, "logprob": float(logprobs[tok]), "bytes": list(text.encode())}

        out = entry(token)
        order = np.argsort(-logprobs, kind="stable")[: row.top_logprobs or 0]
        out["top_logprobs"] = [entry(int(t)) for t in order]
        return out

    def _advance(self, rows: list[_Row], logits: Any) -> list[SequenceOutput]:
        logits = self._shape(rows, logits)
        outputs = []
        for i, row in enumerate(rows):
            token = self._sample(row, logits[i])
            row.tokens.append(token)
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
            if row.top_logprobs is not None:
                out = attrs.evolve(
                    out, logprobs={"content": [self._logprobs(row, logits[i], token)]}
                )
            text = row.scanner.text[: row.scanner.sent]
            outputs.append(
                hold_tool_call(out, row.constraint, text, "call_" + row.seq_id.replace("#", "_"))
            )
        return outputs

    def _detokenize(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)
