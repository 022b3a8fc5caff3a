"""The shortcut control: a backbone whose tokenizer cannot read words.

If a reward model separates chosen from rejected responses without reading a word — by their
length, their punctuation, their template — its pairwise accuracy says nothing about whether it
judges safety or helpfulness (issue 12: on the first shipped pairs a word-blind RM reached 1.000).
:func:`word_blind_backbone` writes a copy of a WordPiece backbone (BERT, MiniLM) whose tokenizer
maps every word to ``[UNK]`` — every piece the pre-tokenizer splits off, punctuation marks
included — while the special tokens and the pair template stay as they were: the tokenizer of
issue 12/16, which a bank gets when its vocabulary files are missing. Trained the same way, an RM
on it sees the *shape* of a text: how many tokens the prompt and the response have. With
``keep_punctuation`` the marks keep their ids (a stricter control: the RM also sees where commas,
colons and ``####`` fall, i.e. the rhythm of each template sentence). ``bench/bench_shortcut.py``
trains one and reports its held-out pairwise accuracy beside the real RMs' (the shipped pairs are
composed so that chosen and rejected have the same number of tokens; target ≤ 0.65).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path


def word_blind_tokenizer(tokenizer, keep_punctuation: bool = False):
    """A fast tokenizer like ``tokenizer`` (WordPiece) in which every vocabulary entry but the
    special tokens is unreachable: each pre-token (word or punctuation mark) becomes one ``[UNK]``;
    with ``keep_punctuation`` the entries without a letter or digit stay reachable."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    if state["model"]["type"] != "WordPiece":
        raise ValueError(f"the word-blind control needs a WordPiece tokenizer, not {state['model']['type']}")
    special = set(tokenizer.all_special_tokens)
    vocab = state["model"]["vocab"]
    keep = (lambda tok: tok in special or not any(ch.isalnum() for ch in tok)) if keep_punctuation else special.__contains__
    state["model"]["vocab"] = {tok if keep(tok) else f"\0blind{i}\0": i for tok, i in vocab.items()}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state)),
                                   model_input_names=list(tokenizer.model_input_names),
                                   **{k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)})


def word_blind_backbone(backbone: str, out_dir: str | os.PathLike, keep_punctuation: bool = False) -> str:
    """Copy ``backbone`` (a reference for :func:`srmir.models.resolve_model`) to ``out_dir`` with a
    :func:`word_blind_tokenizer`; returns ``out_dir`` as a backbone reference. The weights are linked
    (or copied), not changed."""
    from transformers import AutoTokenizer

    from ..models import resolve_model

    src, out = Path(resolve_model(backbone)), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and (f.suffix in (".safetensors", ".bin") or f.name == "config.json"):
            target = out / f.name
            if not target.exists():
                try:
                    target.symlink_to(f.resolve())
                except OSError:
                    shutil.copyfile(f, target)
    word_blind_tokenizer(AutoTokenizer.from_pretrained(src), keep_punctuation).save_pretrained(out)
    return str(out)
