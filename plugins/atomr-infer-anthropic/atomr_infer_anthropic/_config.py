"""``[deployment.runtime_config]`` of the anthropic runtime."""

from __future__ import annotations

import attrs

from atomr_infer_core import Secret
from atomr_infer_remote import CredentialProvider, EnvCredential, FileCredential, StaticCredential

from ._wire import DEFAULT_MAX_TOKENS

__all__ = ["AnthropicConfig"]


@attrs.frozen(kw_only=True)
class AnthropicConfig:
    """How to reach Anthropic's Messages API (``POST {base_url}/messages``).

    The credential comes from ``api_key``, else ``api_key_file`` (re-read when the session
    is rebuilt, e.g. after a 401), else the environment variable ``api_key_env``
    (``ANTHROPIC_API_KEY``). It is sent as ``x-api-key`` with ``anthropic-version``.
    ``endpoint`` is the original's name for ``base_url`` and wins when set.
    """

    base_url: str = "https://api.anthropic.com/v1"
    endpoint: str | None = None
    api_key: Secret | None = None
    api_key_file: str | None = None
    api_key_env: str = "ANTHROPIC_API_KEY"
    anthropic_version: str = "2023-06-01"
    #: ``anthropic-beta`` feature flags, sent comma-separated when any
    anthropic_beta: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    #: ``max_tokens`` sent when a request sets none (the Messages API requires it)
    default_max_tokens: int = attrs.field(
        default=DEFAULT_MAX_TOKENS, validator=attrs.validators.ge(1)
    )
    extra_headers: dict[str, str] = attrs.field(factory=dict, hash=False)
    max_connections: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    http2: bool = True

    def messages_url(self) -> str:
        base = (self.endpoint or self.base_url).rstrip("/")
        return f"{base}/messages"

    def credentials(self) -> CredentialProvider:
        """The credential provider these settings describe."""
        if self.api_key is not None:
            return StaticCredential(self.api_key)
        if self.api_key_file is not None:
            return FileCredential(self.api_key_file)
        return EnvCredential(self.api_key_env)
