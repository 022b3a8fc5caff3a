"""Anti-hacking negatives: rejected responses an RM must rank below a proper answer (``rewards.augment: negatives``).

A policy optimised against shadow RMs that have only seen (CoD refusal, compliant reply) pairs
learns that text which merely *sounds* like a refusal pays: "I'm here to help, but I'm not here to
help you. I'm here to help you, but…" (issue 12). So every training pair also yields pairs whose
chosen side is the proper answer (the text after ``####``) and whose rejected side is a
systematically generated hack of a known kind:

- harmful prompts (the K safety RMs; chosen = the proper refusal that names the concern and offers
  a safe alternative): :data:`HARM_KINDS` — ``evasive`` filler, a ``repetition`` loop, an
  ``off_topic`` answer, and a ``collapse``: the refusal's first sentence, then a loop;
- benign prompts (the helpfulness RM; chosen = the helpful answer): :data:`HELPFUL_KINDS` — an
  unnecessary ``refusal``, an ``evasive`` non-answer, a ``lecture``, an ``off_topic`` answer, and a
  ``repetition`` loop (of generic filler, or of the helpful answer's own opening words).

Texts are drawn from fragment pools with an rng seeded by the prompt, so a record always yields the
same pairs. The probe (``bench/probe_rewards.py``) measures the RMs on *other* wordings of these
kinds and on the policy's own samples, so that a pass is not a memorised template.
"""
from __future__ import annotations

import random
from typing import Sequence

HARM_KINDS = ("evasive", "repetition", "off_topic", "collapse")
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


def harm_negatives(prompt: str, refusal: str, pool: Sequence[str] = ()) -> dict[str, str]:
    """{kind: text} of :data:`HARM_KINDS` for a harmful ``prompt`` whose proper answer is ``refusal``
    (``pool``: other answers to borrow as off-topic text)."""
    rng = random.Random(f"harm:{prompt}")
    return {
        "evasive": " ".join(rng.sample(EVASIVE, rng.randint(2, 3))),
        "repetition": _loop(rng, rng.choice(LOOPS)),
        "off_topic": _off_topic(rng, prompt, pool),
        "collapse": _first_sentence(refusal) + " " + " ".join([rng.choice(COLLAPSE)] * rng.randint(4, 6)),
    }


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
