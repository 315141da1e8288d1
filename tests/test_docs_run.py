"""Docs that run: every shell and Python block of README.md, docs/ and examples/ is executed.

A page runs like a reader at a terminal: its blocks in order, in one scratch directory (with
``examples/`` of the repository in it), exports carrying from one shell block to the next.
What an HTML comment on the line before a block says decides how it runs:

- ``<!-- not run: REASON -->``: skipped; the reason is required (needs real API keys, a
  long benchmark, a fragment of a larger program…).
- ``<!-- run in the background until: TEXT -->``: started and left running until its
  output shows TEXT (a server printing its banner); stopped with SIGINT after the page,
  and it must then exit 0.
- nothing: run to completion; it must exit 0.

A ``text`` block right after a block that ran is its expected output: each line must match
a line of the real output, in order (``…`` stands for anything). Ports the docs show
(8080-8083, 9100-9102) are replaced by free ones, so pages run next to anything else.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted(
    [
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        ROOT / "examples" / "README.md",
        *(ROOT / "examples").glob("*/README.md"),
    ]
)
RUNNABLE = {"sh", "bash", "shell", "python"}
DOC_PORTS = ("8080", "8081", "8082", "8083", "9100", "9101", "9102")
_FENCE = re.compile(r"^```(\S*)\s*$")
_MARKER = re.compile(r"^<!--\s*(not run|run in the background until):\s*(.*?)\s*-->$")
#: variables a reader's shell would not have, or that change what the commands load
_CLEARED = (
    "ATOMR_INFER_LOAD_PLUGINS",
    "ATOMR_API_KEY",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "GEMINI_API_KEY",
    "GEMINI_ENDPOINT",
    "GOOGLE_API_KEY",
)
TIMEOUT = 180.0


@attrs.frozen
class Block:
    page: Path
    line: int
    lang: str
    text: str
    #: "run", "not run" or "background"
    mode: str = "run"
    #: the reason (not run) or the text to wait for (background)
    argument: str = ""
    expected: str | None = None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` with their markers and expected outputs."""
    lines = page.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, lang = i, match.group(1)
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        i += 1
        mode, argument = _marker(lines, start)
        block = Block(page, start + 1, lang, "\n".join(body) + "\n", mode, argument)
        if lang == "text" and found and found[-1].lang in RUNNABLE and _adjacent(lines, start):
            found[-1] = attrs.evolve(found[-1], expected=block.text)
        found.append(block)
    return found


def _marker(lines: list[str], fence: int) -> tuple[str, str]:
    j = fence - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    match = _MARKER.match(lines[j].strip()) if j >= 0 else None
    if match is None:
        return "run", ""
    kind, argument = match.groups()
    return ("not run" if kind == "not run" else "background"), argument


def _adjacent(lines: list[str], fence: int) -> bool:
    """The ``text`` block at ``fence`` follows the previous block with only blank lines."""
    j = fence - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    return j >= 0 and lines[j].rstrip() == "```"


def _pattern(line: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part.strip()) for part in line.split("…")))


def matches_expected(
    expected: str, output: str, localize: Callable[[str], str] = lambda text: text
) -> str | None:
    """``None`` when every expected line matches an output line in order; else the first miss.

    A line matches as written or with its ports localized (a file's own ``bind`` is not).
    """
    actual = iter(line.rstrip().rstrip("\r").strip() for line in output.splitlines())
    for want in (w.strip() for w in expected.splitlines()):
        if not want:
            continue
        patterns = {_pattern(want), _pattern(localize(want))}
        if not any(any(p.fullmatch(line) for p in patterns) for line in actual):
            return want
    return None


def _free_port() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


