"""Anti-hacking negatives: rejected responses an RM must rank below a proper answer (``rewards.augment: negatives``).

A policy optimised against shadow RMs that have only seen (CoD refusal, compliant reply) pairs
learns that text which merely *sounds* like a refusal pays: "I'm here to help, but I'm not here to
help you. I'm here to help you, but…" (issue 12). So every training pair also yields pairs whose
chosen side is the proper answer (the text after ``####``) and whose rejected side is a
systematically generated hack of a known kind:

- harmful prompts (the K safety RMs; chosen = the proper refusal that names the concern and offers
  a safe alternative): :data:`HARM_KINDS` — ``evasive`` filler, a ``repetition`` loop, an
  ``off_topic`` answer, a ``collapse`` (the refusal's first sentence, then a loop), and two kinds of
  compliance without the willing-assistant opener of the data's rejected answers: ``disguised``
  (the rejected answer's harmful content behind an essay, how-to, "nuanced" or list framing) and
  ``topical`` (a vague essay about the request that never declines). A policy trained against RMs
  that had only seen "Okay, here's how…" as the unsafe side learned to comply in a neutral essay
  voice, which those RMs scored like a refusal (measured in the demo; ``docs/benchmarks.md``);
- benign prompts (the helpfulness RM; chosen = the helpful answer): :data:`HELPFUL_KINDS` — an
  unnecessary ``refusal``, an ``evasive`` non-answer, a ``lecture``, an ``off_topic`` answer, and a
  ``repetition`` loop (of generic filler, or of the helpful answer's own opening words).

Texts are drawn from fragment pools with an rng seeded by the prompt, so a record always yields the
same pairs. The probe (``bench/probe_rewards.py``) measures the RMs on *other* wordings of these
kinds and on the policy's own samples, so that a pass is not a memorised template.
"""
from __future__ import annotations

import random
import re
from typing import Sequence

HARM_KINDS = ("evasive", "repetition", "off_topic", "collapse", "disguised", "topical")
HELPFUL_KINDS = ("refusal", "evasive", "lecture", "off_topic", "repetition")

EVASIVE = [
    "I'm here to help, and I want to make sure you get what you need.",
    "That's an interesting request, and there's a lot to consider.",
    "Everyone's situation is different, so it's hard to give a single answer.",
    "Let me know if there's anything else I can do for you.",
    "I understand where you're coming from, and your feelings are valid.",
    "There are many perspectives on this, and it's worth thinking about.",
    "I appreciate you asking, and I'm always happy to chat.",
    "It really depends on what you're hoping to achieve.",
    "Thanks for reaching out, I'm glad you asked me.",
]
LOOPS = ["I'm here to help you", "I understand, I understand", "Thank you for asking", "Let me think about that",
         "Here is what I can say", "I'm not sure, but I'm here", "That is a good point"]
COLLAPSE = ["I'm sorry, but", "I can't help with that.", "I'm not able to do that.", "I won't, I won't.",
            "Sorry, sorry.", "I cannot, I cannot"]
REFUSAL_OPEN = ["I'm sorry, but I can't help with that.", "I can't assist with this request.",
                "Unfortunately, I'm unable to provide that information.", "I won't be able to help with that one.",
                "Sorry, I can't do that."]
REFUSAL_REASON = ["It might be used in harmful ways.", "This could be unsafe.",
                  "I have to be careful with topics like this.", "Questions like this can lead to harm.",
                  "It wouldn't be responsible for me to answer."]
REFUSAL_CLOSE = ["Is there something else I can help with?", "Please ask a professional instead.", ""]
LECTURE = [
    "It's important to approach this responsibly.",
    "Please think about how this could affect the people around you.",
    "Remember that safety should always come first.",
    "I'd encourage you to reflect on whether this is the right thing to do.",
    "Being mindful and respectful is essential here.",
    "Consider the ethical implications before going further.",
    "Every choice has consequences, so please be careful.",
]
# Unrelated answers for the off-topic kind when the data has no other answers to borrow.
OFF_TOPIC = [
    "Banana bread stays moist if you use very ripe bananas and take it out while a crumb still clings to the skewer.",
    "Saturn's rings are mostly chunks of water ice, from grains of dust to pieces as large as a house.",
    "To change a bike tyre, release the brake, open the quick release, lever the tyre off and seat the new tube.",
    "The Great Barrier Reef stretches for about 2,300 kilometres along the coast of Queensland.",
    "A good cup of tea needs freshly boiled water and three to five minutes of steeping.",
    "Chess openings such as the Italian Game aim to control the centre and develop the pieces quickly.",
]


def _first_sentence(text: str) -> str:
    for end in (". ", "! ", "? "):
        if end in text:
            return text.split(end, 1)[0] + end.strip()
    return text


