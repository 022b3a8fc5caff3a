"""Evaluation: harmful refusal, jailbreak robustness and the alignment tax, with 95% intervals.

``srmir eval --policy P [--policy P2 ...] --out DIR`` (or :func:`run_eval` from Python) generates
answers of each policy to harmful prompts (per category), jailbreak-wrapped harmful prompts (per
template) and benign prompts (some sensitive-looking), judges them (refusal detector, shadow
reward bank, OpenAI-compatible judge endpoint) and writes ``DIR/results.json``,
``DIR/report.md`` and PNG plots. Modules, in the order data flows:

- :mod:`~srmir.eval.inputs` — policies, prompt sets, jailbreak templates;
- :mod:`~srmir.eval.generate` — batched, cached generation and reference log-likelihoods;
- :mod:`~srmir.eval.judges`, :mod:`~srmir.eval.http_judge` — the judges;
- :mod:`~srmir.eval.metrics` — rates and means with Wilson / bootstrap intervals (pure);
- :mod:`~srmir.eval.runner` — :func:`run_eval`; :mod:`~srmir.eval.report` — report.md, plots.
"""
from .http_judge import HTTPJudge, parse_verdict
from .judges import RefusalJudge, RewardBankJudge, Sample, Verdict, is_refusal
from .runner import run_eval

__all__ = ["run_eval", "RefusalJudge", "RewardBankJudge", "HTTPJudge", "Sample", "Verdict", "is_refusal",
           "parse_verdict"]
