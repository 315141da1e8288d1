"""Loading configuration: TOML → ``Config`` through one strict cattrs converter.

Every problem is collected and raised as one :class:`ConfigError` whose lines name their
key path: ``deployment[1].serving.max_concurrent: must be >= 1 (got 0)``.

- Durations take ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"`` or integer milliseconds.
- ``${VAR}`` and ``${VAR:-default}`` are replaced from the environment in every string;
  a missing variable without a default is an error naming it.
- No silent coercion: ``port = "80"`` or ``replicas = 1.5`` are errors.
- Unknown keys are errors, with the closest valid key suggested.
- The original's forms load too: ``runtime = "open_ai"``, ``[cluster] bind``,
  ``[deployment.runtime_config] runtime = "open_ai"``.
"""

from __future__ import annotations

import difflib
import enum
import math
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

from ._deployment import Config, Deployment, Quantile, Seconds, StateBackendKind, _hedge_after
from ._kinds import RuntimeKind
from ._schema import config_schema
from ._secret import Secret
from ._validators import FieldValueError
from .errors import ConfigError

__all__ = [
    "ConfigError",
    "check_config",
    "config_schema",
    "converter",
    "load_config",
    "parse_duration",
    "structure",
    "structure_deployment",
    "unstructure",
]

T = TypeVar("T")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*(ms|s|m|h)\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def parse_duration(value: object) -> float:
    """Seconds from ``"250ms"``, ``"30s"``, ``"5m"``, ``"1h"`` or integer milliseconds."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration, got a boolean ({value})")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a duration cannot be negative (got {value})")
        return value / 1000.0
    if isinstance(value, float):
        raise ValueError(
            f"a bare number is ambiguous ({value}); use integer milliseconds or e.g. '1.5s'"
        )
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            seconds = float(match.group(1)) * _UNITS[match.group(2)]
            if math.isfinite(seconds):
                return seconds
        raise ValueError(
            f"invalid duration {value!r}; use integer milliseconds or e.g. '30s', '250ms', '5m'"
        )
    raise ValueError(f"expected a duration, got {type(value).__name__}")


def _format_duration(seconds: float) -> Any:
    ms = seconds * 1000.0
    if ms == int(ms) and abs(ms) < 2**53:
        return int(ms)
    return f"{seconds!r}s"


class _StrictTypeError(ValueError):
    pass


def _type_name(value: object) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "float",
        str: "string",
        list: "array",
        dict: "table",
    }.get(type(value), type(value).__name__)


def _strict_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise _StrictTypeError(f"expected a string, got {_type_name(value)} {value!r}")
    return value


def _strict_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _StrictTypeError(f"expected an integer, got {_type_name(value)} {value!r}")
    return value


def _strict_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _StrictTypeError(f"expected a number, got {_type_name(value)} {value!r}")
    return float(value)


def _strict_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise _StrictTypeError(f"expected true or false, got {_type_name(value)} {value!r}")
    return value


def _structure_enum(value: object, cls: type[enum.Enum]) -> enum.Enum:
    allowed = [m.value for m in cls]
    for member in cls:
        if (
            isinstance(value, str)
            and isinstance(member.value, str)
            and member.value == value.lower()
        ):
            return member
        if type(value) is type(member.value) and member.value == value:
            return member
    raise _StrictTypeError(f"must be one of {', '.join(repr(a) for a in allowed)} (got {value!r})")


def _enum_aware(hook: Any) -> Any:
    def structure(value: object, cls: type) -> Any:
        if isinstance(cls, type) and issubclass(cls, enum.Enum):
            return _structure_enum(value, cls)
        return hook(value, cls)

    return structure


def _structure_secret(value: object, _: type) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        raise _StrictTypeError(f"expected a string, got {_type_name(value)}")
    return Secret(value)


def _structure_runtime(value: object, _: type) -> RuntimeKind:
    if isinstance(value, Mapping) and len(value) == 1:
        # the original's table forms: { custom = "mock" }, { python = "xtts" }
        ((key, inner),) = value.items()
        if key in ("custom", "python") and isinstance(inner, str):
            return RuntimeKind(inner)
    if not isinstance(value, str):
        raise _StrictTypeError(f"expected a runtime name, got {_type_name(value)}")
    return RuntimeKind(value)


def _structure_duration(value: object, _: type) -> float:
    return parse_duration(value)


def _is_homogeneous_tuple(tp: Any) -> bool:
    args = typing.get_args(tp)
    return typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis


def _tuple_factory(tp: Any, conv: cattrs.Converter) -> Any:
    (elem, _) = typing.get_args(tp)
    inner = conv.get_structure_hook(elem)

    def structure_tuple(value: object, _tp: Any) -> tuple[Any, ...]:
        if not isinstance(value, list | tuple):
            raise _StrictTypeError(f"expected an array, got {_type_name(value)} {value!r}")
        errors: list[Exception] = []
        out = []
        for i, item in enumerate(value):
            try:
                out.append(inner(item, elem))
            except Exception as exc:  # collected with its index, re-raised as a group
                exc.__notes__ = [
                    *getattr(exc, "__notes__", []),
                    IterableValidationNote(f"Structuring index {i}", i, elem),
                ]
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {tp!r}", errors, tp)
        return tuple(out)

    return structure_tuple


def _make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, prefer_attrib_converters=False)
    # singledispatch on `str`/`int` also catches str and int enums: route those to the enum hook
    for tp, hook in (
        (str, _strict_str),
        (int, _strict_int),
        (float, _strict_float),
        (bool, _strict_bool),
    ):
        conv.register_structure_hook(tp, _enum_aware(hook))
    conv.register_structure_hook(enum.Enum, _structure_enum)
    conv.register_structure_hook(Secret, _structure_secret)
    conv.register_unstructure_hook(Secret, lambda s: "**********")
    conv.register_structure_hook(RuntimeKind, _structure_runtime)
    conv.register_unstructure_hook(RuntimeKind, str)
    conv.register_structure_hook(Seconds, _structure_duration)
    conv.register_unstructure_hook(Seconds, _format_duration)
    hedge_after = Seconds | Quantile | None
    conv.register_structure_hook_func(lambda t: t == hedge_after, lambda v, _t: _hedge_after(v))
    conv.register_unstructure_hook_func(
        lambda t: t == hedge_after,
        lambda v: v if v is None or isinstance(v, str) else _format_duration(v),
    )
    conv.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, enum.Enum), lambda e: e.value
    )
    conv.register_unstructure_hook(str, lambda s: s.value if isinstance(s, enum.Enum) else str(s))
    conv.register_structure_hook_factory(_is_homogeneous_tuple, lambda t: _tuple_factory(t, conv))
    conv.register_structure_hook(Any, lambda v, _: v)
    conv.register_structure_hook(
        Config,
        make_dict_structure_fn(
            Config,
            conv,
            _cattrs_forbid_extra_keys=True,
            deployments=override(rename="deployment"),
            keys=override(rename="key"),
            pipelines=override(rename="pipeline"),
        ),
    )
    from cattrs.gen import make_dict_unstructure_fn

    conv.register_unstructure_hook(
        Config,
        make_dict_unstructure_fn(
            Config,
            conv,
            deployments=override(rename="deployment"),
            keys=override(rename="key"),
            pipelines=override(rename="pipeline"),
        ),
    )
    return conv


#: the one converter; plugins structure their ``runtime_config`` classes with it too
converter = _make_converter()


# ---------------------------------------------------------------- error collection


def _note_path(exc: BaseException) -> str:
    for note in getattr(exc, "__notes__", ()):
        name = getattr(note, "name", None)
        if name is not None:
            return f".{_toml_name(name)}"
        index = getattr(note, "index", None)
        if index is not None:
            return f"[{index}]"
    return ""


_TOML_NAMES = {"deployments": "deployment", "keys": "key", "pipelines": "pipeline"}


def _toml_name(attr_name: str) -> str:
    return _TOML_NAMES.get(attr_name, attr_name)


def _field_names(cls: Any) -> list[str]:
    if attrs.has(cls):
        return [_toml_name(a.name) for a in attrs.fields(cls) if a.init]
    return []


def _collect(exc: BaseException, path: str, out: list[tuple[str, str]]) -> None:
    if isinstance(exc, ClassValidationError | IterableValidationError):
        for sub in exc.exceptions:
            _collect(sub, path + _note_path(sub), out)
        return
    if isinstance(exc, ForbiddenExtraKeysError):
        valid = _field_names(exc.cl)
        for key in sorted(exc.extra_fields):
            hint = difflib.get_close_matches(key, valid, n=1)
            suffix = f"; did you mean {hint[0]!r}?" if hint else f"; valid keys: {', '.join(valid)}"
            out.append((_join(path, key), f"unknown key{suffix}"))
        return
    if isinstance(exc, FieldValueError):
        out.append((_join(path, exc.field), exc.detail))
        return
    if isinstance(exc, KeyError):
        out.append((path, "required key missing"))
        return
    if isinstance(exc, ValueError | TypeError):
        out.append((path, str(exc)))
        return
    raise exc


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _strip(path: str) -> str:
    return path[1:] if path.startswith(".") else path


def _prefix(path: str, sub: str) -> str:
    """Join a base path and a collected sub-path (``.key`` or ``[i]``) with one separator."""
    if not sub:
        return path
    if not path or sub.startswith("["):
        return _strip(path + sub)
    return f"{path}.{_strip(sub)}"


def structure(data: Any, cls: type[T], *, path: str = "") -> T:
    """Structure ``data`` into ``cls`` strictly; raise ConfigError naming every problem."""
    try:
        return converter.structure(data, cls)
    except ConfigError:
        raise
    except (ClassValidationError, IterableValidationError, ValueError, TypeError, KeyError) as exc:
        problems: list[tuple[str, str]] = []
        _collect(exc, "", problems)
        raise ConfigError([(_prefix(path, p), m) for p, m in problems]) from None


def unstructure(value: Any) -> Any:
    """The plain-data (TOML-shaped) form of a config value. Secrets are redacted."""
    return converter.unstructure(value)


# ---------------------------------------------------------------- raw-table passes


def _interpolate(value: Any, path: str, env: Mapping[str, str], out: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            out.append((path, f"environment variable {name} is not set (use ${{{name}:-default}})"))
            return ""

        return _VAR.sub(replace, value)
    if isinstance(value, Mapping):
        return {k: _interpolate(v, _join(path, k), env, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, f"{path}[{i}]", env, out) for i, v in enumerate(value)]
    return value


def _normalise_deployment(raw: Any, path: str, out: list[tuple[str, str]]) -> Any:
    """Accept the original's tagged ``runtime_config.runtime`` form."""
    if not isinstance(raw, Mapping):
        return raw
    raw = dict(raw)
    rc = raw.get("runtime_config")
    if isinstance(rc, Mapping) and "runtime" in rc:
        rc = dict(rc)
        tagged = rc.pop("runtime")
        raw["runtime_config"] = rc
        if "runtime" not in raw:
            raw["runtime"] = tagged
        else:
            try:
                same = RuntimeKind(raw["runtime"]) == RuntimeKind(tagged)
            except (TypeError, ValueError):
                same = True  # the type error is reported on `runtime` itself
            if not same:
                out.append(
                    (
                        f"{path}.runtime_config.runtime",
                        f"{tagged!r} disagrees with runtime = {raw['runtime']!r}",
                    )
                )
    return raw


