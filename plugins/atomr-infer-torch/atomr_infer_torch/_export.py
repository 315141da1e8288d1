"""``export_onnx``: write a model as an ONNX folder the ``onnx`` runtime serves.

The folder holds ``model.onnx`` (plus ``model.onnx.data``, the external weights the
dynamo exporter writes), the tokenizer, ``config.json`` and ``atomr_onnx.json`` (the
task and the graph's input and output names). Batch and sequence axes are dynamic.
Causal LMs are exported with their KV cache as plain inputs and outputs: ``input_ids``,
``attention_mask`` (past and new positions), ``position_ids``, ``past_keys`` and
``past_values`` (``[layers, batch, kv_heads, past, head_dim]``, ``past`` may be 0) in;
``logits`` (last position only), ``present_keys`` and ``present_values`` out. With
``kv_cache=False`` the graph takes ``input_ids`` and ``attention_mask`` and returns the
logits of every position (the onnx runtime then recomputes each step).
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

from ._cache import cache_argument, make_cache, returned_layers
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
    kv_cache: bool = True,
) -> Path:
    """Export ``model`` (a folder, a .gguf file or ``pypi:<dist>/<path>``) into ``out``.

    ``task`` is ``"generate"``, ``"embed"`` or ``"auto"`` (from the model's
    architecture). Causal LMs get KV-cache inputs and outputs unless ``kv_cache`` is
    False. Returns the path of ``model.onnx``. Needs onnx and onnxscript.
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

    target = out / "model.onnx"
    sys.stderr.write(f"atomr-infer: exporting {path} ({kind.value}) to {target}\n")
    with_cache = kv_cache and kind is Task.GENERATE
    if with_cache:
        module, example, names, outputs, shapes = _causal_with_cache(torch, net)
    else:
        module, example, names, outputs, shapes = _plain(torch, net, kind, output_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            example,
            str(target),
            input_names=names,
            output_names=outputs,
            dynamic_shapes=shapes,
            opset_version=opset,
            dynamo=True,
            verbose=False,
        )
    AutoTokenizer.from_pretrained(path).save_pretrained(out)
    config.save_pretrained(out)
    if kind is Task.GENERATE and net.generation_config is not None:
        net.generation_config.save_pretrained(out)
    manifest = {"task": kind.value, "inputs": names, "outputs": outputs, "kv_cache": with_cache}
    (out / "atomr_onnx.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return target


def _plain(torch: Any, net: Any, kind: Task, output_name: str) -> tuple[Any, ...]:
    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            result = self.net(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            return result.logits if kind is Task.GENERATE else result.last_hidden_state

    example = (torch.ones((2, 8), dtype=torch.long), torch.ones((2, 8), dtype=torch.long))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = ({0: batch, 1: seq}, {0: batch, 1: seq})
    return Plain(), example, ["input_ids", "attention_mask"], [output_name], shapes


def _causal_with_cache(torch: Any, net: Any) -> tuple[Any, ...]:
    layers = net.config.num_hidden_layers
    argument = cache_argument(net)

    class WithCache(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(
            self,
            input_ids: Any,
            attention_mask: Any,
            position_ids: Any,
            past_keys: Any,
            past_values: Any,
        ) -> Any:
            cache = make_cache([(past_keys[i], past_values[i]) for i in range(layers)])
            out = self.net(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **{argument: cache},
            )
            done = returned_layers(out)
            keys = torch.stack([la.keys for la in done])
            values = torch.stack([la.values for la in done])
            return out.logits[:, -1, :], keys, values

    with torch.no_grad():
        probe = net(input_ids=torch.ones((1, 2), dtype=torch.long), use_cache=True)
    _, heads, _, head_dim = returned_layers(probe)[0].keys.shape
    rows, new, past = 2, 3, 5
    example = (
        torch.ones((rows, new), dtype=torch.long),
        torch.ones((rows, past + new), dtype=torch.long),
        torch.arange(past, past + new)[None].expand(rows, new),
        torch.zeros(layers, rows, heads, past, head_dim),
        torch.zeros(layers, rows, heads, past, head_dim),
    )
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    total, past_dim = torch.export.Dim("total"), torch.export.Dim("past")
    shapes = (
        {0: batch, 1: seq},
        {0: batch, 1: total},
        {0: batch, 1: seq},
        {1: batch, 3: past_dim},
        {1: batch, 3: past_dim},
    )
    names = ["input_ids", "attention_mask", "position_ids", "past_keys", "past_values"]
    return WithCache(), example, names, ["logits", "present_keys", "present_values"], shapes
