#!/usr/bin/env bash
# The local runtimes against the oldest transformers the declared ranges allow: a
# separate venv (.venv-oldest) with the lock for everything else, then the torch and onnx tests.
set -euo pipefail
cd "$(dirname "$0")/.."
oldest=$(sed -nE 's/.*"transformers>=([0-9.]+),.*/\1/p' plugins/atomr-infer-torch/pyproject.toml)
grep -v -i -E '^(transformers|tokenizers|huggingface[-_]hub)==' constraints.txt > .venv-oldest.constraints
echo "transformers==$oldest" >> .venv-oldest.constraints
VENV=.venv-oldest LOCK=.venv-oldest.constraints bash scripts/setup.sh
rm -f .venv-oldest.constraints
.venv-oldest/bin/python -c "import transformers; print('transformers', transformers.__version__)"
HF_HUB_OFFLINE=1 .venv-oldest/bin/python -m pytest -q plugins/atomr-infer-torch plugins/atomr-infer-onnx
