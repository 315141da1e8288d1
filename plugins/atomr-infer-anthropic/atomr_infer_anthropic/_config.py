"""``[deployment.runtime_config]`` of the anthropic runtime."""

from __future__ import annotations

import attrs

from atomr_infer_remote import RemoteConfig

from ._wire import DEFAULT_MAX_TOKENS

__all__ = ["AnthropicConfig"]


@attrs.frozen(kw_only=True)
class AnthropicConfig(RemoteConfig):
    """How to reach Anthropic's Messages API (``POST {base_url}/messages``).

    The shared keys are :class:`RemoteConfig`'s; the key's variable is
    ``ANTHROPIC_API_KEY``, sent as ``x-api-key`` with ``anthropic-version``.
    ``endpoint`` is the original's name for ``base_url`` and wins when set.
    """

    base_url: str = "https://api.anthropic.com/v1"
    endpoint: str | None = None
    anthropic_version: str = "2023-06-01"
    #: ``anthropic-beta`` feature flags, sent comma-separated when any
    anthropic_beta: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: ``max_tokens`` sent when a request sets none (the Messages API requires it)
    default_max_tokens: int = attrs.field(
        default=DEFAULT_MAX_TOKENS, validator=attrs.validators.ge(1)
    )

    def default_env(self) -> tuple[str, ...]:
        return ("ANTHROPIC_API_KEY",)

    def messages_url(self) -> str:
        base = (self.endpoint or self.base_url).rstrip("/")
        return f"{base}/messages"
