from __future__ import annotations

import atomr_infer_core


def test_every_public_name_imports_with_a_public_module() -> None:
    for name in atomr_infer_core.__all__:
        obj = getattr(atomr_infer_core, name)
        module = getattr(obj, "__module__", "atomr_infer_core") or ""
        if isinstance(obj, type):
            assert not any(part.startswith("_") for part in module.split(".")), (name, module)
