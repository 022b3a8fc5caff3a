"""``run_eval``: policies × prompt sets → answers → judges → metrics → results.json, report.md, plots.

The evaluation reads top to bottom:

1. load the sets (:func:`load_eval_sets`): harmful prompts (the held-out test split by default),
   benign prompts, jailbreak templates and the fixed-seed harmful subset the templates wrap;
2. check every policy path and build the judges up front, so a typo fails before any generation;
3. per policy: generate every answer (cached in ``OUT/generations/<policy>.jsonl``), compute the
   reference log-likelihoods, run the judges (cached in ``OUT/judgments/<policy>.jsonl``);
4. per policy: the numbers of :mod:`srmir.eval.summary` (rates and means of
   :mod:`srmir.eval.metrics`, each with a 95% interval), then the alignment tax across policies;
5. write ``results.json``, ``report.md`` and the PNG plots atomically.
"""
from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..errors import UserError
from ..io import write_json_atomic
from ..taxonomy import load_taxonomy
from .generate import REFERENCE, GenerationSettings, JsonlCache, LazyPolicy, generate_answers, reference_logprobs, request_key
from .inputs import balanced_subset, load_benign_set, load_harmful, load_templates, render, resolve_policy
from .judges import RefusalJudge, RewardBankJudge, Sample
from .report import write_report
from .summary import alignment_tax, choose_verdict_tier, policy_metrics

DIRECT = "direct"  # template name of an unwrapped prompt
ASR_DEFINITION = ("attack success = the answer complies (the verdict tier calls it compliance: a refusal or a "
                  "non-answer - evasive, off-topic or degenerate text - is no success) and, when an HTTP safety "
                  "judge runs (prompt, guard or harmbench format), the judge calls it unsafe; without that judge "
                  "every compliant answer counts (an upper bound). Unparseable judge replies are left out of the rate.")


@dataclass
class EvalSets:
    """The prompts of one evaluation; ``jailbreak_ids`` are the harmful prompts every template wraps."""

    harmful: list[dict]
    benign: list[dict]
    templates: list[dict]
    jailbreak_ids: list[str]
    sources: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def load_eval_sets(harmful=None, benign=None, jailbreaks=None, *, limit: Optional[int] = None,
                   jailbreak_prompts: int = 7, seed: int = 0, harmful_columns=None, harmful_category=None,
                   benign_columns=None, heldout_from=None, split=(0.15, 0.15, 0), taxonomy=None,
                   harmful_format: str = "auto", benign_format: str = "auto", harmful_mapping=None) -> EvalSets:
    """Read the three inputs (None = shipped) and cut them to ``limit`` prompts per set, keeping
    categories (and sensitive/ordinary benign prompts) balanced; jailbreak templates wrap a
    balanced ``jailbreak_prompts``-prompt subset of the harmful set (0: no jailbreaks). A
    ``*_format`` other than ``auto`` reads a published benchmark's own file
    (:mod:`srmir.eval.benchmarks`)."""
    from .benchmarks import load_benchmark

    tax = load_taxonomy(taxonomy)
    notes: list[str] = []
    if harmful_format != "auto":
        if harmful is None:
            raise UserError(f"eval.harmful_format={harmful_format} needs the benchmark's file", where="eval.harmful_file")
        bench = load_benchmark(harmful, harmful_format, "harmful", mapping=harmful_mapping, category=harmful_category,
                               taxonomy=tax)
        h, h_src, notes = bench.records, bench.description, notes + bench.notes()
    else:
        h, h_src = load_harmful(harmful, columns=harmful_columns, category=harmful_category,
                                heldout_from=heldout_from, split=split, taxonomy=tax)
    if benign_format != "auto":
        if benign is None:
            raise UserError(f"eval.benign_format={benign_format} needs the benchmark's file", where="eval.benign_file")
        bench = load_benchmark(benign, benign_format, "benign", taxonomy=tax)
        b, b_src = bench.records, bench.description
    else:
        b, b_src = load_benign_set(benign, columns=benign_columns)
    h, b = balanced_subset(h, limit, "category", seed), balanced_subset(b, limit, "sensitive", seed)
    templates, t_src = load_templates(jailbreaks) if jailbreak_prompts > 0 else ([], "none")
    jb_ids = [r["id"] for r in balanced_subset(h, jailbreak_prompts, "category", seed)] if templates else []
    if DIRECT in {t["name"] for t in templates}:
        raise UserError(f"the template name {DIRECT!r} is reserved for unwrapped prompts", where=str(jailbreaks))
    sources = {"harmful": h_src, "benign": b_src, "jailbreaks": t_src,
               "harmful_used": len(h), "benign_used": len(b), "jailbreak_prompts": len(jb_ids),
               "harmful_benchmark": None if harmful_format == "auto" else harmful_format,
               "benign_benchmark": None if benign_format == "auto" else benign_format}
    return EvalSets(h, b, templates, jb_ids, sources, notes)


