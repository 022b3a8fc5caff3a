"""ShadowRewardBank: K reward models of one backbone, scored together in one batched pass.

The K harm RMs (``categories``) may be joined by a *helpfulness* RM (issue 12), trained on benign
prompts to prefer a helpful answer over an unnecessary refusal, an evasion, a lecture, an
off-topic answer or a repetition loop. It is one more stacked model of the same backbone, so
``score_heads`` scores all ``heads`` = ``categories + ["helpfulness"]`` in the same vmapped pass;
``score`` stays the ``[N, K]`` harm-only contract (its first K columns).

Peers score K reward models with K forward passes (TRL loops over them). Here the K models'
parameters are stacked along a leading K dimension and the reward model runs once under
``torch.func.vmap`` + ``functional_call``, so every matmul is a K-batched matmul.

Weights that are bit-identical in all K models (the frozen embeddings and lower blocks, see
:func:`~srmir.rewards.model.freeze_lower`, or the whole backbone for a shared trunk) are *not*
stacked: they enter ``functional_call`` unbatched, and ``vmap`` only batches operations that touch
a batched tensor, so the shared bottom of the network runs once per batch and the K-batched part
begins at the first weight that differs. The result equals K separate forward passes (tested
against :func:`score_sequential`, the peers' loop).

On disk (:meth:`save_pretrained`): ``bank.json`` (categories, whether a helpfulness head follows
them, their taxonomy entries, backbone reference, pooling, calibration of every head, the
classifier's class labels, training summary), ``weights.safetensors`` (``shared.*``, ``stacked.*``
with a leading dim of one per head, ``buffer.*``), optional ``classifier.safetensors``, and
``backbone/`` (config + tokenizer) — loadable without the training data or the original backbone
files, and without pickle.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch.func import functional_call, vmap

from ..artifacts import check_reward_bank, write_bank_manifest
from ..errors import UserError
from ..taxonomy import Category, Taxonomy
from .classifier import CategoryClassifier
from .model import PairEncoder, RewardModel, is_decoder, length_batches, load_backbone, resolve_pooling

FORMAT = "srmir.shadow_reward_bank"
VERSION = 1
HELPFULNESS = "helpfulness"  # name of the helpfulness RM's score column (not a harm category)
BENIGN_CLASS = "benign"  # the prompt classifier's class of prompts to answer (srmir.data.cod.BENIGN)


class ShadowRewardBank:
    """K shadow reward models (column k of every score matrix = the RM of ``categories[k]``), and
    optionally the helpfulness RM after them (``heads``).

    Build one with :meth:`from_models` (after training), :meth:`from_backbone` (untrained, random
    heads) or :meth:`from_pretrained`. ``normalize`` (attribute, or per call) standardizes each
    column with its calibration (mean, std of that RM's scores on validation responses).
    ``classifier_labels`` names the prompt classifier's classes: the categories, then ``benign``
    when it was trained with benign prompts.
    """

    def __init__(self, config, tokenizer, categories: Sequence[str], stacked: dict, shared: dict, buffers: dict, *,
                 backbone: str, pooling: str, max_length: int, frozen_layers: int,
                 calibration: Optional[dict] = None, normalize: bool = True,
                 classifier: Optional[CategoryClassifier] = None, info: Optional[dict] = None,
                 taxonomy: Optional[Taxonomy] = None, batch_size: int = 64, helpfulness: bool = False,
                 classifier_labels: Optional[Sequence[str]] = None):
        self.categories = list(categories)
        self.heads = self.categories + ([HELPFULNESS] if helpfulness else [])
        self.classifier_labels = list(classifier_labels or self.categories)
        self.config, self.tokenizer, self.backbone = config, tokenizer, backbone
        self.pooling = resolve_pooling(pooling, config)
        self.max_length, self.frozen_layers = max_length, frozen_layers
        self.encoder = PairEncoder(tokenizer, max_length, decoder=is_decoder(config))
        self.normalize, self.batch_size = normalize, batch_size
        self.classifier, self.info = classifier, dict(info or {})
        self.taxonomy = taxonomy or Taxonomy(tuple(Category(c, c, c) for c in self.categories))
        self._stacked, self._shared, self._buffers = stacked, shared, buffers
        calibration = calibration or {}
        self.calibration = {h: tuple(calibration.get(h, (0.0, 1.0))) for h in self.heads}
        self.mean_H = torch.tensor([self.calibration[h][0] for h in self.heads], dtype=torch.float32)
        self.std_H = torch.tensor([self.calibration[h][1] for h in self.heads], dtype=torch.float32)
        with torch.device("meta"):  # structure only; every tensor comes from the three dicts
            self._skeleton = RewardModel.from_config(config, self.pooling).eval()

    # ------------------------------------------------------------------------- construction

    @property
    def helpfulness(self) -> bool:
        """True when the bank has a helpfulness RM (the last of ``heads``)."""
        return HELPFULNESS in self.heads

    @classmethod
    def from_models(cls, models: Sequence[RewardModel], tokenizer, categories: Sequence[str], *, backbone: str,
                    max_length: int, frozen_layers: int = 0, helpfulness: bool = False,
                    **kwargs) -> "ShadowRewardBank":
        """Stack K trained reward models (same architecture, or UserError) into a bank; with
        ``helpfulness`` the last of ``models`` is the helpfulness RM (K + 1 models)."""
        heads = list(categories) + ([HELPFULNESS] if helpfulness else [])
        if len(models) != len(heads) or not heads:
            raise ValueError(f"{len(models)} models for {len(heads)} heads ({', '.join(heads)})")
        signature = [_signature(m) for m in models]
        for cat, sig in zip(heads, signature):
            if sig != signature[0]:
                raise UserError(f"the reward model of {cat!r} has a different backbone or pooling than that of "
                                f"{heads[0]!r}; one bank needs one backbone architecture", where="rewards.backbone")
        states = [{n: p.detach() for n, p in m.named_parameters()} for m in models]
        stacked, shared = stack_states(states)
        buffers = {n: b.detach() for n, b in models[0].named_buffers()}
        return cls(models[0].backbone.config, tokenizer, categories, stacked, shared, buffers, backbone=backbone,
                   pooling=models[0].pooling, max_length=max_length, frozen_layers=frozen_layers,
                   helpfulness=helpfulness, **kwargs)

    @classmethod
    def from_backbone(cls, backbone: str, categories: Sequence[str], pooling: str = "auto", max_length: int = 256,
                      shared_trunk: bool = False, seed: int = 0, helpfulness: bool = False,
                      **kwargs) -> "ShadowRewardBank":
        """An untrained bank: K (+1 with ``helpfulness``) copies of ``backbone`` with seeded random scalar heads.

        All K backbones are the pretrained weights, so they are shared (run once); with
        ``shared_trunk`` the bank also records that the whole backbone is frozen (classifier
        features then come from its last layer).
        """
        model, tokenizer = load_backbone(backbone)
        models = []
        for k in range(len(categories) + helpfulness):
            torch.manual_seed(seed * 1009 + k)
            models.append(RewardModel(model, pooling))  # one backbone object, K heads
        frozen = model.config.num_hidden_layers if shared_trunk else 0
        return cls.from_models(models, tokenizer, categories, backbone=backbone, max_length=max_length,
                               frozen_layers=frozen, helpfulness=helpfulness, **kwargs)

    # ------------------------------------------------------------------------------ devices

    @property
    def device(self) -> torch.device:
        return next(iter(self._stacked.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self._stacked.values())).dtype

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "ShadowRewardBank":
        """Move (and cast floating weights) in place; returns self. Under DeepSpeed: the policy's device."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if (dtype is not None and t.is_floating_point()) else None)

        self._stacked = {n: move(t) for n, t in self._stacked.items()}
        self._shared = {n: move(t) for n, t in self._shared.items()}
        self._buffers = {n: t.to(device) for n, t in self._buffers.items()}  # rotary tables etc. keep their dtype
        self.mean_H, self.std_H = self.mean_H.to(device), self.std_H.to(device)
        if self.classifier is not None:
            self.classifier = self.classifier.to(device)
        return self

    # ------------------------------------------------------------------------------ scoring

    def column(self, slug: str) -> int:
        """Column of a category's RM; UserError when this bank has none."""
        if slug not in self.categories:
            raise UserError(f"this reward bank has no model for category {slug!r} (it has: {', '.join(self.categories)})")
        return self.categories.index(slug)

    def params_of(self, k: int) -> dict[str, torch.Tensor]:
        """Every tensor of reward model k of ``heads`` (shared + its slice of the stacked + buffers)."""
        return {**self._shared, **{n: t[k] for n, t in self._stacked.items()}, **self._buffers}

    def models(self) -> list[RewardModel]:
        """One standalone reward model per head (real modules, eval mode): the sequential reference."""
        return [_materialize(self.config, self.pooling, self.params_of(k)) for k in range(len(self.heads))]

    def forward_batch(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Raw rewards ``[H, B]`` of one collated batch, every head's model in one vmapped pass."""
        if len(self.heads) == 1:  # nothing to batch over; vmap would only add overhead
            return functional_call(self._skeleton, self.params_of(0), args=(), kwargs=batch).unsqueeze(0)
        fixed = {**self._shared, **self._buffers}

        def one_model(stacked: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(self._skeleton, (stacked, fixed), args=(), kwargs=batch)

        with warnings.catch_warnings():
            # vmap has no batching rule for fused SDPA kernels and loops over K inside attention
            # alone; on CPU that still beat eager (batched-matmul) attention, so silence the notice.
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented")
            return vmap(one_model)(self._stacked)

    @torch.no_grad()
    def score_heads(self, prompts: Sequence[str], responses: Sequence[str], normalize: Optional[bool] = None,
                    batch_size: Optional[int] = None) -> torch.Tensor:
        """Scores ``[N, H]`` (float32, on the bank's device, no grad) of N (prompt, response) pairs by
        every head: the K harm RMs, then the helpfulness RM when the bank has one.

        Tokenizes once (all heads share the tokenizer), batches pairs of similar length, and runs
        all heads together. ``normalize`` (default: the bank's attribute) applies
        (s − mean_h) / std_h with each RM's stored calibration.
        """
        encoded = self.encoder.tokenize(prompts, responses)
        scores_NH = torch.empty(len(encoded), len(self.heads), dtype=torch.float32, device=self.device)
        for idx in length_batches([len(ids) for ids, _ in encoded], batch_size or self.batch_size):
            batch = self.encoder.collate([encoded[i] for i in idx], self.device)
            scores_NH[torch.tensor(idx, device=self.device)] = self.forward_batch(batch).T.float()
        return self.apply_calibration(scores_NH) if (self.normalize if normalize is None else normalize) else scores_NH

    def score(self, prompts: Sequence[str], responses: Sequence[str], normalize: Optional[bool] = None,
              batch_size: Optional[int] = None) -> torch.Tensor:
        """Harm scores ``[N, K]``: the first K columns of :meth:`score_heads` (the DESIGN contract)."""
        return self.score_heads(prompts, responses, normalize, batch_size)[:, :len(self.categories)]

    def apply_calibration(self, scores_NH: torch.Tensor) -> torch.Tensor:
        """(s − mean_H) / std_H: each RM's scores in units of its own validation spread (the first
        ``scores_NH.shape[1]`` heads)."""
        h = scores_NH.shape[1]
        return (scores_NH - self.mean_H[:h].to(scores_NH.device)) / self.std_H[:h].to(scores_NH.device)

    # --------------------------------------------------------------------- classification

    @torch.no_grad()
    def embed_prompts(self, prompts: Sequence[str], batch_size: Optional[int] = None) -> torch.Tensor:
        """Classifier features ``[N, H]``: mean-pooled states of the prompt after the shared frozen layers."""
        backbone_params = {n[len("backbone."):]: t for n, t in self.params_of(0).items() if n.startswith("backbone.")}
        feats = []
        for start in range(0, len(prompts), batch_size or self.batch_size):
            batch = self.encoder.prompts_only(prompts[start:start + (batch_size or self.batch_size)], self.device)
            out = functional_call(self._skeleton.backbone, backbone_params, args=(),
                                  kwargs={**batch, "output_hidden_states": True})
            hidden_BTH = out.hidden_states[min(self.frozen_layers, len(out.hidden_states) - 1)]
            m_BT1 = batch["attention_mask"].unsqueeze(-1).to(hidden_BTH.dtype)
            feats.append(((hidden_BTH * m_BT1).sum(1) / m_BT1.sum(1)).float())
        return torch.cat(feats) if feats else torch.empty(0, self.config.hidden_size)

    def classify(self, prompts: Sequence[str]) -> Optional[torch.Tensor]:
        """Predicted class per prompt, LongTensor ``[N]``, an index into ``classifier_labels`` (the
        category columns, then ``benign`` when the classifier has that class); None without a classifier."""
        if self.classifier is None:
            return None
        return self.classifier.predict(self.embed_prompts(prompts)).to(self.device)

    def classify_labels(self, prompts: Sequence[str]) -> Optional[list[str]]:
        """Predicted routing label per prompt: a harm slug or ``"benign"``; None without a classifier."""
        cols = self.classify(prompts)
        return None if cols is None else [self.classifier_labels[int(c)] for c in cols.tolist()]

    # ------------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write the bank to ``directory`` atomically (a temporary sibling folder, then rename)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        try:
            tensors = {f"shared.{n}": t for n, t in self._shared.items()}
            tensors.update({f"stacked.{n}": t for n, t in self._stacked.items()})
            tensors.update({f"buffer.{n}": t for n, t in self._buffers.items()})
            save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(tmp / "weights.safetensors"))
            if self.classifier is not None:
                save_file({n: t.cpu().contiguous() for n, t in self.classifier.tensors().items()},
                          str(tmp / "classifier.safetensors"))
            self.config.save_pretrained(tmp / "backbone")
            self.tokenizer.save_pretrained(tmp / "backbone")
            (tmp / "bank.json").write_text(json.dumps(self._metadata(), indent=2) + "\n", encoding="utf-8")
            write_bank_manifest(tmp)  # last: every file's size and sha256, the tokenizer files and vocabulary
            _replace_dir(tmp, directory)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _metadata(self) -> dict:
        return {
            "format": FORMAT, "version": VERSION,
            "categories": self.categories,
            "helpfulness": self.helpfulness,  # a helpfulness RM follows the K harm RMs in weights and calibration
            "classifier_labels": self.classifier_labels,
            "taxonomy": [{"slug": c.slug, "description": c.description, "principle": c.principle}
                         for c in self.taxonomy],  # the whole taxonomy: data is validated against it
            "backbone": self.backbone, "pooling": self.pooling, "max_length": self.max_length,
            "frozen_layers": self.frozen_layers, "normalize": self.normalize, "batch_size": self.batch_size,
            "calibration": {c: {"mean": m, "std": s} for c, (m, s) in self.calibration.items()},
            **self.info,
        }

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device=None, dtype: Optional[torch.dtype] = None,
                        taxonomy: Optional[Taxonomy] = None) -> "ShadowRewardBank":
        """Load a saved bank; with ``taxonomy``, reject a bank whose categories it does not have."""
        from safetensors.torch import load_file
        from transformers import AutoConfig, AutoTokenizer

        directory = Path(directory)
        check_reward_bank(directory)  # before anything is loaded: one line naming the broken file
        meta = _read_metadata(directory)
        if taxonomy is not None:
            foreign = [c for c in meta["categories"] if c not in taxonomy]
            if foreign:
                raise UserError(f"reward bank categories {', '.join(foreign)} are not in the taxonomy "
                                f"({', '.join(taxonomy.slugs)}); it was trained for another taxonomy", where=str(directory))
        weights = load_file(str(directory / "weights.safetensors"))
        split = {p: {n[len(p) + 1:]: t for n, t in weights.items() if n.startswith(p + ".")} for p in ("shared", "stacked", "buffer")}
        heads = len(meta["categories"]) + bool(meta.get("helpfulness"))
        if any(t.shape[0] != heads for t in split["stacked"].values()):
            raise UserError("stacked weights do not match the number of reward heads", where=str(directory / "weights.safetensors"))
        classifier = None
        if (directory / "classifier.safetensors").is_file():
            classifier = CategoryClassifier.from_tensors(load_file(str(directory / "classifier.safetensors")))
        known = {"format", "version", "categories", "taxonomy", "backbone", "pooling", "max_length",
                 "frozen_layers", "normalize", "batch_size", "calibration", "helpfulness", "classifier_labels"}
        bank = cls(AutoConfig.from_pretrained(directory / "backbone"), AutoTokenizer.from_pretrained(directory / "backbone"),
                   meta["categories"], split["stacked"], split["shared"], split["buffer"], backbone=meta["backbone"],
                   pooling=meta["pooling"], max_length=meta["max_length"], frozen_layers=meta["frozen_layers"],
                   calibration={c: (v["mean"], v["std"]) for c, v in meta["calibration"].items()},
                   normalize=meta["normalize"], classifier=classifier, batch_size=meta.get("batch_size", 64),
                   taxonomy=Taxonomy(tuple(Category(**e) for e in meta["taxonomy"])),
                   helpfulness=bool(meta.get("helpfulness")), classifier_labels=meta.get("classifier_labels"),
                   info={k: v for k, v in meta.items() if k not in known})
        return bank.to(device, dtype) if (device is not None or dtype is not None) else bank


# ------------------------------------------------------------------------------------ helpers


def stack_states(states: Sequence[dict[str, torch.Tensor]]) -> tuple[dict, dict]:
    """Split K state dicts into (stacked ``[K, ...]``, shared): a tensor equal in all K is kept once.

    With K = 1 everything is stacked (vmap needs at least one batched input).
    """
    stacked, shared = {}, {}
    for name, first in states[0].items():
        same = len(states) > 1 and all(torch.equal(first, s[name]) for s in states[1:])
        if same:
            shared[name] = first
        else:
            stacked[name] = torch.stack([s[name] for s in states])
    return stacked, shared


def score_sequential(models: Sequence[RewardModel], encoder: PairEncoder, prompts: Sequence[str],
                     responses: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    """Raw scores ``[N, K]`` the way peers compute them: each model, in turn, tokenizes and scores all N.

    The reference that :meth:`ShadowRewardBank.score` must equal, and the benchmark's baseline.
    """
    columns = []
    with torch.no_grad():
        for model in models:
            device = next(model.parameters()).device
            encoded = encoder.tokenize(prompts, responses)
            col_N = torch.empty(len(encoded), dtype=torch.float32, device=device)
            for idx in length_batches([len(ids) for ids, _ in encoded], batch_size):
                col_N[torch.tensor(idx, device=device)] = model(**encoder.collate([encoded[i] for i in idx], device)).float()
            columns.append(col_N)
    return torch.stack(columns, dim=1)


def _signature(model: RewardModel) -> tuple:
    return (model.backbone.config.model_type, model.pooling,
            tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))


def _materialize(config, pooling: str, tensors: dict[str, torch.Tensor]) -> RewardModel:
    """A real RewardModel holding ``tensors`` (built on meta, then every parameter/buffer assigned)."""
    with torch.device("meta"):
        model = RewardModel.from_config(config, pooling)
    for name, tensor in tensors.items():
        owner_name, _, leaf = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if leaf in owner._parameters:
            owner._parameters[leaf] = torch.nn.Parameter(tensor.clone(), requires_grad=False)
        else:
            owner._buffers[leaf] = tensor.clone()
    missing = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if missing:
        raise ValueError(f"no tensor for {missing[:3]}")
    return model.eval()


def _read_metadata(directory: Path) -> dict:
    path = directory / "bank.json"
    if not path.is_file():
        raise UserError("not a shadow reward bank (no bank.json); train one with `srmir rm train`", where=str(directory))
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"invalid JSON: {e}", where=str(path)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"not a shadow reward bank (format is not {FORMAT!r})", where=str(path))
    if meta.get("version") != VERSION:
        raise UserError(f"unsupported bank version {meta.get('version')!r} (this srmir reads {VERSION})", where=str(path))
    for f in ("weights.safetensors", "backbone"):
        if not (directory / f).exists():
            raise UserError(f"incomplete reward bank: {f} is missing", where=str(directory))
    return meta


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` onto ``target``; an existing ``target`` is moved aside first and removed after."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
