"""Responses of the embedded task: the answer sentence, version 1's filler sentences, answer parsing.

Every response of every task version holds its answer in a sentence
``"The answer is X."`` (:func:`concise_response`); :func:`parse_response` finds the
first such sentence and counts the words outside it. Version 1's verbose style adds
short filler sentences (:data:`OPENERS` before the answer, :data:`CLOSERS` after it);
version 2's longer style lives in :mod:`lnpo.data.embedded.v2`.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable

#: Filler sentences placed before the answer sentence.
OPENERS: tuple[str, ...] = (
    "Let me think about this.",
    "That is a great question.",
    "Here is what I found.",
    "Let me work it out.",
    "Sure, I can help.",
)
#: Filler sentences placed after the answer sentence.
CLOSERS: tuple[str, ...] = (
    "I hope this helps!",
    "Thanks for asking.",
    "I am happy to help.",
    "Let me know if you need more.",
)

#: Fraction of in-distribution prompt strings reserved for ``eval_prefs`` (see :func:`is_heldout`).

ANSWER_PREFIX = "The answer is "


def concise_response(answer: str) -> str:
    """The concise response: ``"The answer is {answer}."``."""
    return f"{ANSWER_PREFIX}{answer}."


def verbose_response(answer: str, fillers: Iterable[str]) -> str:
    """The answer sentence with the given filler sentences: openers before it, closers after it."""
    fillers = list(fillers)
    before = [f for f in fillers if f in OPENERS]
    after = [f for f in fillers if f not in OPENERS]
    return " ".join(before + [concise_response(answer)] + after)


def sample_fillers(rng: random.Random, n: int) -> list[str]:
    return rng.sample(OPENERS + CLOSERS, n)


_ANSWER_RE = re.compile(re.escape(ANSWER_PREFIX) + r"([^.!?]*?)\s*(?:[.!?]|$)")


def parse_response(response: str) -> tuple[str | None, int]:
    """Find the answer in a response.

    Returns ``(answer, extra_words)``: the text after the first ``"The answer is"``
    up to the end of its sentence (whitespace collapsed; ``None`` if the response has
    no answer sentence or an empty one), and the number of whitespace-separated words of the response
    outside that sentence (all of its words when there is no answer sentence).
    """
    match = _ANSWER_RE.search(response)
    total = len(response.split())
    answer = " ".join(match.group(1).split()) if match else ""
    if not answer:  # no answer sentence, or "The answer is." with nothing in it
        return None, total
    return answer, total - len(match.group(0).split())


