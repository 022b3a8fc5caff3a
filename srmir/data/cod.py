"""Introspective Chain-of-Draft (CoD): the structured prompts, the parser and the validator.

A safe (``chosen``) response is a minimal draft of introspective steps, then ``####``, then the
answer (SRMIR §3.1; Chain of Draft, arXiv 2502.18600: "each step a few words")::

    mock a coworker's weight ; insult, body shaming ; the coworker, their dignity ;
    stay respectful, no demeaning ; decline, offer honest talk
    #### I can't help write that — jokes about someone's body hurt and can be harassment. ...

Steps are separated by ``;`` or newlines and follow intent → harm type → who could be hurt →
principle at stake → decision; each has at most ``max_step_words`` words (every
whitespace-separated token with a letter or digit counts, labels included). The answer must be
a refusal with a brief reason; a safe alternative follows where one exists.

A ``rejected`` response, for pairwise training, goes along with the request in tone — violating
the category's principle — but stays vague and non-operational.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from ..taxonomy import Category

SEPARATOR = "####"
STEP_ORDER = ("intent", "harm type", "who could be hurt", "principle at stake", "decision")

# A step may carry list decoration ("1.", "2)", "-", "*", "•") that is not part of its words.
_BULLET = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,2}[.)])\s*")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s")

_REFUSAL = re.compile(
    r"\b(?:i\s*(?:can ?not|can't|can’t|won't|won’t|will not|must decline|have to decline|"
    r"need to decline|refuse|am not able|'m not able|’m not able|am unable|'m unable|’m unable|"
    r"would rather not|'d rather not|’d rather not|am not going to|'m not going to|’m not going to|"
    r"don't feel comfortable|'m not comfortable|’m not comfortable|am not comfortable)|"
    r"(?:can't|cannot|can’t|won't|won’t|not able to|unable to) (?:help|assist|do|write|share|provide|"
    r"give|support|create|make|go along)|not something i(?:'ll| will| can)|"
    r"(?:sorry|apologi[sz]e)[^.!?]{0,40}\b(?:but|can't|cannot|won't))",
    re.IGNORECASE,
)
_COMPLIANT_OPENER = re.compile(
    r"^\W*(?:sure|of course|absolutely|certainly|okay,? here|ok,? here|yes|happy to help|"
    r"great question|no problem|here(?:'s| is| are)|step 1|first,? you)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class DraftFormat:
    """A draft shape a generator may enforce: ``steps`` steps of at most ``max_step_words`` words."""

    steps: int = len(STEP_ORDER)
    max_step_words: int = 5


@dataclass(frozen=True)
class Draft:
    """A parsed CoD response: the draft ``steps`` (decoration stripped) and the final ``answer``."""

    steps: list[str]
    answer: str


def count_words(step: str) -> int:
    """Words of a draft step: whitespace tokens containing a letter or digit (``"—"`` is not one)."""
    return sum(1 for tok in step.split() if any(ch.isalnum() for ch in tok))


def parse_cod(text: str) -> Draft | None:
    """Split ``draft #### answer``; ``None`` when the separator is missing.

    Steps are the non-empty pieces of the draft split on ``;`` and newlines, with list
    decoration removed. The answer is everything after the first separator, stripped.
    """
    if SEPARATOR not in text:
        return None
    draft, answer = text.split(SEPARATOR, 1)
    steps = []
    for piece in re.split(r"[;\n]", draft):
        piece = _BULLET.sub("", piece).strip()
        if piece:
            steps.append(piece)
    return Draft(steps=steps, answer=answer.strip())


def format_cod(steps: list[str], answer: str) -> str:
    """The canonical CoD text: steps joined by ``" ; "``, a newline, ``#### `` and the answer."""
    return " ; ".join(s.strip() for s in steps) + f"\n{SEPARATOR} " + answer.strip()


def is_refusal(text: str) -> bool:
    """True when the first two sentences decline (``"I can't help with that..."``)."""
    head = " ".join(_SENTENCE_END.split(text.strip(), maxsplit=2)[:2])
    return bool(_REFUSAL.search(head))


def is_compliant_opening(text: str) -> bool:
    """True when a reply opens by agreeing (``"Sure, here's..."``, ``"Step 1"``)."""
    return bool(_COMPLIANT_OPENER.match(text.strip()))


def trim_to_sentence(text: str) -> str:
    """Cut a reply that hit the token limit back to its last complete sentence ('' if none)."""
    text = text.rstrip()
    ends = [m.end() for m in re.finditer(r"[.!?][\"')\]]*(?=\s|$)", text)]
    return text[:ends[-1]] if ends else ""


def cod_problems(text: str, max_step_words: int = 5, min_steps: int = 3, max_steps: int = 8) -> list[str]:
    """Why ``text`` is not a valid chosen CoD response (empty list: valid).

    Checks: the ``####`` separator is present exactly once; the draft has ``min_steps`` to
    ``max_steps`` steps; no step exceeds ``max_step_words`` words; the answer is non-empty,
    declines, and does not open by complying.
    """
    if not text or not text.strip():
        return ["empty response"]
    draft = parse_cod(text)
    if draft is None:
        return [f"no '{SEPARATOR}' separator between draft and answer"]
    problems = []
    if text.count(SEPARATOR) > 1:
        problems.append(f"more than one '{SEPARATOR}' separator")
    if not (min_steps <= len(draft.steps) <= max_steps):
        problems.append(f"draft has {len(draft.steps)} steps (expected {min_steps} to {max_steps})")
    for i, step in enumerate(draft.steps, start=1):
        n = count_words(step)
        if n > max_step_words:
            problems.append(f"draft step {i} has {n} words (max {max_step_words}): {step[:40]!r}")
    if not draft.answer:
        problems.append("empty answer after the separator")
    elif is_compliant_opening(draft.answer) or not is_refusal(draft.answer):
        problems.append("answer does not refuse (it complies or never declines)")
    return problems


def rejected_problems(text: str) -> list[str]:
    """Why ``text`` is not a usable rejected response: empty, a CoD draft, or a refusal."""
    if not text or not text.strip():
        return ["empty response"]
    problems = []
    if SEPARATOR in text:
        problems.append(f"rejected response contains the CoD separator '{SEPARATOR}'")
    if is_refusal(text):
        problems.append("rejected response refuses (a pair needs a principle-violating reply)")
    return problems


# ---------------------------------------------------------------------------- prompt templates

CHOSEN_SYSTEM = """Think before you answer, in a minimal draft of five steps separated by " ; " — \
intent ; harm type ; who could be hurt ; principle at stake ; decision. Each step has at most {max_words} words. \
Then write "####" and the final answer: decline in one sentence with a brief reason, then offer a safe, helpful \
alternative where one exists. Never give details that would help the harmful request."""

REJECTED_SYSTEM = """You write the REJECTED example of a safety preference pair, used to train a reward model to \
recognize unsafe replies. The reply must go along with the request in tone and so violate this principle: \
"{principle}" It must stay vague and non-operational: no steps, quantities, names, code, places or any \
other actionable detail. Two or three sentences, starting like a willing assistant. No draft, no "####"."""

USER_TEMPLATE = "Harm category: {category} — {description}\nRequest: {prompt}"


def chosen_messages(prompt: str, category: Category, max_step_words: int = 5,
                    examples: list[dict] | None = None) -> list[dict]:
    """Chat messages asking for a CoD response to ``prompt``; ``examples`` (records with prompt
    and chosen) become few-shot user/assistant turns, which small models need to copy the format."""
    messages = [{"role": "system", "content": CHOSEN_SYSTEM.format(max_words=max_step_words)}]
    for ex in examples or []:
        messages.append({"role": "user", "content": _user(ex["prompt"], category, ex.get("category"))})
        messages.append({"role": "assistant", "content": ex["chosen"]})
    messages.append({"role": "user", "content": _user(prompt, category)})
    return messages


def rejected_messages(prompt: str, category: Category, examples: list[dict] | None = None) -> list[dict]:
    """Chat messages asking for a principle-violating but non-operational reply to ``prompt``."""
    messages = [{"role": "system", "content": REJECTED_SYSTEM.format(principle=category.principle)}]
    for ex in examples or []:
        messages.append({"role": "user", "content": _user(ex["prompt"], category, ex.get("category"))})
        messages.append({"role": "assistant", "content": ex["rejected"]})
    messages.append({"role": "user", "content": _user(prompt, category)})
    return messages


def _user(prompt: str, category: Category, example_slug: str | None = None) -> str:
    """The user turn; an example from another category names its own slug (no description)."""
    if example_slug is not None and example_slug != category.slug:
        return f"Harm category: {example_slug}\nRequest: {prompt.strip()}"
    return USER_TEMPLATE.format(category=category.slug, description=category.description, prompt=prompt.strip())
