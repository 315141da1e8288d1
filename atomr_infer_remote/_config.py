"""``RemoteConfig``: the ``[deployment.runtime_config]`` keys every network provider shares.

A provider plugin's config class subclasses it and adds only its own keys (its URL,
versions, wire options); it may redefine a shared key to change its default. The keys
here are the credential (``api_key``, else ``api_key_file`` re-read on every rebuild, else
the environment: ``api_key_env``, else the provider's ``default_env()``),
``extra_headers``, the connection pool and the fast upstream client switch.
"""

from __future__ import annotations

import attrs

from atomr_infer_core import Secret, Timeouts

from ._http import HttpClientOptions
from ._session import CredentialProvider, EnvCredential, FileCredential, StaticCredential

__all__ = ["RemoteConfig"]


@attrs.frozen(kw_only=True)
class RemoteConfig:
    """The shared keys of a remote runtime's config (subclass it; see the module)."""

    api_key: Secret | None = None
    api_key_file: str | None = None
    #: the environment variable holding the key (default: the provider's own)
    api_key_env: str | None = None
    extra_headers: dict[str, str] = attrs.field(factory=dict, hash=False)
    max_connections: int = attrs.field(default=100, validator=attrs.validators.ge(1))
    http2: bool = True
    #: the fast upstream client (httpcore's pool driven directly); false: plain httpx
    fast_client: bool = True

    def env_variables(self) -> tuple[str, ...]:
        """The variables the key is read from when neither ``api_key`` nor a file is set."""
        return (self.api_key_env,) if self.api_key_env else self.default_env()

    def default_env(self) -> tuple[str, ...]:
        """The provider's own key variables, first set wins (``("OPENAI_API_KEY",)``)."""
        return ()

    def key_required(self) -> bool:
        """Whether a missing key is an error (False: send none, e.g. a local proxy)."""
        return True

    def credentials(self) -> CredentialProvider:
        """The credential provider these settings describe."""
        if self.api_key is not None:
            return StaticCredential(self.api_key)
        if self.api_key_file is not None:
            return FileCredential(self.api_key_file)
        variables = self.env_variables()
        if not variables:  # a provider with no key variable of its own: send none
            return StaticCredential(None)
        return EnvCredential(variables[0], fallbacks=variables[1:], required=self.key_required())

    def http_options(self, timeouts: Timeouts) -> HttpClientOptions:
        """How the runner's HTTP client is built from these settings."""
        return HttpClientOptions(
            timeouts=timeouts,
            max_connections=self.max_connections,
            http2=self.http2,
            fast_client=self.fast_client,
        )
