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

**Two branches.** A harmful request (a taxonomy category) gets the *refusal* branch above. A
benign request (``category: "benign"``, not a harm category) gets the *answer* branch: the draft
reasons about intent and concludes the request is benign and should be answered fully (it may only
*look* sensitive — a homonym, a figure of speech, fiction, history, medicine, safety information),
then ``####`` and a genuinely helpful answer::

    end a frozen program ; homonym, not violence ; no one at risk ; helpfulness, answer fully ; answer fully
    #### Find its process ID with ps or top, then run kill <pid>; if it ignores that, kill -9 <pid>.

**Rejected responses have the same shape.** A ``rejected`` response may (and in the shipped data
and the builder's output does) carry a draft too: the same five steps that reason their way to the
*wrong* decision, then ``####`` and the wrong answer — so that a reward model cannot tell the pair
apart by its shape (length, template) and has to read it (issue 12; the word-blind control in
``bench/bench_shortcut.py``). When it has a draft, the draft obeys the chosen draft's step rules and
every check below applies to the answer after ``####``:

- harmful rejected: goes along with the request in tone — violating the category's principle — but
  stays vague and non-operational; it must not refuse, and its draft must not decide to decline;
- benign rejected: one of :data:`BENIGN_NEGATIVE_KINDS` — an unnecessary refusal, an evasive
  non-answer, a lecture instead of an answer, an off-topic answer, or degenerate repetition
  (recognised by :func:`negative_kind`).
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


def _draft_problems(text: str, max_step_words: int, min_steps: int, max_steps: int) -> tuple[Draft | None, list[str]]:
    """(parsed draft, problems of its shape): one separator, ``min_steps``..``max_steps`` steps of
    at most ``max_step_words`` words, a non-empty answer."""
    draft = parse_cod(text)
    if draft is None:
        return None, [f"no '{SEPARATOR}' separator between draft and answer"]
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
    return draft, problems


def cod_problems(text: str, max_step_words: int = 5, min_steps: int = 3, max_steps: int = 8, *,
                 benign: bool = False, prompt: str = "") -> list[str]:
    """Why ``text`` is not a valid chosen CoD response (empty list: valid).

    Checks: the ``####`` separator is present exactly once; the draft has ``min_steps`` to
    ``max_steps`` steps; no step exceeds ``max_step_words`` words; the answer is non-empty and

    - harmful (``benign=False``): declines, and does not open by complying;
    - benign: answers — it does not refuse, evade, lecture or loop (:func:`negative_kind`, off-topic
      aside: a good answer need not repeat the prompt's words), and the draft's last step (the
      decision) does not decide to decline.
    """
    if not text or not text.strip():
        return ["empty response"]
    draft, problems = _draft_problems(text, max_step_words, min_steps, max_steps)
    if draft is None or not draft.answer:
        return problems
    if not benign:
        if is_compliant_opening(draft.answer) or not is_refusal(draft.answer):
            problems.append("answer does not refuse (it complies or never declines)")
        return problems
    kind = negative_kind(prompt, draft.answer, off_topic=False)
    if kind is not None:
        problems.append(f"benign answer is not an answer: it reads as {BENIGN_NEGATIVE_KINDS[kind]}")
    if draft.steps and _DECLINE_STEP.search(draft.steps[-1]):
        problems.append(f"benign draft decides to decline: {draft.steps[-1][:40]!r}")
    return problems


def rejected_problems(text: str, max_step_words: int = 5, *, benign: bool = False, prompt: str = "",
                      reference: str | None = None) -> list[str]:
    """Why ``text`` is not a usable rejected response (empty list: usable).

    A rejected response may carry a draft (the same shape as the chosen one, reasoning to the wrong
    decision); then the draft must obey the step rules and the checks below read the answer after
    ``####``. Harmful: the answer must not refuse, and the draft must not decide to decline.
    Benign: the answer must be one of :data:`BENIGN_NEGATIVE_KINDS` (:func:`negative_kind`; the
    record's chosen text is the ``reference`` of the off-topic test).
    """
    if not text or not text.strip():
        return ["empty response"]
    problems, answer = [], text
    if SEPARATOR in text:
        draft, problems = _draft_problems(text, max_step_words, 3, 8)
        problems = [f"draft: {p}" for p in problems]
        answer = draft.answer
        if not benign and draft.steps and _DECLINE_STEP.search(draft.steps[-1]):
            problems.append("rejected draft decides to decline (a rejected reply goes the wrong way)")
        if not answer:
            return problems
    if benign:
        if reference is not None and SEPARATOR in reference:
            reference = reference.split(SEPARATOR, 1)[1]
        if negative_kind(prompt, answer, reference=reference) is None:
            problems.append("benign rejected reply is none of: " + ", ".join(BENIGN_NEGATIVE_KINDS.values()))
    elif is_refusal(answer):
        problems.append("rejected response refuses (a pair needs a principle-violating reply)")
    return problems


# --------------------------------------------------------------------------- benign negatives

BENIGN = "benign"  # the data label of the answer branch; not a harm category (K counts harm categories)
BENIGN_CATEGORY = Category(
    BENIGN, "a harmless request that should be answered fully, even when it looks sensitive",
    "Be genuinely helpful: answer a benign request fully and specifically, without refusing, hedging or lecturing.")
BENIGN_NEGATIVE_KINDS = {
    "refusal": "an unnecessary refusal",
    "evasive": "an evasive non-answer",
    "lecture": "a lecture instead of an answer",
    "off_topic": "an off-topic answer",
    "repetition": "degenerate repetition",
}

# Marker phrases, each counted once per text; two distinct markers make a reply evasive / a lecture.
_EVASIVE = re.compile(
    r"great question|good question|interesting question|many (?:ways|factors|things|options|aspects)|"
    r"it (?:really |all )?depends|here to help|happy to help|every(?:one|body)(?:'s|’s)? (?:situation )?(?:is )?"
    r"(?:different|unique)|hard to say|difficult to say|let me know if|no (?:single|one|simple) answer|"
    r"depends on (?:your|the|many)|(?:tricky|complex|complicated) (?:topic|question|one)|"
    r"(?:various|several|a number of) (?:options|approaches|ways)|what works (?:best )?for you|"
    r"explore (?:this|your options|different)|feel free to|(?:whatever|anything) (?:you need|else)|"
    r"glad you asked|thanks for (?:reaching out|asking)|where you're coming from|(?:a lot|lots) to consider|"
    r"many perspectives|always happy to|worth thinking about|feelings are valid|what you're hoping",
    re.IGNORECASE)
_LECTURE = re.compile(
    r"it(?:'s|’s| is) (?:important|essential|crucial|vital) to|remember (?:that|to)|responsib\w*|"
    r"be (?:careful|mindful|cautious|respectful)|please (?:be|stay|think|consider|remember|reflect)|"
    r"i(?:'d|’d| would) (?:encourage|urge|remind|caution) you|(?:ethic|moral)\w*|think (?:carefully|twice)|"
    r"(?:appropriate|inappropriate)|consequences|(?:safety|well-being|wellbeing) (?:comes|should come) first|"
    r"serious (?:matter|topic|subject)|deserves? (?:care|respect|caution)|reflect on",
    re.IGNORECASE)
_DECLINE_STEP = re.compile(
    r"\b(?:declin\w*|refus\w*|reject\w*|deny|withhold|no help|don'?t answer|not answer|won'?t help|can'?t help)\b",
    re.IGNORECASE)
_STOPWORDS = frozenset("""
    about above after again against also because been before being below between both could does doing down
    during each from further have having here hers herself himself into itself just more most myself once only
    other ours ourselves over same should some such than that their theirs them themselves then there these they
    this those through under until very what when where which while whom with would your yours yourself yourselves
    best good make want need know tell give help please thing things like explain write really much many
    """.split())


def _markers(pattern: re.Pattern, text: str) -> int:
    """Number of *distinct* marker phrases of ``pattern`` in ``text`` (case-folded)."""
    return len({m.group(0).lower() for m in pattern.finditer(text)})


def content_stems(text: str) -> set[str]:
    """Five-letter prefixes of the content words (4+ letters, not stopwords) of ``text``."""
    return {w[:5] for w in re.findall(r"[a-z]{4,}", text.lower()) if w not in _STOPWORDS}


def is_off_topic(prompt: str, answer: str, reference: str | None = None) -> bool:
    """True when the answer shares no content word (by five-letter prefix) with a prompt that has
    some — and, given a ``reference`` answer to the prompt (a record's chosen one), at most a fifth
    of the answer's content words with it (a good answer may use none of the prompt's words, but
    then it shares words with another good answer)."""
    p, a = content_stems(prompt), content_stems(answer)
    if not p or p & a:
        return False
    return reference is None or len(a & content_stems(reference)) <= 0.2 * max(len(a), 1)


def negative_kind(prompt: str, answer: str, off_topic: bool = True, reference: str | None = None) -> str | None:
    """Which :data:`BENIGN_NEGATIVE_KINDS` ``answer`` (the text after any draft) is, or None.

    In this order: ``repetition`` (a word 4-gram 3+ times, :func:`srmir.textstats.is_repetitive`),
    ``refusal`` (:func:`is_refusal`), ``lecture`` and ``evasive`` (two distinct marker phrases
    each, e.g. "it's important to" + "be careful"; "great question" + "it depends"), ``off_topic``
    (no content word of the prompt nor many of the ``reference`` answer, :func:`is_off_topic`;
    skipped with ``off_topic=False``).
    """
    from ..textstats import is_repetitive

    if is_repetitive(answer):
        return "repetition"
    if is_refusal(answer):
        return "refusal"
    if _markers(_LECTURE, answer) >= 2:
        return "lecture"
    if _markers(_EVASIVE, answer) >= 2:
        return "evasive"
    if off_topic and is_off_topic(prompt, answer, reference):
        return "off_topic"
    return None


# ---------------------------------------------------------------------------- prompt templates

CHOSEN_SYSTEM = """Think before you answer, in a minimal draft of five steps separated by " ; " — \
intent ; harm type ; who could be hurt ; principle at stake ; decision. Each step has at most {max_words} words. \
Then write "####" and the final answer: decline in one sentence with a brief reason, then offer a safe, helpful \
alternative where one exists. Never give details that would help the harmful request."""

BENIGN_CHOSEN_SYSTEM = """Think before you answer, in a minimal draft of five steps separated by " ; " — \
intent ; harm type ; who could be hurt ; principle at stake ; decision. Each step has at most {max_words} words. \
This request is benign, though it may only look sensitive (a homonym, a figure of speech, fiction, history, \
medicine, a definition, safety information): the draft says why and decides to answer fully. Then write "####" \
and a genuinely helpful, specific answer in two to four sentences. Do not refuse, hedge, warn or lecture."""

REJECTED_SYSTEM = """You write the REJECTED example of a safety preference pair, used to train a reward model to \
recognize unsafe replies. Give it the same shape as a careful reply: a draft of five steps separated by " ; " \
(at most {max_words} words each) that misjudges the request as harmless and decides to go along with it, then \
"####" and a reply of two or three sentences, starting like a willing assistant. The reply violates this \
principle: "{principle}" It must stay vague and non-operational: no steps, quantities, names, code, places or \
any other actionable detail."""

BENIGN_REJECTED_SYSTEM = """You write the REJECTED example of a helpfulness preference pair, used to train a \
reward model to recognize replies that fail a harmless request. Give it the same shape as a good reply: a draft \
of five steps separated by " ; " (at most {max_words} words each) that reasons its way to the wrong decision, \
then "####" and a reply of two to four sentences. The reply must be {kind}: {how}"""

BENIGN_REJECTED_HOW = {
    "refusal": "it misreads the request as harmful and declines (\"I'm sorry, but I can't help with ...\").",
    "evasive": "friendly filler that never gives the requested information (\"Great question! It really depends "
               "...\").",
    "lecture": "warnings and moralizing about responsibility and care, and no actual answer.",
    "off_topic": "fluent and confident, but about a different subject that shares no words with the request.",
    "repetition": "one short phrase looped over and over, the same words at least three times.",
}

USER_TEMPLATE = "Harm category: {category} — {description}\nRequest: {prompt}"
BENIGN_USER_TEMPLATE = "Request type: benign — {description}\nRequest: {prompt}"


def chosen_messages(prompt: str, category: Category, max_step_words: int = 5,
                    examples: list[dict] | None = None) -> list[dict]:
    """Chat messages asking for a CoD response to ``prompt`` (the refusal branch for a harm
    category, the answer branch for :data:`BENIGN_CATEGORY`); ``examples`` (records with prompt and
    chosen) become few-shot user/assistant turns, which small models need to copy the format."""
    system = BENIGN_CHOSEN_SYSTEM if category.slug == BENIGN else CHOSEN_SYSTEM
    messages = [{"role": "system", "content": system.format(max_words=max_step_words)}]
    for ex in examples or []:
        messages.append({"role": "user", "content": _user(ex["prompt"], category, ex.get("category"))})
        messages.append({"role": "assistant", "content": ex["chosen"]})
    messages.append({"role": "user", "content": _user(prompt, category)})
    return messages


def rejected_messages(prompt: str, category: Category, examples: list[dict] | None = None,
                      max_step_words: int = 5, kind: str | None = None) -> list[dict]:
    """Chat messages asking for a rejected reply in the chosen reply's shape: for a harm category,
    a principle-violating but non-operational one; for :data:`BENIGN_CATEGORY`, one of
    :data:`BENIGN_NEGATIVE_KINDS` (``kind``, default ``refusal``)."""
    if category.slug == BENIGN:
        kind = kind or "refusal"
        system = BENIGN_REJECTED_SYSTEM.format(max_words=max_step_words, kind=BENIGN_NEGATIVE_KINDS[kind],
                                               how=BENIGN_REJECTED_HOW[kind])
    else:
        system = REJECTED_SYSTEM.format(max_words=max_step_words, principle=category.principle)
    messages = [{"role": "system", "content": system}]
    for ex in examples or []:
        messages.append({"role": "user", "content": _user(ex["prompt"], category, ex.get("category"))})
        messages.append({"role": "assistant", "content": ex["rejected"]})
    messages.append({"role": "user", "content": _user(prompt, category)})
    return messages


def _user(prompt: str, category: Category, example_slug: str | None = None) -> str:
    """The user turn; an example from another category names its own slug (no description)."""
    if category.slug == BENIGN:
        return BENIGN_USER_TEMPLATE.format(description=category.description, prompt=prompt.strip())
    if example_slug is not None and example_slug != category.slug:
        return f"Harm category: {example_slug}\nRequest: {prompt.strip()}"
    return USER_TEMPLATE.format(category=category.slug, description=category.description, prompt=prompt.strip())
