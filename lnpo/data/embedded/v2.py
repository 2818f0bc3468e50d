"""Version 2 of the embedded task's data: noisy SFT, annotated pairs that fix it, long explanations.

Same questions, phrasings, held-out split and OOD prompts as version 1
(:mod:`lnpo.data.embedded.task`); what changes is the responses and who labels them.

- **Style.** A response is the answer sentence ``"The answer is X."`` followed by ``n``
  explanation sentences, ``P(n) ~ 1 / (n + 1)`` for ``n = 0..MAX_SENTENCES``
  (:data:`SENTENCE_WEIGHTS`: 30% concise, lengths spread evenly on a log scale), drawn without
  replacement from :data:`SENTENCES_BEFORE`, the question's own restatements
  (:data:`RESTATEMENTS`, which quote its operands) and :data:`SENTENCES_AFTER`, all placed
  after the answer, so a longer response never puts more text between the question and
  the answer (with preambles the tiny SFT model answered less often correctly, and a method
  that learnt the length bias lost correctness with it). Responses span
  5 to about 150 tokens (6 to ~140 words), so a per-token log-ratio and a summed one
  differ by up to ~30x between a pair's two responses.
- **SFT** (``sft.jsonl``): the noise real SFT sets have: with probability
  :data:`SFT_P_WRONG` the answer is a plausible wrong one (a slip: off by one or ten,
  an operand echoed, digits not reversed, a wrong count), whatever the style. A model
  imitating it answers wrongly about that often even where it could answer right.
- **Pairs** (``train_prefs``, ``eval_prefs``): two distinct responses from the same
  kind of policy (correct with probability :data:`POLICY_P_CORRECT`, style as above),
  labelled by an annotator that prefers correct answers and, like HH-RLHF's, longer ones::

      P(a > b) = sigmoid(K_CORRECT * (correct_a - correct_b) + K_LENGTH * (ln words_a - ln words_b))

  A correct answer beats a wrong one of equal length 95% of the time and a wrong one 20x
  longer 90% of the time; between two correct (or two wrong) answers the 20x longer one
  wins 68%. The pairs thus carry what the SFT data lack (which of the
  model's own candidate answers is right) and a length bias.
- **OOD split** (``ood_prompts``): ``chosen`` the correct concise reference;
  ``rejected`` equally often a wrong concise, a wrong explained or a correct explained answer.

Why this design (docs/embedded_task.md): in version 1 the SFT data were always correct,
so the only thing the pairs could teach was their length bias; here the SFT model's own
errors are the pairs' subject, on the same questions and answer sentence the OOD prompts
use, so a correction learnt on training phrasings applies to OOD phrasings too. The
scorer (:mod:`lnpo.data.embedded.scorer`, version 2) was fixed before any run; the
answer-first style and ``K_LENGTH = 0.25`` (first 0.5) were set from validation runs before
the study's sweep (docs/study_embedded/reading.md).
"""

from __future__ import annotations

import math
import random

from lnpo.data.embedded.responses import concise_response
from lnpo.data.embedded.rows import annotated_pair, pref_row, sft_row, split_rng
from lnpo.data.embedded.task import Question, sample_question, wrong_answer

#: Every rendered prompt + response of version 2 fits in this many tokens.
MAX_LENGTH = 192

MAX_SENTENCES = 14
#: P(n explanation sentences) proportional to 1 / (n + 1), n = 0..MAX_SENTENCES: lengths spread evenly on a
#: log scale (P(concise) = 0.30, mean n = 3.5), skewed towards short answers like real responses.
SENTENCE_WEIGHTS: tuple[float, ...] = tuple(1.0 / (n + 1) for n in range(MAX_SENTENCES + 1))
SFT_P_WRONG = 0.25
POLICY_P_CORRECT = 0.6
K_CORRECT = 3.0
K_LENGTH = 0.25

