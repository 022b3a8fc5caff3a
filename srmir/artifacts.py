"""Artifacts checked at the door: model folders, reward banks, and the manifests srmir writes.

Every stage opens someone's files: a policy folder, a reward bank, a checkpoint. A broken one must
fail *here*, as one line naming the file and what is wrong (``srmir: error: <path>: <what>``,
exit status 2), not later as a traceback from deep inside transformers or DeepSpeed, and never by
quietly running on garbage (a bank whose tokenizer files are gone makes transformers build a
5-token tokenizer: every word becomes ``[UNK]`` and the bank scores a refusal and an insult alike).

- :func:`check_policy_dir` — a model folder (policy, reference, reward-model backbone):
  ``config.json`` with a known ``model_type``, weights whose safetensors headers are readable and
  whose tensor shapes fit the config, and tokenizer files with a vocabulary of plausible size.
  A LoRA adapter folder (``adapter_config.json``) passes a check of its own
  (:func:`check_adapter_dir`): adapter weights, and a base model that passes this check.
- :func:`check_reward_bank` — a saved :class:`~srmir.rewards.bank.ShadowRewardBank`: ``bank.json``,
  the weights against the backbone config, the backbone's tokenizer, the calibration, and the
  bank's manifest when it has one (banks saved before manifests existed are checked without it).
- :func:`write_manifest` / :func:`verify_manifest` — ``manifest.json``: every file of a folder
  with its size and sha256, written last, verified before anything in the folder is loaded
  (checkpoints and banks).

Nothing here unpickles: safetensors headers are JSON, tokenizer vocabularies are JSON or text.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from .errors import UserError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "srmir.manifest"
_HASH_CHUNK = 8 << 20
# files that hold a tokenizer's vocabulary (tokenizer_config.json alone is no tokenizer)
_VOCAB_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model",
                "sentencepiece.bpe.model")
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1}


# ------------------------------------------------------------------------------------ manifests


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)  # releases the GIL: the thread pool below hashes files in parallel
    return h.hexdigest()


def _hash_all(folder: Path, names: list[str]) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1, len(names)))) as pool:
        return dict(zip(names, pool.map(lambda n: sha256_file(folder / n), names)))


def write_manifest(folder: str | os.PathLike, **extra) -> dict:
    """Write ``folder/manifest.json``: every file under ``folder`` (but the manifest) with its size and
    sha256, plus ``extra`` fields. Call it last, when the folder is complete."""
    from .io import write_json_atomic

    folder = Path(folder)
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and p.name != MANIFEST and not p.name.startswith(f".{MANIFEST}."))
    hashes = _hash_all(folder, names)
    manifest = {"format": MANIFEST_FORMAT, "version": 1, **extra,
                "files": {n: {"size": (folder / n).stat().st_size, "sha256": hashes[n]} for n in names}}
    write_json_atomic(folder / MANIFEST, manifest)
    return manifest


def read_manifest(folder: str | os.PathLike) -> Optional[dict]:
    """The parsed manifest of ``folder`` (None when it has none); a damaged one raises UserError."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, OSError) as e:
        raise UserError(f"damaged manifest ({e})", where=str(path)) from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
            for v in files.values()):
        raise UserError("damaged manifest (not an srmir manifest of files, sizes and hashes)", where=str(path))
    return manifest