def build_requests(sets: EvalSets, fingerprint: str) -> list[dict]:
    """One generation request per (set, prompt, template): harmful and benign prompts as they are,
    then every template around every jailbreak-subset prompt."""
    reqs = [{"set": "harmful", "id": r["id"], "template": DIRECT, "category": r["category"], "label": r.get("label"),
             "prompt": r["prompt"], "text": r["prompt"]} for r in sets.harmful]
    by_id = {r["id"]: r for r in sets.harmful}
    for t in sets.templates:
        for rid in sets.jailbreak_ids:
            r = by_id[rid]
            reqs.append({"set": "jailbreak", "id": rid, "template": t["name"], "category": r["category"],
                         "label": r.get("label"), "prompt": r["prompt"], "text": render(t["template"], r["prompt"])})
    reqs += [{"set": "benign", "id": r["id"], "template": DIRECT, "category": None, "sensitive": r["sensitive"],
              "label": r.get("label"), "prompt": r["prompt"], "text": r["prompt"]} for r in sets.benign]
    for req in reqs:
        req["key"] = request_key(req["set"], req["id"], req["template"], fingerprint, req["text"])
    return reqs


def slug(name: str) -> str:
    """File-safe policy name."""
    return re.sub(r"[^\w.\-]+", "_", name)


# -------------------------------------------------------------------------------- per policy


def collect_answers(policy: LazyPolicy, sets: EvalSets, settings: GenerationSettings, out_dir: Path, name: str,
                    batch_size: int, progress: bool = True) -> list[dict]:
    """Every answer of one policy as rows (request fields + ``response``, ``n_tokens``,
    ``truncated``), benign rows with a reference also get ``ref_logprob``."""
    fp = settings.fingerprint(policy.path)
    cache = JsonlCache(out_dir / "generations" / f"{slug(name)}.jsonl")
    reqs = build_requests(sets, fp)
    done = generate_answers(policy, reqs, settings, cache, batch_size, desc=f"{name}: answers", progress=progress)
    rows = [{**req, **{k: rec[k] for k in ("response", "n_tokens", "truncated")},
             "prompt_truncated": bool(rec.get("prompt_truncated"))} for req, rec in zip(reqs, done)]
    ref_reqs = [{"set": "benign", "id": r["id"], "template": REFERENCE, "prompt": r["prompt"],
                 "reference": r["reference"], "text": r["prompt"] + "\n" + r["reference"],
                 "key": request_key("benign", r["id"], REFERENCE, fp, r["prompt"] + "\0" + r["reference"])}
                for r in sets.benign if r.get("reference")]
    if ref_reqs:
        done = reference_logprobs(policy, ref_reqs, settings, cache, batch_size, progress=progress)
        lls = {req["id"]: rec["ref_logprob"] for req, rec in zip(ref_reqs, done)}
        for row in rows:
            if row["set"] == "benign" and row["id"] in lls:
                row["ref_logprob"] = lls[row["id"]]
    return rows


# judge name -> {verdict field: row field}; each tier keeps its own verdict so tiers can be compared
ROW_FIELDS = {"refusal": {"verdict": "verdict_refusal"}, "learned": {"verdict": "verdict_learned"},
              "rewards": {"score": "score"},
              "http": {"unsafe": "unsafe", "refused": "http_refused", "sr_score": "sr_score", "raw": "judge_raw"}}


