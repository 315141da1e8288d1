"""``[deployment.runtime_config]`` of the openai runtime (direct OpenAI or Azure OpenAI)."""

from __future__ import annotations

import enum

import attrs

from atomr_infer_core import Secret
from atomr_infer_remote import (
    CredentialProvider,
    EnvCredential,
    FileCredential,
    StaticCredential,
)

__all__ = ["AzureAuth", "MaxTokensField", "OpenAIConfig"]


class AzureAuth(str, enum.Enum):
    """How Azure OpenAI requests carry the credential."""

    API_KEY = "api-key"
    BEARER = "bearer"


class MaxTokensField(str, enum.Enum):
    """Which body field carries ``max_tokens``."""

    AUTO = "auto"
    MAX_TOKENS = "max_tokens"
    MAX_COMPLETION_TOKENS = "max_completion_tokens"


@attrs.frozen(kw_only=True)
class OpenAIConfig:
    """How to reach an OpenAI-compatible API.

    The credential comes from ``api_key``, else ``api_key_file`` (re-read when the session
    is rebuilt, e.g. after a 401), else the environment variable ``api_key_env``
    (``OPENAI_API_KEY``; ``AZURE_OPENAI_API_KEY`` with ``azure_endpoint``). Setting
    ``azure_endpoint`` switches to Azure OpenAI: requests go to
    ``{azure_endpoint}/openai/deployments/{azure_deployment}/…?api-version={api_version}``
    with an ``api-key`` header (``azure_auth = "bearer"`` sends an Entra ID token as
    ``Authorization: Bearer`` instead; code can pass any ``CredentialProvider`` as the
    ``"credentials"`` service for rotating tokens).
    """

    base_url: str = "https://api.openai.com/v1"
    api_key: Secret | None = None
    api_key_file: str | None = None
    api_key_env: str | None = None
    #: False: no credential is fine (a local proxy without auth)
    api_key_required: bool = True
    organization: str | None = None
    project: str | None = None
    extra_headers: dict[str, str] = attrs.field(factory=dict, hash=False)
    azure_endpoint: str | None = None
    api_version: str = "2024-10-21"
    #: the Azure deployment name; the deployment's ``model`` when unset
    azure_deployment: str | None = None
    azure_auth: AzureAuth = AzureAuth.API_KEY
    #: which body field carries ``max_tokens``; ``auto``: ``max_completion_tokens`` for
    #: reasoning models (o-series, gpt-5), ``max_tokens`` otherwise
    max_tokens_field: MaxTokensField = MaxTokensField.AUTO
    #: send ``top_k`` (OpenAI rejects it; vLLM and LiteLLM accept it)
    send_top_k: bool = False
    max_connections: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    http2: bool = True

    @property
    def is_azure(self) -> bool:
        return self.azure_endpoint is not None

    def env_variable(self) -> str:
        if self.api_key_env:
            return self.api_key_env
        return "AZURE_OPENAI_API_KEY" if self.is_azure else "OPENAI_API_KEY"

    def credentials(self) -> CredentialProvider:
        """The credential provider these settings describe."""
        if self.api_key is not None:
            return StaticCredential(self.api_key)
        if self.api_key_file is not None:
            return FileCredential(self.api_key_file)
        env = EnvCredential(self.env_variable())
        return env if self.api_key_required else _OptionalEnv(env)


@attrs.frozen
class _OptionalEnv:
    env: EnvCredential

    async def credential(self) -> Secret | None:
        import os

        if not os.environ.get(self.env.variable, "").strip():
            return None
        return await self.env.credential()
