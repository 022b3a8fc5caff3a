"""Evaluation: harmful refusal, jailbreak robustness and the alignment tax, with 95% intervals.

``srmir eval --policy P [--policy P2 ...] --out DIR`` (or :func:`run_eval` from Python) generates
answers of each policy to harmful prompts (per category), jailbreak-wrapped harmful prompts (per
template) and benign prompts (some sensitive-looking), judges them and writes
``DIR/results.json``, ``DIR/report.md`` and PNG plots. Every answer gets one of three verdicts —
refusal, compliance, non-answer (evasive, off-topic, degenerate) — from a phrase tier and a
learned tier; a shadow reward bank and any OpenAI-compatible judge (safe/unsafe, the StrongREJECT
rubric, the HarmBench classifier question) add scores. Modules, in the order data flows:

- :mod:`~srmir.eval.inputs`, :mod:`~srmir.eval.benchmarks` — policies, prompt sets (srmir's own
  or a published benchmark's file), jailbreak templates;
- :mod:`~srmir.eval.generate` — batched, cached generation and reference log-likelihoods;
- :mod:`~srmir.eval.judges` (phrase tier, reward bank), :mod:`~srmir.eval.learned_judge`
  (MiniLM head), :mod:`~srmir.eval.http_judge` — the judges;
- :mod:`~srmir.eval.metrics` — rates and means with Wilson / bootstrap intervals (pure);
- :mod:`~srmir.eval.summary` — one policy's numbers, the alignment tax across policies;
- :mod:`~srmir.eval.runner` — :func:`run_eval`; :mod:`~srmir.eval.report` — report.md, plots.
"""
from .http_judge import HTTPJudge, parse_rubric, parse_verdict, parse_yes_no
from .judges import RefusalJudge, RewardBankJudge, Sample, Verdict, classify_answer, is_refusal
from .runner import run_eval

__all__ = ["run_eval", "RefusalJudge", "RewardBankJudge", "HTTPJudge", "Sample", "Verdict", "is_refusal",
           "classify_answer", "parse_verdict", "parse_rubric", "parse_yes_no"]