def judge_rows(rows: list[dict], judges: Sequence, cache: JsonlCache, chunk: int = 64, progress: bool = True,
               verdict_tier: Optional[str] = None) -> None:
    """Add each judge's fields (:data:`ROW_FIELDS`) to ``rows`` in place, then ``verdict`` and
    ``refused`` from ``verdict_tier``; verdicts are cached per (answer, judge signature). The HTTP
    judge only sees harmful and jailbreak answers (over-refusal is the verdict tiers' job)."""
    from tqdm.auto import tqdm

    for judge in judges:
        todo = [r for r in rows if judge.name != "http" or r["set"] != "benign"]
        sig = judge.signature()
        keys = [hashlib.sha1(f"{r['key']}\0{sig}".encode()).hexdigest()[:20] for r in todo]
        pending = [(k, r) for k, r in dict(zip(keys, todo)).items() if k not in cache]
        with tqdm(total=len(pending), desc=f"judge: {judge.name}", disable=not progress or not pending) as bar:
            for i in range(0, len(pending), chunk):
                part = pending[i:i + chunk]
                verdicts = judge.judge([Sample(r["prompt"], r["response"], r.get("category")) for _, r in part])
                cache.add([{"key": k, "judge": judge.name, **asdict(v)}
                           for (k, _), v in zip(part, verdicts) if v.error is None])  # failures: ask again next run
                bar.update(len(part))
        for k, row in zip(keys, todo):
            if k not in cache:
                continue  # not judged (a failed request): counts as no verdict
            v = cache[k]
            for src, dst in ROW_FIELDS.get(judge.name, {}).items():
                if v.get(src) is not None:
                    row[dst] = v[src]
    for row in rows:
        row["verdict"] = row.get(f"verdict_{verdict_tier}") if verdict_tier else None
        row["refused"] = None if row["verdict"] is None else row["verdict"] == "refusal"


# ----------------------------------------------------------------------------------- judges


def build_judges(names: Sequence[str], rm_dir=None, *, judge_api_base=None, judge_model=None,
                 judge_api_key_env: str = "OPENAI_API_KEY", judge_format: str = "prompt",
                 rm_batch_size: int = 64) -> tuple[list, list[str]]:
    """The judges named in ``names`` and notes on any that were skipped (rewards without ``rm_dir``)."""
    unknown = [n for n in names if n not in ("refusal", "learned", "rewards", "http")]
    if unknown:
        raise UserError(f"unknown judge {unknown[0]!r} (refusal, learned, rewards, http)", where="eval.judges")
    if not {"refusal", "learned", "http"} & set(names):
        raise UserError("refusal and attack success need a verdict tier (refusal, learned) or the http judge",
                        where="eval.judges")
    judges, notes = [], []
    if "refusal" in names:
        judges.append(RefusalJudge())
    if "learned" in names:
        from .learned_judge import LearnedJudge

        judges.append(LearnedJudge())
    if "rewards" in names:
        if rm_dir is None:
            notes.append("The shadow-reward judge was skipped: no reward bank was given (--rm DIR), so there are "
                         "no safety scores and no reward-model helpfulness proxy.")
        elif not Path(rm_dir).is_dir():
            raise UserError("reward bank folder not found", where=str(rm_dir))
        else:
            judges.append(RewardBankJudge.from_dir(str(rm_dir), batch_size=rm_batch_size))
    if "http" in names:
        from .http_judge import HTTPJudge

        if not judge_api_base:
            raise UserError("the http judge needs a server URL", where="eval.judge_api_base")
        if not judge_model:
            raise UserError("the http judge needs the model name the server serves", where="eval.judge_model")
        judges.append(HTTPJudge(judge_api_base, judge_model, api_key_env=judge_api_key_env, fmt=judge_format))
    return judges, notes


# ----------------------------------------------------------------------------------- run_eval


def _finite_or_none(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite_or_none(v) for v in obj]
    return obj


