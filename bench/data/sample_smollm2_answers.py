"""How the sampled rows of srmir/assets/judge/smollm2_answers.jsonl (ids ts-*) were generated.

    python bench/data/sample_smollm2_answers.py OUT.jsonl

The embedded SmolLM2 answers, at temperature 0.8 (seed 2, 64 new tokens, through
srmir.eval.generate as `srmir eval` does), the learned judge's *training* prompts only: the
direct prompts of the greedy rows (smollm2-greedy), and two harmful CoD training prompts per
category not used before, wrapped in every shipped jailbreak template. Eval prompts (the CoD test
split, benign.jsonl) are skipped. The answers come out unlabelled; they were labelled by hand by
the rules of bench/data/README.md.
"""
import json
import random
import sys

from srmir import data
from srmir.eval.generate import GenerationSettings, JsonlCache, LazyPolicy, generate_answers, request_key
from srmir.eval.inputs import load_templates, render
from srmir.eval.learned_judge import LABELLED_ANSWERS
from srmir.models import resolve_model


def requests() -> list[dict]:
    greedy = [json.loads(line) for line in LABELLED_ANSWERS.read_text(encoding="utf-8").splitlines() if line.strip()]
    greedy = [r for r in greedy if r["source"] == "smollm2-greedy"]
    records = data.load_records(data.shipped("cod"))
    _, _, test = data.stratified_split(records, 0.15, 0.15, 0)
    eval_prompts = {r["prompt"] for r in test} | {r["prompt"] for r in data.load_benign(data.shipped("benign"))}
    wrapped_before = {r["prompt"] for r in greedy if r["template"] != "direct"}
    test_ids = {r["id"] for r in test}
    by_cat: dict[str, list[dict]] = {}
    for r in records:
        if r["id"] not in test_ids and r["category"] != "benign" and r["prompt"] not in wrapped_before | eval_prompts:
            by_cat.setdefault(r["category"], []).append(r)
    rng = random.Random(2)
    to_wrap = [r for c in sorted(by_cat) for r in rng.sample(by_cat[c], 2)]
    reqs = [{"set": r["set"], "id": r["id"], "template": "direct", "category": r.get("category"), "prompt": r["prompt"],
             "text": r["prompt"]} for r in greedy if r["template"] == "direct" and r["prompt"] not in eval_prompts]
    for t in load_templates(None)[0]:
        reqs += [{"set": "jailbreak", "id": r["id"], "template": t["name"], "category": r["category"],
                  "prompt": r["prompt"], "text": render(t["template"], r["prompt"])} for r in to_wrap]
    return reqs


def main(out: str) -> None:
    settings = GenerationSettings(temperature=0.8, seed=2, max_new_tokens=64)
    policy = LazyPolicy(resolve_model("embedded:smollm2"), settings.dtype)
    fingerprint = settings.fingerprint(policy.path)
    reqs = requests()
    for q in reqs:
        q["key"] = request_key(q["set"], q["id"], q["template"], fingerprint, q["text"])
    generate_answers(policy, reqs, settings, JsonlCache(out), batch_size=16)


if __name__ == "__main__":
    main(sys.argv[1])
