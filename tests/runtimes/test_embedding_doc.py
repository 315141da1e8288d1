"""docs/embedding.md: its example is a plain ``trio.run`` program; run it as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).parents[2] / "docs" / "embedding.md"


def _blocks() -> tuple[str, str]:
    text = DOC.read_text(encoding="utf-8")
    code = re.search(r"<!-- embedding-example -->\n```python\n(.*?)```", text, re.S)
    output = re.search(r"It prints:\n\n```text\n(.*?)```", text, re.S)
    assert code and output, "docs/embedding.md lost its example or its printed output"
    return code.group(1), output.group(1)


def test_embedding_example_runs_and_prints_what_the_doc_says(tmp_path: Path) -> None:
    code, expected = _blocks()
    script = tmp_path / "embedded.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "ATOMR_INFER_LOAD_PLUGINS": "testkit"}
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected
