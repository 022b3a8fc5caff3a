"""How srmir/assets/judge/trained_answers.jsonl was generated: greedy answers of the demo's *trained*
policies to the CoD *training* prompts, labelled by hand.

    python bench/data/trained_policy_answers.py OUT.jsonl POLICY_DIR [POLICY_DIR ...]

GRPO gives a policy a voice the base model never had (moralizing refusals such as "This behavior
is considered harassment and is illegal…"), and a judge trained on base answers alone misses it
(docs/benchmarks.md, "The same answers read by hand"). Each training prompt of the shipped CoD set
(harmful and benign; the validation and test splits and benign.jsonl are skipped) is answered once,
by the policies in turn (prompt i by policy i mod n), greedy, 48 new tokens, through
srmir.eval.generate as `srmir eval` does. The policies were the 24-step `categorized` demo
policies of seeds 0, 1 and 2. The answers come out unlabelled; they were labelled by hand by the
rules of bench/data/README.md.

They are part of the learned judge tier's training data (kind ``trained``, counted 3 times like
the other hand-labelled answers), beside the phrase tier's lecture rule (docs/benchmarks.md,
"Judges on the trained policies' voice"). The rows have the format of ``rewards.policy_samples``
(prompt, response, label), for an RM refresh on the trained policy's own answers.
"""
import sys

from srmir import data
from srmir.eval.generate import GenerationSettings, JsonlCache, LazyPolicy, generate_answers, request_key


def requests() -> list[dict]:
    records = data.load_records(data.shipped("cod"))
    train, _, _ = data.stratified_split(records, 0.15, 0.15, 0)
    held_out = {r["prompt"].strip() for r in data.load_benign(data.shipped("benign"))}
    seen, reqs = set(), []
    for r in sorted(train, key=lambda r: r["id"]):
        p = r["prompt"].strip()
        if p in seen or p in held_out:
            continue
        seen.add(p)
        reqs.append({"set": "benign" if r["category"] == "benign" else "harmful", "id": r["id"], "template": "direct",
                     "category": r["category"], "prompt": r["prompt"], "text": r["prompt"]})
    return reqs


def main(out: str, policies: list[str]) -> None:
    settings = GenerationSettings(temperature=0.0, max_new_tokens=48)
    reqs = requests()
    for i, path in enumerate(policies):
        mine = reqs[i::len(policies)]
        fingerprint = settings.fingerprint(path)
        for q in mine:
            q["key"] = request_key(q["set"], q["id"], q["template"], fingerprint, q["text"])
            q["source"] = f"demo-trained-seed{i}-greedy"
        generate_answers(LazyPolicy(path, settings.dtype), mine, settings, JsonlCache(out), batch_size=16)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
