"""``[deployment.runtime_config]`` of the openai runtime (direct OpenAI or Azure OpenAI)."""

from __future__ import annotations

import enum

import attrs

from atomr_infer_remote import RemoteConfig

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
class OpenAIConfig(RemoteConfig):
    """How to reach an OpenAI-compatible API (the shared keys: :class:`RemoteConfig`).

    The key's variable is ``OPENAI_API_KEY`` (``AZURE_OPENAI_API_KEY`` with
    ``azure_endpoint``). Setting ``azure_endpoint`` switches to Azure OpenAI: requests go
    to ``{azure_endpoint}/openai/deployments/{azure_deployment}/…?api-version={api_version}``
    with an ``api-key`` header (``azure_auth = "bearer"`` sends an Entra ID token as
    ``Authorization: Bearer`` instead; code can pass any ``CredentialProvider`` as the
    ``"credentials"`` service for rotating tokens).
    """

    base_url: str = "https://api.openai.com/v1"
    #: False: no credential is fine (a local proxy without auth)
    api_key_required: bool = True
    organization: str | None = None
    project: str | None = None
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

    @property
    def is_azure(self) -> bool:
        return self.azure_endpoint is not None

    def default_env(self) -> tuple[str, ...]:
        return ("AZURE_OPENAI_API_KEY",) if self.is_azure else ("OPENAI_API_KEY",)

    def key_required(self) -> bool:
        return self.api_key_required