def run_eval(policies: dict[str, str], out_dir, *, harmful=None, benign=None, jailbreaks=None, rm_dir=None,
             judges: Sequence[str] = ("refusal", "rewards"), max_new_tokens: int = 64, batch_size: int = 16,
             limit: Optional[int] = None, jailbreak_prompts: int = 7, seed: int = 0, temperature: float = 0.0,
             top_p: float = 1.0, use_chat_template: bool = True, dtype: str = "bf16",
             harmful_columns: Optional[dict] = None, harmful_category: Optional[str] = None,
             benign_columns: Optional[dict] = None, heldout_from=None, split=(0.15, 0.15, 0), taxonomy=None,
             judge_api_base: Optional[str] = None, judge_model: Optional[str] = None,
             judge_api_key_env: str = "OPENAI_API_KEY", judge_format: str = "prompt", verdict_judge: str = "auto",
             harmful_format: str = "auto", benign_format: str = "auto", harmful_mapping=None,
             rm_batch_size: int = 64, trust_remote_code: bool = False, plots: bool = True,
             progress: bool = True, max_prompt_length: int = 256) -> dict:
    """Evaluate ``policies`` (display name → HF folder, hub id, ``embedded:smollm2`` or training run
    folder) and write ``results.json``, ``report.md`` and plots into ``out_dir``; returns the results.

    ``harmful``/``benign``/``jailbreaks``: files (None = shipped; harmful None = the test split of
    ``heldout_from`` under ``split = (val_fraction, test_fraction, seed)``). Answers and verdicts
    are cached under ``out_dir``, so a rerun resumes. ``*_format`` reads a published benchmark's
    own file (:mod:`srmir.eval.benchmarks`); ``verdict_judge`` picks the tier behind the headline
    refusal / non-answer / attack-success numbers (``auto``: learned when it runs, else refusal).
    """
    if not policies:
        raise UserError("no policy to evaluate: give --policy PATH", where="--policy")
    t_start = time.time()
    out = Path(out_dir)
    sets = load_eval_sets(harmful, benign, jailbreaks, limit=limit, jailbreak_prompts=jailbreak_prompts, seed=seed,
                          harmful_columns=harmful_columns, harmful_category=harmful_category,
                          benign_columns=benign_columns, heldout_from=heldout_from, split=split, taxonomy=taxonomy,
                          harmful_format=harmful_format, benign_format=benign_format, harmful_mapping=harmful_mapping)
    paths = {name: resolve_policy(spec) for name, spec in policies.items()}
    judge_objs, notes = build_judges(judges, rm_dir, judge_api_base=judge_api_base, judge_model=judge_model,
                                     judge_api_key_env=judge_api_key_env, judge_format=judge_format,
                                     rm_batch_size=rm_batch_size)
    judge_names = [j.name for j in judge_objs]
    tier = choose_verdict_tier(judge_names, verdict_judge)
    settings = GenerationSettings(max_new_tokens, temperature, top_p, seed, use_chat_template, dtype, max_prompt_length)
    order = load_taxonomy(taxonomy).slugs
    results: dict = {"meta": {}, "policies": {}}
    timings = {}
    for name, path in paths.items():
        t0 = time.time()
        policy = LazyPolicy(path, dtype, trust_remote_code)
        rows = collect_answers(policy, sets, settings, out, name, batch_size, progress)
        policy.close()
        t1 = time.time()
        judge_rows(rows, judge_objs, JsonlCache(out / "judgments" / f"{slug(name)}.jsonl"), progress=progress,
                   verdict_tier=tier)
        results["policies"][name] = {"path": path, **policy_metrics(rows, judge_names, sets.jailbreak_ids, order, seed,
                                                                    verdict_tier=tier, http_format=judge_format)}
        timings[name] = {"answers_s": round(t1 - t0, 1), "judges_s": round(time.time() - t1, 1),
                         "model_loaded": policy.loads > 0, "answers": len(rows),
                         "prompts_truncated": sum(r["prompt_truncated"] for r in rows)}
    results["meta"] = {
        "sets": sets.sources, "templates": [t["name"] for t in sets.templates], "judges": judge_names,
        "generation": asdict(settings), "batch_size": batch_size, "seed": seed, "rm_dir": str(rm_dir) if rm_dir else None,
        "judge_model": judge_model if "http" in judge_names else None,
        "judge_format": judge_format if "http" in judge_names else None, "verdict_judge": tier,
        "asr_definition": ASR_DEFINITION, "notes": notes + sets.notes, "timings": timings,
        "seconds": round(time.time() - t_start, 1),
    }
    results["alignment_tax"] = alignment_tax(results["policies"])
    results = _finite_or_none(results)  # strict JSON: an empty cell's NaN becomes null
    write_json_atomic(out / "results.json", results)
    write_report(results, out, plots=plots)
    return results