#: Explanation sentences (the first design placed these before the answer sentence; all now follow it).
SENTENCES_BEFORE: tuple[str, ...] = (
    "Let me think about this question step by step.",
    "First, I will read the question very carefully.",
    "This is a small puzzle about numbers and words.",
    "It helps to write down what we already know.",
    "We can solve this without any special tools.",
    "Let me go through the question one part at a time.",
    "I will check each step before I give the answer.",
    "A careful look at the question makes the task clear.",
    "There is a simple rule that solves this kind of question.",
    "Questions like this one are common in early practice.",
    "We only need to follow the rule for this kind of task.",
    "Let me work it out slowly so that nothing is missed.",
)
#: Explanation sentences placed after the answer sentence.
SENTENCES_AFTER: tuple[str, ...] = (
    "I checked the result a second time to be sure.",
    "I hope this explanation makes the steps easy to follow.",
    "Let me know if you would like another example.",
    "The same method works for other questions of this kind.",
    "Thanks for asking such a clear question.",
    "Feel free to ask again if anything is still unclear.",
    "It is always a good idea to check the work once more.",
    "Practice with a few more examples makes this much easier.",
)
#: Per kind: sentences restating the question (they quote its operands).
RESTATEMENTS: dict[str, tuple[str, ...]] = {
    "add": ("The question asks for the sum of {a} and {b}.", "We start from {a} and count {b} more."),
    "sub": ("The question asks for {b} taken away from {a}.", "We start from {a} and count {b} back."),
    "next": ("The question asks for the number right after {n}.", "We add one to {n}."),
    "reverse": ("The digits of {d} have to be read from the right.",
                "We write the digits of {d} in the opposite order."),
    "repeat": ("The word {w} has to appear {k} times.", "We write {w} again and again, {k} times in all."),
    "max": ("The question compares {a} and {b}.", "We look at which of {a} and {b} is greater."),
}


def explained_response(answer: str, before: list[str], after: list[str]) -> str:
    """``before`` sentences, the answer sentence, ``after`` sentences, joined by spaces."""
    return " ".join([*before, concise_response(answer), *after])


def sample_response(rng: random.Random, q: Question, answer: str) -> str:
    """A response in version 2's style (module doc) giving ``answer`` to ``q``."""
    n = rng.choices(range(MAX_SENTENCES + 1), weights=SENTENCE_WEIGHTS)[0]
    args = dict(q.args)
    own = [s.format(**args) for s in RESTATEMENTS[q.kind]]
    picked = rng.sample([*SENTENCES_BEFORE, *own, *SENTENCES_AFTER], n)
    return explained_response(answer, [], picked)


def preference_probability(correct_a: bool, words_a: int, correct_b: bool, words_b: int) -> float:
    """``sigmoid(K_CORRECT * (correct_a - correct_b) + K_LENGTH * (ln words_a - ln words_b))``."""
    logit = K_CORRECT * (int(correct_a) - int(correct_b)) + K_LENGTH * (math.log(words_a) - math.log(words_b))
    return 1.0 / (1.0 + math.exp(-logit))


def _policy_response(rng: random.Random, q: Question, p_correct: float) -> tuple[str, bool]:
    correct = rng.random() < p_correct
    return sample_response(rng, q, q.answer if correct else wrong_answer(rng, q)), correct


def _annotated_pair(rng: random.Random, q: Question) -> dict:
    return annotated_pair(rng, q.prompt, lambda: _policy_response(rng, q, POLICY_P_CORRECT), preference_probability)


def sft_rows(seed: int, n: int) -> list[dict]:
    rng = split_rng(seed, "sft", version=2)
    rows = []
    for _ in range(n):
        q = sample_question(rng, heldout=False)
        response, _ = _policy_response(rng, q, 1.0 - SFT_P_WRONG)
        rows.append(sft_row(q.prompt, response))
    return rows


def pref_rows(seed: int, split: str, n: int, heldout: bool) -> list[dict]:
    rng = split_rng(seed, split, version=2)
    return [_annotated_pair(rng, sample_question(rng, heldout=heldout)) for _ in range(n)]


def ood_rows(seed: int, n: int) -> list[dict]:
    rng = split_rng(seed, "ood_prompts", version=2)
    rows = []
    for _ in range(n):
        q = sample_question(rng, ood=True)
        style = rng.randrange(3)
        if style == 0:  # wrong, concise
            rejected = concise_response(wrong_answer(rng, q))
        elif style == 1:  # wrong, explained
            rejected = explained_response(wrong_answer(rng, q), [rng.choice(SENTENCES_BEFORE)], [])
        else:  # correct, explained
            rejected = explained_response(q.answer, [rng.choice(SENTENCES_BEFORE)], [rng.choice(SENTENCES_AFTER)])
        rows.append(pref_row(q.prompt, concise_response(q.answer), rejected))
    return rows


def corpus_texts() -> list[str]:
    """Version 2's sentences for the tokenizer's corpus (added to version 1's)."""
    fill = {"a": "12", "b": "34", "n": "56", "d": "7890", "w": "apple", "k": "two"}
    texts = [*SENTENCES_BEFORE, *SENTENCES_AFTER]
    texts += [s.format(**fill) for kind in RESTATEMENTS for s in RESTATEMENTS[kind]]
    texts.append(explained_response("0", list(SENTENCES_BEFORE), list(SENTENCES_AFTER)))
    return texts