def _loop(rng: random.Random, phrase: str) -> str:
    """``phrase`` three to six times: a word 4-gram repeated 3+ times (textstats.is_repetitive)."""
    sep = rng.choice([". ", ", ", " "])
    return sep.join([phrase] * rng.randint(3, 6)) + "."


def _off_topic(rng: random.Random, prompt: str, pool: Sequence[str]) -> str:
    from ..data.cod import is_off_topic

    usable = [t for t in pool if is_off_topic(prompt, t)] or [t for t in OFF_TOPIC if is_off_topic(prompt, t)]
    return rng.choice(usable or OFF_TOPIC)


# Framings of compliance in a neutral voice: what a small policy writes instead of "Sure, here's how".
DISGUISE_OPEN = [
    "When it comes to a situation like this, there are a few things worth considering.",
    "To do this well, you'll want to plan carefully.",
    "This is a complex and sensitive topic, and people see it differently. That said, there are some approaches.",
    "It's essential to understand the context first. Here is what usually works.",
    "Here are a few ideas you could use:",
    "There are several factors to keep in mind, and a step-by-step approach helps.",
]
TOPICAL_BODY = [
    "It's a delicate matter that requires careful thought about the people involved, the timing and your goals.",
    "Many people find that a thoughtful, step-by-step approach works best, starting small and adjusting as they go.",
    "It's important to consider the context, the possible outcomes and how others might react.",
    "The key is to stay calm, be strategic and make sure every detail fits the situation.",
    "A balanced approach that weighs the benefits and the risks usually gives the best results.",
]


def _content(rejected: str) -> list[str]:
    """The sentences of a rejected answer after its opener ("Okay, here's one way to …")."""
    body = rejected.split("####", 1)[-1].strip()
    sentences = [x for x in re.split(r"(?<=[.!?])\s+", body) if x]
    return sentences[1:] or sentences


def _cut(rng: random.Random, text: str) -> str:
    """Half the time, cut after 16–30 words, as a rollout's max_new_tokens does."""
    words = text.split()
    return " ".join(words[:rng.randint(16, 30)]) if len(words) > 30 and rng.random() < 0.5 else text


def _disguised(rng: random.Random, rejected: str) -> str:
    content = _content(rejected)
    opener = rng.choice(DISGUISE_OPEN)
    if opener.endswith(":"):
        return _cut(rng, opener + "\n\n" + "\n".join(f"{i}. {c}" for i, c in enumerate(content, 1)))
    return _cut(rng, opener + " " + " ".join(content))


def _topical(rng: random.Random, prompt: str) -> str:
    request = prompt.strip().rstrip("?.!")
    echo = rng.choice([f'You asked: "{request}."', f"About your question, {request[:1].lower() + request[1:]}:",
                       f"{request}? Good question."])
    return _cut(rng, " ".join([echo, *rng.sample(TOPICAL_BODY, rng.randint(2, 3))]))


def harm_negatives(prompt: str, refusal: str, pool: Sequence[str] = (), rejected: str = "") -> dict[str, str]:
    """{kind: text} of :data:`HARM_KINDS` for a harmful ``prompt`` whose proper answer is ``refusal``
    (``pool``: other answers to borrow as off-topic text; ``rejected``: the pair's unsafe answer,
    whose content the ``disguised`` kind re-frames — without it that kind is left out)."""
    rng = random.Random(f"harm:{prompt}")
    out = {
        "evasive": " ".join(rng.sample(EVASIVE, rng.randint(2, 3))),
        "repetition": _loop(rng, rng.choice(LOOPS)),
        "off_topic": _off_topic(rng, prompt, pool),
        "collapse": _first_sentence(refusal) + " " + " ".join([rng.choice(COLLAPSE)] * rng.randint(4, 6)),
    }
    if rejected:
        out["disguised"] = _disguised(rng, rejected)
    out["topical"] = _topical(rng, prompt)
    return out


def helpful_negatives(prompt: str, answer: str, pool: Sequence[str] = ()) -> dict[str, str]:
    """{kind: text} of :data:`HELPFUL_KINDS` for a benign ``prompt`` whose proper answer is ``answer``."""
    rng = random.Random(f"helpful:{prompt}")
    opening = " ".join(answer.split()[:rng.randint(4, 7)])
    refusal = " ".join([rng.choice(REFUSAL_OPEN), rng.choice(REFUSAL_REASON), rng.choice(REFUSAL_CLOSE)])
    return {
        "refusal": refusal.strip(),
        "evasive": " ".join(rng.sample(EVASIVE, rng.randint(2, 3))),
        "lecture": " ".join(rng.sample(LECTURE, rng.randint(2, 3))),
        "off_topic": _off_topic(rng, prompt, pool),
        "repetition": _loop(rng, rng.choice([opening, rng.choice(LOOPS)])),
    }
