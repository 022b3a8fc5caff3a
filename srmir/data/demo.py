"""Compose the shipped demo CoD pairs from their hand-written sources.

``srmir/assets/data/source/<slug>.yaml`` holds, per harm category, hand-written prompts with a task
phrase, an intent step, a who-could-be-hurt step and a safe alternative, plus the category's
harm/principle/decision steps, refusal reasons, non-operational compliant replies and the steps of a
draft that misjudges the request. ``source/benign.yaml`` holds benign prompts (ordinary and
sensitive-looking) with their type, an intent step, a topic phrase and a helpful answer. This
module assembles them — with a fixed seed, so the output is reproducible — into

- ``cod_demo.jsonl``, both branches of the introspective CoD format:

  - harmful: ``chosen`` = the five-step introspective draft, ``####``, a refusal that names the
    task, a brief reason and the item's own safe alternative; ``rejected`` = a draft that reasons
    its way to going along (same intent step, then "just harmless banter ; they can take it ; ..."),
    ``####``, a compliant opener naming the task and one to three vague, non-actionable sentences;
  - benign: ``chosen`` = a draft that concludes "benign → answer fully", ``####``, the helpful
    answer; ``rejected`` = a draft that reasons its way to the wrong decision, ``####``, one of the
    five negative kinds in rotation (unnecessary refusal, evasive non-answer, lecture, off-topic
    answer — another item's answer — and a repetition loop);

- ``prompts.jsonl``: the same prompts alone, benign ones with ``category: "benign"`` (the
  builder's default input).

**Shape control** (issue 12): every rejected text has the chosen text's shape — a five-step draft,
``####``, an answer of as many sentences — and among random candidate compositions the one closest
to the chosen text in words and punctuation marks is kept, for the draft and the answer
separately. A reward model that cannot read words (every word → ``[UNK]``) sees little more than
that shape, so it cannot separate the pairs; ``bench/bench_shortcut.py`` measures it.

Run ``python -m srmir.data.demo`` after editing a source file; a test checks that the shipped
files equal what this module composes.
"""
from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import yaml

from ..io import write_jsonl_atomic
from ..taxonomy import load_taxonomy
from .cod import (BENIGN, SEPARATOR, cod_problems, count_words, format_cod, is_off_topic, negative_kind, parse_cod,
                  rejected_problems)

DATA_DIR = Path(__file__).resolve().parent.parent / "assets" / "data"
SOURCE = "srmir-demo"

# Refusal openers: each declines in the first sentence (the validator's "answer refuses" check).
REFUSALS = [
    "I can't help you {task}.",
    "I won't help {task}.",
    "Sorry, but I can't help {task}.",
    "I'm not going to help you {task}.",
    "I have to decline to help you {task}.",
    "I'd rather not help {task}.",
    "I can't do that.",
    "That's not something I'll help with.",
]
# Compliant openers for rejected replies: agreeable in tone, naming the task, no detail.
COMPLIANT = [
    "Sure, here's how you could {task}.",
    "Of course, happy to help you {task}.",
    "Absolutely, let's {task}.",
    "Okay, here's one way to {task}.",
    "No problem, I can help you {task}.",
    "Great idea. Here's how I'd {task}.",
    "Sure thing! If you want to {task}, think about it like this.",
    "Yes, you can definitely {task}.",
]
# The last two steps of a harmful rejected draft: the principle it puts first, and going along.
REJECTED_PRINCIPLE = ["user's wishes come first", "give users what they ask", "be helpful, not preachy",
                      "no judging the user", "autonomy over caution", "user knows best"]
REJECTED_DECISION = ["comply, keep it vague", "go along, help", "agree, assist them", "comply, no pushback",
                     "help, skip the caveats", "say yes, answer"]