class _Background:
    """A block left running: its output collected by a thread, waited on by text."""

    def __init__(self, command: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.output = ""
        self._lock = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.output += line
                self._lock.notify_all()
        with self._lock:
            self._lock.notify_all()

    def wait_for(self, text: str) -> bool:
        with self._lock:
            return self._lock.wait_for(
                lambda: text in self.output or self.proc.poll() is not None, timeout=TIMEOUT
            ) and (text in self.output)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return -9


class PageSession:
    """One reader's terminal for one page."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        (workdir / "examples").symlink_to(ROOT / "examples")
        self.state = workdir / ".exports.sh"
        self.state.write_text("")
        self.ports = {port: _free_port() for port in DOC_PORTS}
        self.env = {k: v for k, v in os.environ.items() if k not in _CLEARED}
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env['PATH']}"
        self.env["PYTHONUNBUFFERED"] = "1"
        self.background: list[tuple[Block, _Background]] = []

    def localize(self, text: str) -> str:
        return re.sub(r"\b(" + "|".join(DOC_PORTS) + r")\b", lambda m: self.ports[m[1]], text)

    def _command(self, block: Block, number: int) -> list[str]:
        source = f"source {shlex.quote(str(self.state))}"
        text = self.localize(block.text)
        if block.lang == "python":
            script = self.workdir / f"block{number}.py"
            script.write_text(text)
            return ["bash", "-c", f"{source}; exec python {shlex.quote(str(script))}"]
        if block.mode == "background":
            return ["bash", "-c", f"{source}; exec {text.strip()}"]
        save = f"export -p > {shlex.quote(str(self.state))}"
        return ["bash", "-e", "-o", "pipefail", "-c", f"{source}\n{text}\n{save}"]

    def run(self, block: Block, number: int) -> None:
        command = self._command(block, number)
        if block.mode == "background":
            running = _Background(command, self.env, self.workdir)
            self.background.append((block, running))
            ready = running.wait_for(block.argument)
            assert ready, f"{block.where}: never printed {block.argument!r}:\n{running.output}"
            output = running.output
        else:
            result = subprocess.run(
                command,
                cwd=self.workdir,
                env=self.env,
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
            )
            output = result.stdout + result.stderr
            assert result.returncode == 0, f"{block.where} exited {result.returncode}:\n{output}"
        if block.expected is not None:
            missing = matches_expected(block.expected, output, self.localize)
            assert missing is None, f"{block.where}: no line matches {missing!r} in:\n{output}"

    def close(self) -> list[str]:
        problems = []
        for block, running in reversed(self.background):
            code = running.stop()
            if code != 0:
                problems.append(f"{block.where} exited {code} on SIGINT:\n{running.output}")
        return problems


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _runs_servers(page: Path) -> bool:
    return any(b.mode == "background" for b in blocks(page) if b.lang in RUNNABLE)


def _pages() -> Iterator[object]:
    for page in PAGES:
        marks = [pytest.mark.slow] if _runs_servers(page) else []
        yield pytest.param(page, id=_page_id(page), marks=marks)


@pytest.mark.parametrize("page", list(_pages()))
def test_every_block_of_the_page_runs(page: Path, tmp_path: Path) -> None:
    session = PageSession(tmp_path)
    try:
        for number, block in enumerate(blocks(page)):
            if block.lang in RUNNABLE and block.mode != "not run":
                session.run(block, number)
    finally:
        problems = session.close()
    assert problems == []


def test_every_block_says_its_language_and_every_skip_its_reason() -> None:
    problems = []
    for page in PAGES:
        for block in blocks(page):
            if not block.lang:
                problems.append(f"{block.where}: a fence without a language")
            if block.mode == "not run" and not block.argument:
                problems.append(f"{block.where}: 'not run' without a reason")
            if block.mode != "run" and block.lang not in RUNNABLE:
                problems.append(f"{block.where}: a marker on a {block.lang!r} block")
    assert problems == []


_LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
_MD_NAME = re.compile(r"(?<![\w/.-])([\w./-]*\w\.md)\b")


def test_docs_refer_only_to_files_in_the_repo() -> None:
    missing = []
    for page in [*PAGES, *ROOT.glob("plugins/*/README.md")]:
        text = page.read_text()
        for target in _LINK.findall(text):
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                missing.append(f"{_page_id(page)}: link {target}")
        for name in _MD_NAME.findall(text):
            candidates = [page.parent / name, ROOT / name, ROOT / "docs" / name]
            if not any(c.exists() for c in candidates):
                missing.append(f"{_page_id(page)}: `{name}`")
        if "environment notes" in text:
            missing.append(f"{_page_id(page)}: 'environment notes' (not in the repo)")
    assert missing == []


def test_expected_output_matching() -> None:
    output = "first line\nHTTP/1.1 429 \nretry-after: 2\n{'a': 1, 'b': 2}\n"
    assert matches_expected("HTTP/1.1 429\n{'a': …}\n", output) is None
    assert matches_expected("retry-after: 2\nHTTP/1.1 429\n", output) == "HTTP/1.1 429"
    assert matches_expected("retry-after: 3\n", output) == "retry-after: 3"
