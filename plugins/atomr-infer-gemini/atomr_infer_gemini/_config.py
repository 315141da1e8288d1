"""``[deployment.runtime_config]`` of the gemini runtime (AI Studio or Vertex AI)."""

from __future__ import annotations

import attrs
import trio

from atomr_infer_core import Seconds, Secret
from atomr_infer_core.errors import UnauthorizedError
from atomr_infer_remote import CredentialProvider, FileCredential, RemoteConfig, StaticCredential

from ._wire import AI_STUDIO_ENDPOINT, ai_studio_url, vertex_url

__all__ = ["CommandCredential", "GeminiConfig", "SafetySetting"]

_VARIANTS = ("ai_studio", "vertex")


def _variant(_inst: object, attr: attrs.Attribute[str], value: str) -> None:
    if value not in _VARIANTS:
        raise ValueError(f"{attr.name}: must be one of {', '.join(_VARIANTS)} (got {value!r})")


@attrs.frozen(kw_only=True)
class SafetySetting:
    """One ``safetySettings`` entry, e.g. ``HARM_CATEGORY_HARASSMENT`` / ``BLOCK_ONLY_HIGH``."""

    category: str
    threshold: str


@attrs.frozen
class CommandCredential:
    """A bearer token printed by a command (``gcloud auth print-access-token``), run at
    session open and at every rebuild, so an expired token is replaced."""

    argv: tuple[str, ...]

    async def credential(self) -> Secret | None:
        try:
            done = await trio.run_process(
                list(self.argv), capture_stdout=True, capture_stderr=True, check=False
            )
        except OSError as exc:
            raise UnauthorizedError(
                f"cannot run {self.argv[0]!r} to get a Vertex AI access token ({exc.strerror}); "
                "install the Google Cloud CLI, or set access_token / access_token_file"
            ) from exc
        token = done.stdout.decode().strip()
        if done.returncode != 0 or not token:
            detail = done.stderr.decode(errors="replace").strip()[:200]
            raise UnauthorizedError(
                f"{' '.join(self.argv)} failed (exit {done.returncode}: {detail}); "
                "run `gcloud auth login` or set access_token_file"
            )
        return Secret(token)


@attrs.frozen(kw_only=True)
class GeminiConfig(RemoteConfig):
    """How to reach Gemini (the shared keys: :class:`RemoteConfig`).

    ``variant = "ai_studio"`` (default): ``{endpoint}models/{model}:generateContent`` with
    the API key in ``x-goog-api-key`` (from ``api_key``, ``api_key_file``, else
    ``$GEMINI_API_KEY`` or ``$GOOGLE_API_KEY``). ``variant = "vertex"``: Vertex AI in
    ``project`` / ``location`` with ``Authorization: Bearer`` (from ``access_token``,
    ``access_token_file`` re-read on every rebuild, else ``access_token_command``); tokens
    that are not static are refreshed every ``token_refresh_interval`` and after a 401.
    ``endpoint`` replaces the Vertex host too (private endpoints, tests).
    """

    variant: str = attrs.field(default="ai_studio", validator=_variant)
    endpoint: str | None = None
    project: str | None = None
    location: str = "us-central1"
    #: the original's name for ``location``; wins when set
    region: str | None = None
    access_token: Secret | None = None
    access_token_file: str | None = None
    access_token_command: tuple[str, ...] = attrs.field(
        default=("gcloud", "auth", "print-access-token"), converter=tuple
    )
    token_refresh_interval: Seconds = attrs.field(default=2700.0, validator=attrs.validators.gt(0))
    safety: tuple[SafetySetting, ...] = attrs.field(default=(), converter=tuple)

    def __attrs_post_init__(self) -> None:
        if self.variant == "vertex" and not self.project:
            raise ValueError("project: required when variant = 'vertex'")

    @property
    def is_vertex(self) -> bool:
        return self.variant == "vertex"

    def url(self, model: str, *, stream: bool) -> str:
        if self.is_vertex:
            assert self.project is not None
            location = self.region or self.location
            return vertex_url(self.project, location, model, stream=stream, endpoint=self.endpoint)
        return ai_studio_url(self.endpoint or AI_STUDIO_ENDPOINT, model, stream=stream)

    def credentials(self) -> CredentialProvider:
        """The credential provider these settings describe."""
        if self.is_vertex:
            if self.access_token is not None:
                return StaticCredential(self.access_token)
            if self.access_token_file is not None:
                return FileCredential(self.access_token_file)
            return CommandCredential(self.access_token_command)
        return super().credentials()

    def default_env(self) -> tuple[str, ...]:
        return ("GEMINI_API_KEY", "GOOGLE_API_KEY")

    @property
    def refreshes_tokens(self) -> bool:
        """Whether the runner refreshes the bearer token on a timer (Vertex, not static)."""
        return self.is_vertex and self.access_token is None
