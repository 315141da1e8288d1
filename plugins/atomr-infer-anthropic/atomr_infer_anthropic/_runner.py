"""The anthropic runtime's ``ModelRunner``: the remote engine with the Messages API provider.

The engine does queueing, rate limits, the breaker, retries, 401 rebuilds, deadlines and
cancellation; :mod:`._wire` says how a batch becomes a ``/v1/messages`` request and how
answers become chunks.
"""

from __future__ import annotations

from atomr_infer_core import RequestKind, RuntimeKind
from atomr_infer_remote import EngineRunner

from ._config import AnthropicConfig
from ._wire import AnthropicProvider

__all__ = ["AnthropicRunner"]


class AnthropicRunner(EngineRunner):
    """A ``ModelRunner`` for one replica of an anthropic deployment (see EngineRunner)."""

    runtime_kind = RuntimeKind(RuntimeKind.ANTHROPIC)
    capabilities = frozenset({RequestKind.CHAT, RequestKind.COMPLETION})
    model_prefixes = ("anthropic/",)
    #: a trailing assistant message is continued (Messages API prefill)
    prefill = True

    def make_provider(self, config: AnthropicConfig, model: str) -> AnthropicProvider:
        return AnthropicProvider(config, model)