def verify_manifest(folder: str | os.PathLike) -> Optional[dict]:
    """Check every file the manifest lists: present, same size, same sha256. Returns the manifest
    (None when the folder has none); the first difference raises UserError naming the file.

    Sizes first (cheap: a truncated or missing file is found without reading anything), then hashes."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        return None
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            raise UserError("missing (listed in the manifest)", where=str(path))
        size = path.stat().st_size
        if size != entry["size"]:
            raise UserError(f"{'truncated' if size < entry['size'] else 'changed'}: {size} bytes, the manifest "
                            f"says {entry['size']}", where=str(path))
    hashes = _hash_all(folder, list(manifest["files"]))
    for name, entry in manifest["files"].items():
        if hashes[name] != entry["sha256"]:
            raise UserError("content differs from the manifest (sha256 mismatch): damaged or replaced",
                            where=str(folder / name))
    return manifest


# ------------------------------------------------------------------------------ file readers


def _read_json(path: Path, what: str = "JSON") -> dict:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read: {e.strerror}", where=str(path)) from None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"not valid UTF-8 {what}", where=str(path)) from None
    except json.JSONDecodeError as e:
        raise UserError(f"invalid {what}: {e.msg}", where=f"{path}:{e.lineno}") from None
    if not isinstance(obj, dict):
        raise UserError(f"expected a JSON object, got {type(obj).__name__}", where=str(path))
    return obj


def safetensors_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` from a safetensors file's JSON header, after checking that the
    file holds exactly the bytes the header describes (a truncated or zeroed file fails here)."""
    path = Path(path)
    size = path.stat().st_size
    if size < 8:
        raise UserError(f"truncated safetensors file ({size} bytes)", where=str(path))
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n < 2 or n > min(size - 8, 100 << 20):
            raise UserError(f"not a readable safetensors file (header length {n}, file {size} bytes): "
                            "truncated, zeroed or another format", where=str(path))
        head = f.read(n)
    try:
        header = json.loads(head.decode("utf-8"))
        tensors = {k: v for k, v in header.items() if k != "__metadata__"}
        spans = {k: (v["dtype"], tuple(int(d) for d in v["shape"]), [int(o) for o in v["data_offsets"]])
                 for k, v in tensors.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError("not a readable safetensors file (damaged header)", where=str(path)) from None
    end = max((off[1] for _, _, off in spans.values()), default=0)
    if 8 + n + end != size:
        raise UserError(f"{'truncated' if 8 + n + end > size else 'damaged'}: the header describes "
                        f"{8 + n + end} bytes, the file has {size}", where=str(path))
    for name, (dtype, shape, (begin, stop)) in spans.items():
        width = _DTYPE_BYTES.get(dtype)
        if width is not None and math.prod(shape) * width != stop - begin:
            raise UserError(f"damaged: tensor {name!r} {dtype}{list(shape)} does not fill its {stop - begin} bytes",
                            where=str(path))
    return {k: (dtype, shape) for k, (dtype, shape, _) in spans.items()}


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` over a model folder's safetensors weights (one file or an index of
    shards); ``{}`` for pickled ``.bin`` weights, which are only checked to be intact zip archives."""
    folder = Path(folder)
    if (folder / "model.safetensors").is_file():
        return {k: s for k, (_, s) in safetensors_header(folder / "model.safetensors").items()}
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index, "JSON index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise UserError("no weight_map in the safetensors index", where=str(index))
        shapes: dict[str, tuple[int, ...]] = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                raise UserError(f"weight shard {shard} (named in {index.name}) is missing", where=str(folder))
            shapes.update({k: s for k, (_, s) in safetensors_header(folder / shard).items()})
        missing = [k for k in weight_map if k not in shapes]
        if missing:
            raise UserError(f"tensor {missing[0]!r} named in the index is in no shard", where=str(index))
        return shapes
    import zipfile

    bins = [folder / "pytorch_model.bin"] if (folder / "pytorch_model.bin").is_file() else []
    if (folder / "pytorch_model.bin.index.json").is_file():
        weight_map = _read_json(folder / "pytorch_model.bin.index.json", "JSON index").get("weight_map") or {}
        bins = [folder / s for s in sorted(set(weight_map.values()))]
    for path in bins:
        if not path.is_file():
            raise UserError("weight shard is missing", where=str(path))
        with open(path, "rb") as f:
            legacy = f.read(2) == b"\x80\x02"  # torch.save before zip archives: a bare pickle stream
        if not legacy and not zipfile.is_zipfile(path):
            raise UserError("not a readable PyTorch weights file (truncated or damaged)", where=str(path))
    return {}


def tokenizer_vocab(folder: Path) -> Optional[tuple[int, int]]:
    """(number of token ids, largest id) of the tokenizer saved in ``folder``, read from its files
    (tokenizer.json, vocab.json, vocab.txt, plus added tokens); None when only a sentencepiece model
    is there and the ``sentencepiece`` package is not. UserError when no vocabulary file exists."""
    folder = Path(folder)
    if not any((folder / f).is_file() for f in _VOCAB_FILES) and not list(folder.glob("*.tiktoken")):
        raise UserError(f"no tokenizer files (none of {', '.join(_VOCAB_FILES[:3])}, ...): without them "
                        "transformers would build an almost empty tokenizer and every word would be unknown",
                        where=str(folder))
    ids: set[int] = set()
    if (folder / "tokenizer.json").is_file():
        tok = _read_json(folder / "tokenizer.json", "tokenizer JSON")
        vocab = (tok.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            ids.update(int(i) for i in vocab.values() if isinstance(i, int))
        elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], id = position
            ids.update(range(len(vocab)))
        ids.update(int(t["id"]) for t in tok.get("added_tokens") or [] if isinstance(t, dict) and "id" in t)
    elif (folder / "vocab.json").is_file():
        ids.update(int(i) for i in _read_json(folder / "vocab.json", "vocabulary JSON").values() if isinstance(i, int))
    elif (folder / "vocab.txt").is_file():
        ids.update(range(sum(1 for _ in (folder / "vocab.txt").open("rb"))))
    else:
        model = next((folder / f for f in ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
                      if (folder / f).is_file()), None)
        try:
            import sentencepiece
        except ImportError:
            return None
        if model is None:
            return None
        try:
            ids.update(range(sentencepiece.SentencePieceProcessor(model_file=str(model)).get_piece_size()))
        except (RuntimeError, OSError):
            raise UserError("not a readable sentencepiece model", where=str(model)) from None
    for extra in ("added_tokens.json",):
        if (folder / extra).is_file():
            ids.update(int(i) for i in _read_json(folder / extra).values() if isinstance(i, int))
    if (folder / "tokenizer_config.json").is_file():
        decoder = _read_json(folder / "tokenizer_config.json").get("added_tokens_decoder") or {}
        ids.update(int(i) for i in decoder if str(i).isdigit())
    if not ids:
        raise UserError("the tokenizer's vocabulary is empty", where=str(folder))
    return len(ids), max(ids)


def check_tokenizer(folder: Path, vocab_size: Optional[int], where: Optional[str] = None) -> Optional[int]:
    """The tokenizer in ``folder`` is present and plausible for a model with ``vocab_size``
    embedding rows: no id beyond the embedding matrix, and at least half of its rows covered (models
    pad their embeddings a little; a tokenizer of a tenth the size belongs to something else).
    Returns the number of token ids (None when it cannot be read without loading)."""
    found = tokenizer_vocab(folder)
    if found is None or not vocab_size:
        return found[0] if found else None
    count, largest = found
    where = where or str(folder)
    if largest >= vocab_size:
        raise UserError(f"the tokenizer has token id {largest} but the model has only {vocab_size} embeddings: "
                        "tokenizer of another model", where=where)
    if count < vocab_size // 2:
        raise UserError(f"the tokenizer has only {count} tokens for a model with {vocab_size} embeddings: "
                        "tokenizer files missing or of another model", where=where)
    return count


# --------------------------------------------------------------------------------- models


def _model_type_known(config: dict, path: Path) -> None:
    model_type = config.get("model_type")
    if "auto_map" in config:  # remote code (trust_remote_code) defines its own type
        return
    from transformers import CONFIG_MAPPING

    if not isinstance(model_type, str) or not model_type:
        raise UserError("config.json has no model_type", where=str(path / "config.json"))
    if model_type not in CONFIG_MAPPING:
        import transformers

        raise UserError(f"unknown model_type {model_type!r} (transformers {transformers.__version__} has no such "
                        "architecture)", where=str(path / "config.json"))


def _meta_model(path: Path, config_dict: dict, auto_class: str = "AutoModel"):
    """The model ``config.json`` describes, built on the meta device (shapes only, no memory);
    None when transformers cannot build it that way (then shapes are not checked)."""
    if "auto_map" in config_dict:
        return None
    import torch
    import transformers

    try:
        config = transformers.AutoConfig.from_pretrained(path)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise UserError(f"config.json does not describe a model: {str(e).splitlines()[0]}",
                        where=str(path / "config.json")) from None
    try:
        with torch.device("meta"):
            return getattr(transformers, auto_class).from_config(config)
    except Exception:  # noqa: BLE001 - a checker's limitation must not block a model transformers can load
        return None


def _strip(name: str, prefix: str) -> str:
    return name[len(prefix) + 1:] if prefix and name.startswith(prefix + ".") else name


def check_shapes(model, shapes: dict[str, tuple[int, ...]], where: str) -> None:
    """Tensors named alike in the file and in ``model`` (a meta model from the config) have the same
    shape, and at least one name is shared (else the weights are of another architecture)."""
    prefix = getattr(model, "base_model_prefix", "")
    expected = {_strip(n, prefix): tuple(t.shape) for n, t in model.state_dict().items()}
    found = {_strip(n, prefix): s for n, s in shapes.items()}
    common = [n for n in expected if n in found]
    if not common:
        raise UserError(f"the weights are of another model: none of the {len(expected)} tensors the config "
                        f"describes is in the file (e.g. {next(iter(expected), '?')!r})", where=where)
    for n in common:
        if expected[n] != found[n]:
            raise UserError(f"tensor {n!r} has shape {list(found[n])}, the config describes {list(expected[n])}: "
                            "weights of another model or a config that does not match them", where=where)


def _stat_key(path: Path) -> tuple:
    """What decides whether a folder changed: name, size and mtime of its files (for the cache)."""
    try:
        return tuple(sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in path.iterdir() if p.is_file()))
    except OSError:
        return ()


def check_policy_dir(path: str | os.PathLike) -> None:
    """A local model folder is loadable: config, weights, tokenizer (see the module docstring).

    Used for every model folder srmir opens (policy, reference, reward-model backbone, generator),
    through :func:`srmir.models.resolve_model`. Raises UserError naming the folder or file."""
    path = Path(path).expanduser()
    _check_policy_dir(str(path.resolve()), _stat_key(path))


@functools.lru_cache(maxsize=32)
def _check_policy_dir(path_str: str, _key: tuple) -> None:
    path = Path(path_str)
    if not path.is_dir():
        raise UserError("not a folder" if path.exists() else "no such folder", where=str(path))
    names = {p.name for p in path.iterdir()}
    if not names:
        raise UserError("empty folder: not a model (expected config.json, weights and tokenizer files)",
                        where=str(path))
    if "config.json" not in names and "adapter_config.json" in names:
        check_adapter_dir(path)
        return
    if "config.json" not in names:
        has_weights = any(n in names for n in _WEIGHT_FILES) or any(n.endswith(".safetensors") for n in names)
        has_tok = any(n in names for n in _VOCAB_FILES)
        what = ("weights without their config" if has_weights else "a tokenizer without a model" if has_tok
                else "not a model folder")
        raise UserError(f"no config.json: {what}", where=str(path))
    config = _read_json(path / "config.json", "config JSON")
    _model_type_known(config, path)
    if not any(n in names for n in _WEIGHT_FILES):
        raise UserError("no weights (model.safetensors, a sharded index or pytorch_model.bin)", where=str(path))
    shapes = weight_shapes(path)
    model = _meta_model(path, config)
    if model is not None and shapes:
        check_shapes(model, shapes, where=str(path))
    vocab = model.get_input_embeddings().weight.shape[0] if model is not None else _config_vocab(config)
    check_tokenizer(path, vocab)


def check_adapter_dir(path: Path) -> None:
    """A LoRA adapter folder (what ``srmir train`` exports with ``model.lora``): a peft config with a
    base model that resolves offline (and passes :func:`check_policy_dir` itself), adapter weights
    whose safetensors header is readable, and, when the folder has a tokenizer, one that fits the
    base's vocabulary. UserError naming the file otherwise."""
    from .models import resolve_model

    config = _read_json(path / "adapter_config.json", "adapter config")
    if config.get("peft_type") != "LORA":
        raise UserError(f"peft_type {config.get('peft_type')!r}: srmir loads LoRA adapters only",
                        where=str(path / "adapter_config.json"))
    base = config.get("base_model_name_or_path")
    if not isinstance(base, str) or not base:
        raise UserError("names no base_model_name_or_path: which model does the adapter belong to?",
                        where=str(path / "adapter_config.json"))
    weights = path / "adapter_model.safetensors"
    if weights.is_file():
        if not safetensors_header(weights):
            raise UserError("the adapter holds no tensors", where=str(weights))
    elif not (path / "adapter_model.bin").is_file():
        raise UserError("no adapter weights (adapter_model.safetensors)", where=str(path))
    try:
        base_path = resolve_model(base)  # checked at the door too
    except UserError as e:
        raise UserError(f"its base model {base!r} cannot be used: {e}", where=str(path / "adapter_config.json")) from None
    has_tokenizer = any((path / f).is_file() for f in _VOCAB_FILES)  # else the base's is used
    if Path(base_path).is_dir() and has_tokenizer:
        base_config = _read_json(Path(base_path) / "config.json", "config JSON")
        check_tokenizer(path, _config_vocab(base_config))


def _config_vocab(config: dict) -> Optional[int]:
    for c in (config, config.get("text_config") or {}):
        if isinstance(c.get("vocab_size"), int):
            return c["vocab_size"]
    return None


# ---------------------------------------------------------------------------- reward banks


def bank_requirements(directory: str | os.PathLike) -> dict:
    """What a bank needs besides its weights, recorded in its manifest: the backbone's tokenizer
    files and vocabulary size."""
    backbone = Path(directory) / "backbone"
    files = sorted(p.name for p in backbone.iterdir() if p.is_file() and p.name != "config.json")
    count, largest = tokenizer_vocab(backbone) or (None, None)
    return {"tokenizer": {"files": [f"backbone/{f}" for f in files], "vocab_size": count, "max_id": largest}}


def write_bank_manifest(directory: str | os.PathLike) -> None:
    """Called by ``ShadowRewardBank.save_pretrained`` on the finished (temporary) folder."""
    write_manifest(directory, **bank_requirements(directory))


def check_reward_bank(directory: str | os.PathLike) -> None:
    """A saved shadow reward bank is complete and consistent (see the module docstring); called by
    ``ShadowRewardBank.from_pretrained`` before anything is loaded. Raises UserError."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError("no such folder" if not directory.exists() else "not a folder", where=str(directory))
    if not (directory / "bank.json").is_file():
        raise UserError("not a shadow reward bank (no bank.json); train one with `srmir rm train`",
                        where=str(directory))
    manifest = verify_manifest(directory)
    meta = _read_json(directory / "bank.json", "bank JSON")
    categories = _check_bank_meta(meta, directory / "bank.json")
    backbone = directory / "backbone"
    if not (backbone / "config.json").is_file():
        raise UserError("incomplete reward bank: backbone/config.json is missing", where=str(directory))
    config = _read_json(backbone / "config.json", "config JSON")
    _model_type_known(config, backbone)
    if manifest is not None:  # what the bank recorded about its tokenizer must still be there
        for name in (manifest.get("tokenizer") or {}).get("files", []):
            if not (directory / name).is_file():
                raise UserError("missing (the bank's manifest lists it)", where=str(directory / name))
    weights = directory / "weights.safetensors"
    if not weights.is_file():
        raise UserError("incomplete reward bank: weights.safetensors is missing", where=str(directory))
    header = safetensors_header(weights)
    if (directory / "classifier.safetensors").is_file():
        safetensors_header(directory / "classifier.safetensors")
    vocab = _check_bank_weights(backbone, config, meta, categories, header, str(weights))
    check_tokenizer(backbone, vocab if vocab is not None else _config_vocab(config), where=str(backbone))


def _check_bank_meta(meta: dict, where: Path) -> list[str]:
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise UserError(what, where=str(where))

    categories = meta.get("categories")
    need(isinstance(categories, list) and categories and all(isinstance(c, str) for c in categories)
         and len(set(categories)) == len(categories), "'categories' must be a non-empty list of distinct slugs")
    taxonomy = meta.get("taxonomy")
    need(isinstance(taxonomy, list) and all(isinstance(e, dict) and {"slug", "description", "principle"} <= set(e)
                                            for e in taxonomy), "'taxonomy' must list {slug, description, principle}")
    for key, kind in (("backbone", str), ("pooling", str), ("max_length", int), ("frozen_layers", int),
                      ("normalize", bool)):
        need(isinstance(meta.get(key), kind), f"'{key}' is missing or not a {kind.__name__}")
    calibration = meta.get("calibration")
    need(isinstance(calibration, dict), "'calibration' is missing: the bank cannot normalise its scores; "
                                        "retrain it with `srmir rm train`")
    for c in categories:
        entry = calibration.get(c)
        need(isinstance(entry, dict) and all(isinstance(entry.get(k), (int, float)) and math.isfinite(entry[k])
                                             for k in ("mean", "std")) and entry["std"] > 0,
             f"calibration of {c!r} is missing or not a finite mean and a positive std")
    return categories


def _check_bank_weights(backbone: Path, config_dict: dict, meta: dict, categories: list[str],
                        header: dict, where: str) -> Optional[int]:
    """Every tensor the reward model of the backbone config needs is in weights.safetensors with its
    shape (stacked ones with one leading dimension, at least K: a bank may stack more heads than harm
    categories). Returns the embedding rows (for the tokenizer check)."""
    if "auto_map" in config_dict:
        return None
    import torch
    import transformers

    from .rewards.model import RewardModel

    try:
        config = transformers.AutoConfig.from_pretrained(backbone)
        with torch.device("meta"):
            skeleton = RewardModel.from_config(config, meta["pooling"])
    except Exception as e:  # noqa: BLE001 - any failure to build the skeleton means the backbone config is broken
        raise UserError(f"the backbone config does not build a reward model: {str(e).splitlines()[0]}",
                        where=str(backbone / "config.json")) from None
    K, stacked_heads = len(categories), set()
    for name, param in skeleton.named_parameters():
        shape = tuple(param.shape)
        if f"shared.{name}" in header:
            got = header[f"shared.{name}"][1]
        elif f"stacked.{name}" in header:
            got = header[f"stacked.{name}"][1]
            stacked_heads.add(got[0] if got else 0)
            if len(stacked_heads) > 1 or not got or got[0] < K:
                raise UserError(f"tensor 'stacked.{name}' holds {got[0] if got else 0} reward models, bank.json "
                                f"lists {K} categories", where=where)
            got = got[1:]
        else:
            raise UserError(f"tensor {name!r} of the reward model is missing: weights of another model?", where=where)
        if got != shape:
            raise UserError(f"tensor {name!r} has shape {list(got)}, the backbone config describes {list(shape)}: "
                            "weights of another model", where=where)
    for name, buf in skeleton.named_buffers():
        got = header.get(f"buffer.{name}")
        if got is not None and tuple(got[1]) != tuple(buf.shape):
            raise UserError(f"buffer {name!r} has shape {list(got[1])}, expected {list(buf.shape)}", where=where)
    return skeleton.backbone.get_input_embeddings().weight.shape[0]