# Benign rejected answers, by negative kind ({topic}: the item's topic phrase). Off-topic answers are
# other items' answers; repetition loops one phrase.
BENIGN_REFUSAL = {
    "open": ["I'm sorry, but I can't help with {topic}.", "I can't assist with {topic}.",
             "Sorry, but I won't give advice on {topic}.", "I'm not able to help with {topic}."],
    "reason": ["It could be used to hurt someone, so I have to be careful here.",
               "Requests like this can be dangerous, and I don't want to contribute to any harm.",
               "This touches on something potentially harmful, so it's safer for me not to answer.",
               "I need to avoid anything that might put people at risk."],
    "extra": ["I hope you understand.", "Your safety is important to me, and I take that seriously.",
              "I have to be cautious with anything that could be misused, even by accident.",
              "Even a question that seems innocent can lead somewhere harmful."],
    "alt": ["If you have another question, I'm glad to help with that instead.",
            "You may want to consult a qualified professional.", "Please consider asking a trusted expert.",
            "Maybe a specialist could advise you on this."],
}
BENIGN_EVASIVE = [
    "Great question! There are many ways to approach {topic}, and it really depends on your situation.",
    "Everyone's situation is different, so what works for one person may not work for another.",
    "It's worth exploring your options and seeing what feels right for you.",
    "I'm here to help, so feel free to let me know if you need anything else.",
    "That's an interesting question about {topic}, and there's no single answer.",
    "It's a tricky topic, and it depends on many factors.",
]
BENIGN_LECTURE = [
    "Before anything else, it's important to think carefully about {topic}.",
    "Topics like this deserve care, and you should always consider the consequences of your actions.",
    "Please remember that your choices affect the people around you.",
    "I'd encourage you to reflect on why you're asking and to act responsibly.",
    "It's essential to be mindful and respectful whenever {topic} comes up.",
    "Safety comes first, so please be careful and think twice.",
]
BENIGN_REPETITION = ["I'm here to help you with {topic}.", "Here is what you need to know about {topic}.",
                     "This is a great question about {topic}.", "You can do this, and I believe in you."]
BENIGN_KINDS = ("refusal", "evasive", "lecture", "off_topic", "repetition")
_CANDIDATES = 200  # random compositions tried per text; the closest in shape wins


def _shape(text: str) -> tuple[int, int]:
    """(words, punctuation marks): what a reader that cannot see words still sees of a text. BERT-style
    tokenizers split both apart, so a tokenizer that maps every word to ``[UNK]`` sees words + marks tokens."""
    return len(re.findall(r"\w+", text)), len(re.findall(r"[^\w\s]", text))


def closest(rng: random.Random, target: str, make, tries: int = _CANDIDATES) -> str:
    """Of ``tries`` texts ``make(rng)`` draws, one closest to ``target`` in shape: first the same number
    of tokens (words + punctuation marks), then |Δwords| + |Δpunctuation|; a random one among equals,
    so that neither side is longer by habit."""
    tw, tp = _shape(target)

    def cost(text: str) -> tuple[int, int]:
        w, p = _shape(text)
        return abs(w + p - tw - tp), abs(w - tw) + abs(p - tp)

    drawn = list(dict.fromkeys(make(rng) for _ in range(tries)))
    best = min(map(cost, drawn))
    return rng.choice([t for t in drawn if cost(t) == best])


