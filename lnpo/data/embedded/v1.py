"""Version 1 of the embedded task's data (kept byte for byte: ``EMBEDDED_VERSION`` 1 manifests).

- **SFT.** Always the correct answer; concise with probability 1/2, otherwise 1-3
  filler sentences (:data:`lnpo.data.embedded.responses.OPENERS` / ``CLOSERS``).
- **Preference pairs.** Two distinct responses from a noisy policy (correct with
  probability :data:`POLICY_P_CORRECT`, else a plausible wrong answer; n fillers with
  probabilities :data:`POLICY_FILLER_PROBS`); the annotator prefers a over b with
  probability ``sigmoid(K_CORRECT * (correct_a - correct_b) + K_LENGTH * (words_a - words_b))``:
  the longer response wins ~75% of the pairs whose correctness ties, the correct one
  ~90% of those whose correctness differs.
- **OOD split.** ``chosen`` the correct concise reference; ``rejected`` equally often a
  wrong concise, a wrong verbose or a correct verbose answer.

Why it did not serve the study (docs/study_embedded/v1/reading.md): the SFT data are always
correct, so the pairs' correctness signal concerns wrong answers the SFT model rarely
makes, while their length bias is learnt by every method; and responses span only 6-30
tokens, so summed and averaged log-ratios barely differ. See :mod:`lnpo.data.embedded.v2`.
"""

from __future__ import annotations

import math
import random

from lnpo.data.embedded.responses import (
    concise_response,
    sample_fillers,
    verbose_response,
)
from lnpo.data.embedded.rows import annotated_pair, pref_row, sft_row, split_rng
from lnpo.data.embedded.task import Question, sample_question, wrong_answer

#: Every rendered prompt + response of version 1 fits in this many tokens.
MAX_LENGTH = 64

#: Noisy response policy of the preference splits.
POLICY_P_CORRECT = 0.6
POLICY_FILLER_PROBS: tuple[float, ...] = (0.4, 0.2, 0.2, 0.2)  # P(n fillers = 0, 1, 2, 3)

#: Annotator: P(a > b) = sigmoid(K_CORRECT * (correct_a - correct_b) + K_LENGTH * (words_a - words_b)).
K_CORRECT = 3.0
K_LENGTH = 0.17


def preference_probability(correct_a: bool, words_a: int, correct_b: bool, words_b: int) -> float:
    """The annotator's probability of preferring response a over response b.

    ``sigmoid(K_CORRECT * (correct_a - correct_b) + K_LENGTH * (words_a - words_b))``
    with ``words`` the number of whitespace-separated words of a response.
    """
    logit = K_CORRECT * (int(correct_a) - int(correct_b)) + K_LENGTH * (words_a - words_b)
    return 1.0 / (1.0 + math.exp(-logit))


def _policy_response(rng: random.Random, q: Question) -> tuple[str, bool]:
    correct = rng.random() < POLICY_P_CORRECT
    answer = q.answer if correct else wrong_answer(rng, q)
    n = rng.choices(range(len(POLICY_FILLER_PROBS)), weights=POLICY_FILLER_PROBS)[0]
    return verbose_response(answer, sample_fillers(rng, n)), correct


def _annotated_pair(rng: random.Random, q: Question) -> dict:
    return annotated_pair(rng, q.prompt, lambda: _policy_response(rng, q), preference_probability)


def sft_rows(seed: int, n: int) -> list[dict]:
    rng = split_rng(seed, "sft")
    rows = []
    for _ in range(n):
        q = sample_question(rng, heldout=False)
        fillers = sample_fillers(rng, rng.randint(1, 3)) if rng.random() < 0.5 else []
        rows.append(sft_row(q.prompt, verbose_response(q.answer, fillers)))
    return rows


def pref_rows(seed: int, split: str, n: int, heldout: bool) -> list[dict]:
    rng = split_rng(seed, split)
    return [_annotated_pair(rng, sample_question(rng, heldout=heldout)) for _ in range(n)]


def ood_rows(seed: int, n: int) -> list[dict]:
    rng = split_rng(seed, "ood_prompts")
    rows = []
    for _ in range(n):
        q = sample_question(rng, ood=True)
        style = rng.randrange(3)
        if style == 0:  # wrong, concise
            rejected = concise_response(wrong_answer(rng, q))
        elif style == 1:  # wrong, verbose
            rejected = verbose_response(wrong_answer(rng, q), sample_fillers(rng, rng.randint(1, 3)))
        else:  # correct, verbose
            rejected = verbose_response(q.answer, sample_fillers(rng, rng.randint(1, 3)))
        rows.append(pref_row(q.prompt, concise_response(q.answer), rejected))
    return rows


