"""``export_onnx``: write a model as an ONNX folder the ``onnx`` runtime serves.

The folder holds ``model.onnx`` (plus ``model.onnx.data``, the external weights the
dynamo exporter writes), the tokenizer, ``config.json`` and ``atomr_onnx.json`` (the
task and the graph's input and output names). Batch and sequence axes are dynamic.
Causal LMs are exported without a KV cache (logits of every position); the onnx runtime
then recomputes the sequence at each step.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

from ._config import Task
from ._weights import resolve_weights

__all__ = ["export_onnx"]


def _is_causal(config: Any) -> bool:
    return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in config.architectures or ())


def export_onnx(
    model: str,
    out: str | Path,
    *,
    task: str = "auto",
    cache_dir: str = "~/.cache/atomr-infer",
    opset: int = 18,
) -> Path:
    """Export ``model`` (a folder, a .gguf file or ``pypi:<dist>/<path>``) into ``out``.

    ``task`` is ``"generate"``, ``"embed"`` or ``"auto"`` (from the model's
    architecture). Returns the path of ``model.onnx``. Needs onnx and onnxscript.
    """
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = resolve_weights(model, cache_dir)
    config = AutoConfig.from_pretrained(path)
    kind = Task(task) if task != "auto" else Task.GENERATE if _is_causal(config) else Task.EMBED
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind is Task.GENERATE:
        net = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        output_name = "logits"
    else:
        net = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        output_name = "last_hidden_state"

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            result = self.net(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return result.logits if kind is Task.GENERATE else result.last_hidden_state

    example = (torch.ones((2, 8), dtype=torch.long), torch.ones((2, 8), dtype=torch.long))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    target = out / "model.onnx"
    sys.stderr.write(f"atomr-infer: exporting {path} ({kind.value}) to {target}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper().eval(),
            example,
            str(target),
            input_names=["input_ids", "attention_mask"],
            output_names=[output_name],
            dynamic_shapes=({0: batch, 1: seq}, {0: batch, 1: seq}),
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    config.save_pretrained(out)
    if kind is Task.GENERATE and net.generation_config is not None:
        net.generation_config.save_pretrained(out)
    manifest = {
        "task": kind.value,
        "inputs": ["input_ids", "attention_mask"],
        "output": output_name,
        "kv_cache": False,
    }
    (out / "atomr_onnx.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return target