def _prepare(
    raw: Mapping[str, Any], env: Mapping[str, str]
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    problems: list[tuple[str, str]] = []
    data: dict[str, Any] = _interpolate(dict(raw), "", env, problems)
    deployments = data.get("deployment")
    if isinstance(deployments, list):
        data["deployment"] = [
            _normalise_deployment(d, f"deployment[{i}]", problems)
            for i, d in enumerate(deployments)
        ]
    elif isinstance(deployments, Mapping):
        problems.append(("deployment", "use [[deployment]] (an array of tables), not [deployment]"))
    if isinstance(data.get("key"), Mapping):
        problems.append(("key", "use [[key]] (an array of tables), not [key]"))
    return data, problems


def _semantic_problems(config: Config) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    names = {d.name for d in config.deployments}
    for i, dep in enumerate(config.deployments):
        base = f"deployment[{i}]"
        problems += [(f"{base}.{p}", m) for p, m in dep.problems()]
        problems += _duplicate(seen, dep.name, i, "deployment")
        for j, fb in enumerate(dep.fallbacks):
            if fb not in names:
                problems.append((f"{base}.fallbacks[{j}]", f"no deployment named {fb!r}"))
    problems += _key_problems(config)
    problems += _pipeline_problems(config)
    bind = config.cluster.bind
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        problems.append(
            ("cluster.bind", f"expected host:port, e.g. '127.0.0.1:8080' (got {bind!r})")
        )
    if config.state.backend.value == "redis" and config.state.url is None:
        problems.append(
            ("state.url", "required when backend = 'redis' (e.g. 'redis://127.0.0.1:6379/0')")
        )
    return problems


def _duplicate(seen: dict[str, int], name: str, i: int, table: str) -> list[tuple[str, str]]:
    """The problem of ``table[i]`` reusing ``name`` (recorded in ``seen``), if it does."""
    first = seen.setdefault(name, i)
    if first == i:
        return []
    return [(f"{table}[{i}].name", f"duplicate {table} name {name!r} (also {table}[{first}])")]


def _routable_names(config: Config) -> set[str]:
    """What a tenant's ``models`` may name: deployments, and pipelines where configured."""
    names = {d.name for d in config.deployments}
    names |= {p.name for p in getattr(config, "pipelines", ())}
    return names


def _key_problems(config: Config) -> list[tuple[str, str]]:
    """``[[key]]``: valid names, known models, no duplicate names or key strings.

    A duplicate key string is reported by position only: the key itself is never printed.
    """
    problems: list[tuple[str, str]] = []
    names = _routable_names(config)
    seen_names: dict[str, int] = {}
    seen_keys: list[tuple[Secret, str]] = [
        (k, f"cluster.api_keys[{i}]") for i, k in enumerate(config.cluster.api_keys)
    ]
    for i, tenant in enumerate(config.keys):
        base = f"key[{i}]"
        problems += [(f"{base}.{p}", m) for p, m in tenant.problems()]
        problems += _duplicate(seen_names, tenant.name, i, "key")
        if tenant.key:
            # Secret equality compares in constant time; the message names positions only
            other = next((where for k, where in seen_keys if k == tenant.key), None)
            if other is not None:
                problems.append(
                    (f"{base}.key", f"the same key string as {other}; every key must be unique")
                )
            seen_keys.append((tenant.key, base))
        for j, model in enumerate(tenant.models):
            if model not in names:
                known = ", ".join(sorted(names)) or "none"
                problems.append(
                    (
                        f"{base}.models[{j}]",
                        f"no deployment or pipeline named {model!r} (known: {known})",
                    )
                )
    return problems


def _pipeline_problems(config: Config) -> list[tuple[str, str]]:
    """Each pipeline's own problems, and the names it refers to (see ``_pipeline.py``)."""
    problems: list[tuple[str, str]] = []
    deployments = {d.name for d in config.deployments}
    kinds = {p.name: p.kind for p in config.pipelines}
    seen: dict[str, int] = {}
    for i, pipe in enumerate(config.pipelines):
        base = f"pipeline[{i}]"
        problems += [(f"{base}.{p}", m) for p, m in pipe.problems()]
        if pipe.name in deployments:
            problems.append(
                (f"{base}.name", f"{pipe.name!r} is a deployment's name too; rename one of them")
            )
        problems += _duplicate(seen, pipe.name, i, "pipeline")
        cascade = pipe.kind.value == "cascade"
        key = "steps" if cascade else "members"
        for j, name in enumerate(pipe.steps if cascade else pipe.members):
            message = _reference_problem(name, deployments, kinds, cascade=cascade)
            if message is not None:
                problems.append((f"{base}.{key}[{j}]", message))
    return problems


def _reference_problem(
    name: str, deployments: set[str], kinds: Mapping[str, Any], *, cascade: bool
) -> str | None:
    if name in deployments:
        return None
    kind = kinds.get(name)
    if kind is None:
        return f"no deployment named {name!r}"
    if cascade and kind.value == "balance":
        return None  # a cascade step may be a balance (a balance names deployments only)
    if cascade:
        return f"{name!r} is a cascade; a cascade step names a deployment or a balance pipeline"
    return f"{name!r} is a pipeline; a balance member names a deployment"


def load_config(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Load a project file (a path, or an already-parsed mapping) into a :class:`Config`.

    Raises:
        ConfigError: listing every problem, each with its key path.
    """
    config, problems = check_config(source, env=env)
    if problems or config is None:
        raise ConfigError(problems)
    return config


def check_config(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    env: Mapping[str, str] | None = None,
) -> tuple[Config | None, list[tuple[str, str]]]:
    """Like :func:`load_config`, but return ``(config, problems)`` instead of raising.

    ``config`` is the structured value whenever the file's shape allows one (also when
    there are semantic problems, such as an unset ``${VAR}``), so a caller can check
    more on it and report every problem in one go; ``None`` when it does not.
    """
    env = os.environ if env is None else env
    if isinstance(source, Mapping):
        data: Mapping[str, Any] = source
    else:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            return None, [("", f"cannot read {path}: {exc.strerror}")]
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            return None, [("", f"{path} is not valid TOML: {exc}")]
    prepared, problems = _prepare(data, env)
    try:
        config = structure(prepared, Config)
    except ConfigError as exc:
        return None, [*problems, *exc.problems]
    problems += _semantic_problems(config)
    ledger = config.state.spend_ledger
    if isinstance(source, Mapping):
        pass
    elif ledger is None and config.state.backend is StateBackendKind.MEMORY:
        ledger = str(default_spend_ledger(config.cluster.name, env))
    elif ledger and not Path(ledger).is_absolute():
        # relative to the project file, not to wherever the gateway was started
        ledger = str(Path(source).resolve().parent / ledger)
    if ledger != config.state.spend_ledger:
        config = attrs.evolve(config, state=attrs.evolve(config.state, spend_ledger=ledger))
    return config, problems


def default_spend_ledger(cluster: str, env: Mapping[str, str] | None = None) -> Path:
    """Where a project file's spend is kept when ``state.spend_ledger`` is not set:
    ``$XDG_STATE_HOME/atomr-infer/<cluster>/spend.sqlite`` (``~/.local/state`` when the
    variable is unset or empty), the cluster name made safe for a file name."""
    env = os.environ if env is None else env
    home = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", cluster).strip(".") or "atomr"
    return Path(home) / "atomr-infer" / safe / "spend.sqlite"


def structure_deployment(
    data: Mapping[str, Any], *, env: Mapping[str, str] | None = None
) -> Deployment:
    """Structure one ``[[deployment]]`` table (for ``Cluster.deploy`` and tests)."""
    problems: list[tuple[str, str]] = []
    data = _interpolate(dict(data), "deployment", os.environ if env is None else env, problems)
    data = _normalise_deployment(data, "deployment", problems)
    try:
        dep = structure(data, Deployment, path="deployment")
    except ConfigError as exc:
        raise ConfigError([*problems, *exc.problems]) from None
    problems += [(f"deployment.{p}", m) for p, m in dep.problems()]
    if problems:
        raise ConfigError(problems)
    return dep
