"""The litellm runtime: a LiteLLM proxy spoken to with the openai plugin's code."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from atomr_infer_core import (
    Deployment,
    RetryPolicy,
    RunnerContext,
    RuntimePlugin,
    Secret,
    TransportKind,
    hookimpl,
)
from atomr_infer_openai import OPENAI_PRICES, OpenAIConfig, OpenAIRunner

__all__ = ["MODEL_PATTERNS", "LiteLLMConfig", "LiteLLMRunner", "create_runner", "register_runtimes"]

MODEL_PATTERNS = ("litellm/*", "*via-litellm*")

#: LiteLLM retries on its own; client retries on top would multiply (the original's choice)
DEFAULT_MAX_RETRIES = 1


@attrs.frozen(kw_only=True)
class LiteLLMConfig:
    """Where the LiteLLM proxy listens and how to authenticate to it.

    The key (a LiteLLM virtual or master key) comes from ``api_key``, else
    ``api_key_file``, else the ``LITELLM_API_KEY`` environment variable; a proxy without
    auth needs none.
    """

    base_url: str = "http://127.0.0.1:4000/v1"
    api_key: Secret | None = None
    api_key_file: str | None = None
    api_key_env: str = "LITELLM_API_KEY"
    extra_headers: dict[str, str] = attrs.field(factory=dict, hash=False)
    max_connections: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    http2: bool = True

    def to_openai(self) -> OpenAIConfig:
        """The same endpoint as an :class:`OpenAIConfig` (LiteLLM speaks OpenAI's wire)."""
        return OpenAIConfig(
            base_url=self.base_url,
            api_key=self.api_key,
            api_key_file=self.api_key_file,
            api_key_env=self.api_key_env,
            api_key_required=False,
            extra_headers=dict(self.extra_headers),
            send_top_k=True,
            max_connections=self.max_connections,
            http2=self.http2,
        )


def with_default_retries(deployment: Deployment) -> Deployment:
    """``max_retries = 1`` when ``[deployment.retry]`` is left at its defaults."""
    if deployment.retry != RetryPolicy():
        return deployment
    return attrs.evolve(deployment, retry=RetryPolicy(max_retries=DEFAULT_MAX_RETRIES))


class LiteLLMRunner(OpenAIRunner):
    """An :class:`OpenAIRunner` reporting runtime ``litellm``, stripping ``litellm/``."""

    def __init__(
        self, deployment: Deployment, config: LiteLLMConfig, context: RunnerContext | None = None
    ) -> None:
        super().__init__(
            with_default_retries(deployment),
            config.to_openai(),
            context,
            runtime="litellm",
            strip_prefixes=("litellm/",),
        )


def create_runner(
    deployment: Deployment, config: LiteLLMConfig, context: RunnerContext
) -> LiteLLMRunner:
    return LiteLLMRunner(deployment, config, context)


@hookimpl
def register_runtimes(register: Callable[[RuntimePlugin], None]) -> None:
    register(
        RuntimePlugin(
            name="litellm",
            config_class=LiteLLMConfig,
            create=create_runner,
            transport=TransportKind.REMOTE_NETWORK,
            model_patterns=MODEL_PATTERNS,
            prices=OPENAI_PRICES,
            package="atomr-infer-litellm",
            description="a LiteLLM proxy (OpenAI wire)",
        )
    )
