"""The embedded task's ground-truth scorer, one formula per task version (fixed before any sweep).

:func:`grade` parses the question from the prompt (:func:`lnpo.data.embedded.task.parse_prompt`)
and the first answer sentence ``"The answer is X"`` of the response
(:func:`lnpo.data.embedded.responses.parse_response`); ``extra`` counts the response's words
outside that sentence::

    score = base * (1 - min(CAP, PER_WORD * extra))
    base  = 1.0 if X is the reference answer, 0.2 if X is another answer; score 0.0 without an answer sentence

==========  ==========  =====  =========================================================
version     PER_WORD    CAP    meaning
==========  ==========  =====  =========================================================
1           0.025       0.5    filler costs ~0.1-0.15 a sentence; verbose answers 0.5-0.975
2           0.002       0.2    correctness dominates; 100 words of explanation cost 0.2
==========  ==========  =====  =========================================================

So in both versions correct > wrong > unparseable whatever the length, and among
correct answers the shorter scores higher.
"""

from __future__ import annotations

import dataclasses

from lnpo.data.embedded.responses import parse_response
from lnpo.data.embedded.task import parse_prompt
from lnpo.errors import ConfigError

SCORE_WRONG = 0.2
#: version -> (penalty per extra word, penalty cap).
LENGTH_PENALTY: dict[int, tuple[float, float]] = {1: (0.025, 0.5), 2: (0.002, 0.2)}
VERSIONS: tuple[int, ...] = tuple(LENGTH_PENALTY)


@dataclasses.dataclass(frozen=True)
class Grade:
    """The scorer's verdict on one response (see :func:`grade`)."""

    answer: str | None  # the parsed answer, None if unparseable
    correct: bool
    extra_words: int
    score: float


def check_version(version) -> int:
    """``version`` as an int if it is a task version (:data:`VERSIONS`); else a one-line ConfigError."""
    if isinstance(version, bool) or not isinstance(version, int) or version not in LENGTH_PENALTY:
        raise ConfigError(f"embedded task version {version!r}: expected one of {list(VERSIONS)}")
    return version


def scorer_spec(version: int) -> str:
    """The evaluation scorer spec of task ``version``: ``"embedded"`` (version 1, the spec's original
    meaning) or ``"embedded-v<version>"``."""
    return "embedded" if check_version(version) == 1 else f"embedded-v{version}"


def scorer_version(spec: str) -> int | None:
    """The task version a scorer spec names (:func:`scorer_spec`'s inverse); None for other specs."""
    return next((v for v in VERSIONS if scorer_spec(v) == spec), None)


def grade(prompt: str, response: str, *, version: int = 1) -> Grade:
    """Grade ``response`` to ``prompt`` (user text or rendered chat prompt) with ``version``'s formula.

    ``score = base * (1 - min(CAP, PER_WORD * extra_words))`` (module doc); raises ``ValueError`` if
    ``prompt`` is not a prompt of this task.
    """
    per_word, cap = LENGTH_PENALTY[check_version(version)]
    question = parse_prompt(prompt)
    answer, extra = parse_response(response)
    if answer is None:
        return Grade(None, False, extra, 0.0)
    correct = answer == question.answer
    base = 1.0 if correct else SCORE_WRONG
    return Grade(answer, correct, extra, base * (1.0 - min(cap, per_word * extra)))


def score(prompt: str, response: str, *, version: int = 1) -> float:
    """Ground-truth score of ``response`` to ``prompt``, in [0, 1]; deterministic (see :func:`grade`)."""
    return grade(prompt, response, version=version).score
