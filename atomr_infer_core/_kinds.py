"""Runtime, transport and provider kinds, and ``infer_runtime`` with its pattern registry."""

from __future__ import annotations

import enum
import fnmatch
import threading

__all__ = [
    "ProviderKind",
    "RuntimeKind",
    "TransportKind",
    "infer_runtime",
    "register_model_patterns",
    "unregister_model_patterns",
]


class RuntimeKind(str):
    """The name of a runtime (``"openai"``, ``"torch"``, ``"mock"``, …).

    Runtimes are open-ended (each plugin brings one), so this is a normalised string
    rather than an enum. The original's spellings are accepted: ``RuntimeKind("open_ai")
    == "openai"``, ``"lite_llm"`` → ``"litellm"``, ``"ort"`` → ``"onnx"``.
    """

    __slots__ = ()

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    LITELLM = "litellm"
    TORCH = "torch"
    ONNX = "onnx"
    MOCK = "mock"
    VLLM = "vllm"
    MISTRALRS = "mistralrs"

    _ALIASES = {
        "open_ai": "openai",
        "lite_llm": "litellm",
        "ort": "onnx",
        "onnxruntime": "onnx",
        "pytorch": "torch",
        "tensor_rt": "tensorrt",
        "mistral_rs": "mistralrs",
    }

    def __new__(cls, name: str) -> RuntimeKind:
        if not isinstance(name, str):
            raise TypeError(f"a runtime name is a string, got {type(name).__name__}")
        norm = name.strip().lower().replace("-", "_")
        if not norm:
            raise ValueError("a runtime name cannot be empty")
        norm = cls._ALIASES.get(norm, norm)
        return super().__new__(cls, norm)

    def __repr__(self) -> str:
        return f"RuntimeKind({str.__repr__(self)})"

    @property
    def is_remote(self) -> bool:
        """True for the built-in network providers (a plugin's own flag wins at run time)."""
        return self in _REMOTE

    @property
    def package(self) -> str:
        """The distribution that provides this runtime: ``atomr-infer-<name>``."""
        return f"atomr-infer-{self}"


_REMOTE = frozenset({"openai", "anthropic", "gemini", "litellm"})


class TransportKind(enum.Enum):
    """Where a runner's work happens."""

    LOCAL_CPU = "local_cpu"
    LOCAL_GPU = "local_gpu"
    REMOTE_NETWORK = "remote_network"

    @property
    def is_remote(self) -> bool:
        return self is TransportKind.REMOTE_NETWORK


class ProviderKind(str, enum.Enum):
    """The upstream API family a remote runner speaks to."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    LITELLM = "litellm"
    CUSTOM = "custom"

    def __str__(self) -> str:
        return self.value


_lock = threading.Lock()
_plugin_patterns: dict[str, tuple[str, ...]] = {}
_WILDCARDS = str.maketrans("", "", "*?[]")


def register_model_patterns(runtime: str, patterns: tuple[str, ...] | list[str]) -> None:
    """Claim model names for ``runtime`` (glob patterns, case-insensitive).

    The one table ``infer_runtime`` reads: the plugin registry feeds it each runtime's
    ``RuntimePlugin.model_patterns`` (declared once, by the plugin) and takes them back
    when it closes. The most specific matching pattern wins (the most characters that
    are not wildcards: ``gpt-4o-local*`` over ``gpt-*``), then the earliest registered;
    registering again replaces.
    """
    kind = RuntimeKind(runtime)
    with _lock:
        _plugin_patterns.pop(kind, None)
        _plugin_patterns[kind] = tuple(p.lower() for p in patterns)


def unregister_model_patterns(runtime: str) -> None:
    """Forget the patterns a plugin registered (the plugin was unloaded)."""
    with _lock:
        _plugin_patterns.pop(RuntimeKind(runtime), None)


def infer_runtime(model: str) -> RuntimeKind | None:
    """The runtime a model name implies, or ``None`` when no loaded plugin claims it.

    With the provider plugins loaded: ``gpt-4o-mini`` → openai, ``claude-3-5-sonnet`` →
    anthropic, ``gemini-2.0-flash`` → gemini, ``litellm/x`` → litellm. Unlike the
    original, an unknown name does not fall through to vLLM: the deployment must then
    name its runtime.
    """
    name = model.strip().lower()
    with _lock:
        rules = [(p, rt) for rt, pats in _plugin_patterns.items() for p in pats]
    rules.sort(key=lambda rule: -len(rule[0].translate(_WILDCARDS)))
    for pattern, runtime in rules:
        if fnmatch.fnmatchcase(name, pattern):
            return RuntimeKind(runtime)
    return None