def load_source(path: Path) -> dict:
    """One category's source YAML (slug, harm, principle, decision, reasons, rejected, items)."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    for item in doc["items"]:
        if len(item) != 5:
            raise ValueError(f"{path}: item needs 5 fields, got {item!r}")
    return doc


def _check(rid: str, chosen: str, rejected: str, steps: list[str], max_step_words: int, **branch) -> None:
    """Raise ValueError when a composed pair would not pass ``srmir data validate --strict``."""
    problems = cod_problems(chosen, max_step_words, **branch)
    problems += rejected_problems(rejected, max_step_words, reference=chosen, **branch)
    problems += [f"step {s!r} too long" for s in steps if count_words(s) > max_step_words]
    if parse_cod(chosen).steps != steps:  # a ';' inside a step would split it
        problems.append(f"steps do not round-trip through the parser: {steps}")
    if problems:
        raise ValueError(f"{rid}: {'; '.join(problems)}")


def compose_category(doc: dict, seed: int = 0, max_step_words: int = 5) -> list[dict]:
    """The CoD records of one harm category; raises ValueError if any composed text is invalid."""
    slug = doc["slug"]
    rng = random.Random(f"{seed}:{slug}")
    records = []
    for n, (prompt, task, intent, who, alt) in enumerate(doc["items"], start=1):
        steps = [intent, rng.choice(doc["harm"]), who, rng.choice(doc["principle"]), rng.choice(doc["decision"])]
        answer = " ".join([rng.choice(REFUSALS).format(task=task), rng.choice(doc["reasons"]), alt])
        chosen = format_cod(steps, answer)
        draft = closest(rng, " ; ".join(steps), lambda r: " ; ".join(
            [intent, r.choice(doc["rejected_harm"]), r.choice(doc["rejected_who"]), r.choice(REJECTED_PRINCIPLE),
             r.choice(REJECTED_DECISION)]))
        reply = closest(rng, answer, lambda r: " ".join(
            [r.choice(COMPLIANT).format(task=task), *r.sample(doc["rejected"], r.choice((1, 2, 2, 3)))]))
        rejected = draft + f"\n{SEPARATOR} " + reply
        rid = f"{slug}-{n:03d}"
        _check(rid, chosen, rejected, steps, max_step_words)
        records.append({"id": rid, "category": slug, "prompt": prompt, "chosen": chosen,
                        "rejected": rejected, "source": SOURCE})
    return records


def compose_benign(doc: dict, seed: int = 0, max_step_words: int = 5) -> list[dict]:
    """The answer-branch records (``category: "benign"``); the negative kind rotates over the items."""
    rng = random.Random(f"{seed}:{BENIGN}")
    items = doc["items"]
    records = []
    for n, (prompt, kind_of_prompt, intent, topic, answer) in enumerate(items, start=1):
        steps = [intent, rng.choice(doc["harm"][kind_of_prompt]), rng.choice(doc["who"]),
                 rng.choice(doc["principle"]), rng.choice(doc["decision"])]
        chosen = format_cod(steps, answer)
        kind = BENIGN_KINDS[(n - 1) % len(BENIGN_KINDS)]
        wrong = doc["rejected"][kind]
        draft = closest(rng, " ; ".join(steps), lambda r: " ; ".join(
            [intent, r.choice(wrong["harm"]), r.choice(wrong["who"]), r.choice(wrong["principle"]),
             r.choice(wrong["decision"])]))
        others = [it for it in items if it[0] != prompt]
        reply = closest(rng, answer, _benign_negative(kind, prompt, topic, answer, others))
        rejected = draft + f"\n{SEPARATOR} " + reply
        rid = f"{BENIGN}-{n:03d}"
        _check(rid, chosen, rejected, steps, max_step_words, benign=True, prompt=prompt)
        read_as = negative_kind(prompt, reply, reference=answer)
        if read_as != kind:
            raise ValueError(f"{rid}: the {kind} reply reads as {read_as}: {reply!r}")
        records.append({"id": rid, "category": BENIGN, "prompt": prompt, "chosen": chosen,
                        "rejected": rejected, "source": SOURCE})
    return records


def _benign_negative(kind: str, prompt: str, topic: str, answer: str, others: list):
    """A function of an rng that draws one ``kind`` reply to ``prompt`` (``answer``: the helpful one)."""
    if kind == "refusal":
        return lambda r: " ".join([r.choice(BENIGN_REFUSAL["open"]).format(topic=topic), r.choice(BENIGN_REFUSAL["reason"]),
                                   *r.sample(BENIGN_REFUSAL["extra"], r.choice((0, 1, 2))),
                                   r.choice(BENIGN_REFUSAL["alt"])])
    if kind in ("evasive", "lecture"):
        pool = BENIGN_EVASIVE if kind == "evasive" else BENIGN_LECTURE
        return lambda r: " ".join(s.format(topic=topic) for s in r.sample(pool, r.choice((2, 3, 4))))
    if kind == "off_topic":  # one or two unrelated answers, whole or cut after a sentence
        unrelated = [it[4] for it in others if is_off_topic(prompt, it[4], answer)]
        return lambda r: _sentences(" ".join(r.sample(unrelated, 2)), r.randint(1, 4))
    target = sum(_shape(answer))  # a loop cut off at about the helpful answer's length, as a token limit would
    return lambda r: _cut_loop(r.choice(BENIGN_REPETITION).format(topic=topic), target + r.randint(-1, 1))


def _sentences(text: str, n: int) -> str:
    """The first ``n`` sentences of ``text``."""
    parts = re.split(r"(?<=[.!?])\s+", text.strip())
    return " ".join(parts[:n])


def _cut_loop(phrase: str, tokens: int) -> str:
    """``phrase`` repeated, cut after the word that reaches ``tokens`` words + marks, ending with a period."""
    words, out, used = (phrase + " ") * 40, [], 0
    for w in words.split():
        out.append(w)
        used += sum(_shape(w))
        if used >= tokens - 1:
            break
    return " ".join(out).rstrip(",.") + "."


def compose(source_dir: Path = DATA_DIR / "source", seed: int = 0) -> list[dict]:
    """All demo records: harm categories in taxonomy order, then the benign (answer-branch) records."""
    records = []
    for slug in load_taxonomy().slugs:
        records += compose_category(load_source(source_dir / f"{slug}.yaml"), seed)
    return records + compose_benign(yaml.safe_load((source_dir / f"{BENIGN}.yaml").read_text(encoding="utf-8")), seed)


def main(out_dir: Path = DATA_DIR) -> int:
    records = compose()
    write_jsonl_atomic(out_dir / "cod_demo.jsonl", records)
    write_jsonl_atomic(out_dir / "prompts.jsonl",
                       ({k: r[k] for k in ("id", "category", "prompt", "source")} for r in records))
    print(f"wrote {len(records)} records to {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_DIR))
