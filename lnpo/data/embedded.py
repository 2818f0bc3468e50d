"""The embedded default task: a tiny, offline, deterministic preference-optimization task.

It recreates, at a scale a 1-5M parameter decoder learns on two CPU cores in a few
minutes, the situation that "A Practical Analysis of Human Alignment with *PO"
(NAACL Findings 2025) analyses: SFT data of correct answers, some concise and some
padded with filler sentences; preference pairs labelled by a noisy annotator that
prefers correct answers but *also* prefers longer responses; an in-distribution
training split and an out-of-distribution (OOD) evaluation split; and a programmatic
ground-truth scorer that rewards correctness and penalizes filler. After SFT on it,
DPO trained on the length-biased pairs is expected to keep (or grow) long responses,
while LN-DPO / SimPO should shorten them at equal correctness.

Everything is written to disk by :func:`materialize` and then read by the project's
ordinary JSONL loaders and ``transformers.AutoTokenizer``, so the embedded path runs
exactly the code a real dataset and checkpoint would.

Generating process
==================

Questions
    Six task kinds, each with its operand distribution (drawn uniformly) and its
    phrasings (templates, one drawn uniformly per question):

    ===========  ==========================================  ===================
    kind         operands                                    reference answer
    ===========  ==========================================  ===================
    ``add``      a, b in 0..9                                a + b
    ``sub``      0 <= b <= a <= 9                            a - b
    ``next``     n in 0..998                                 n + 1
    ``reverse``  a 3-5 digit string (no leading zero)        the digits reversed
    ``repeat``   a word from :data:`WORDS`, k in two..four   the word k times
    ``max``      a != b in 0..99                             max(a, b)
    ===========  ==========================================  ===================

    The kind is drawn uniformly. In-distribution prompts use :data:`TEMPLATES`;
    OOD prompts use :data:`OOD_TEMPLATES`: unseen phrasings of the same kinds that
    recombine phrases of the training templates (every OOD token occurs in training
    prompts; new words or casings make a tiny model fail outright), with the same
    operand distributions, so a small model can still partially solve them.

Responses
    The concise response is ``"The answer is {answer}."``. A verbose response adds
    ``n`` distinct filler sentences from :data:`OPENERS` (placed before the answer)
    and :data:`CLOSERS` (after it), drawn from their union.

SFT split (``sft.jsonl``)
    Always the correct answer; concise with probability 1/2, otherwise verbose with
    n ~ Uniform{1, 2, 3} fillers.

Preference splits (``train_prefs.jsonl``, ``eval_prefs.jsonl``)
    Two distinct responses to one prompt are sampled independently from a noisy
    policy: correct with probability :data:`POLICY_P_CORRECT` (otherwise a plausible
    wrong answer: off by a little, operands confused, digits unreversed, wrong
    count, ...), with n fillers drawn from :data:`POLICY_FILLER_PROBS`. A noisy
    annotator then prefers response a over b with probability

        P(a > b) = sigmoid(K_CORRECT * (correct_a - correct_b)
                           + K_LENGTH * (words_a - words_b))

    (words = whitespace-separated words of the response). The constants are
    :data:`K_CORRECT` and :data:`K_LENGTH`, set so that when correctness ties and
    lengths differ the longer response wins about 75% of the time, while the
    correct response still wins about 90% of the pairs whose correctness differs
    (see :func:`preference_probability`). ``eval_prefs`` uses the same process on
    held-out prompts: a fixed 10% of the in-distribution prompt strings, chosen by a
    hash of the text (:func:`is_heldout`), that ``sft`` and ``train_prefs`` never use;
    rejection sampling keeps the kinds uniform in every split.

OOD split (``ood_prompts.jsonl``)
    OOD prompts in the canonical preference format: ``chosen`` is the correct concise
    reference answer, ``rejected`` a plausible worse answer (equally often a wrong
    concise answer, a wrong verbose answer, or a correct verbose answer), so the
    win rate against the dataset's chosen answers is measurable.

Scorer
======

:func:`score` (and :func:`grade`, which also reports the parts) parses the question
from the user prompt with the templates above and finds the first answer sentence
``"The answer is X"`` (ending in ``.``, ``!``, ``?`` or the end of the text) in the
response. With ``extra`` the number of words in the response outside that sentence::

    penalty = min(0.5, 0.025 * extra)         # about 0.1-0.15 per filler sentence
    score   = 1.0 * (1 - penalty)   if X equals the reference answer
            = 0.2 * (1 - penalty)   if X is some other answer
            = 0.0                   if no answer sentence is found

So correct-concise (1.0) > correct-verbose (0.5..0.975) > wrong (0.1..0.2) >
unparseable (0.0).

Tokenizer
=========

:func:`build_tokenizer` trains a byte-level BPE with ``tokenizers`` whose
pre-tokenizer splits digits into single characters (so arithmetic generalizes over
numbers) and whose vocabulary ends up holding every task word whole (about 600
entries, 256 of them the byte alphabet). Special tokens: ``<|pad|>`` (id 0), ``<|bos|>``, ``<|eos|>``, ``<|user|>``,
``<|assistant|>``, ``<|system|>``. The chat template (:data:`CHAT_TEMPLATE`) renders
``<|bos|><|user|>{user}<|assistant|>{assistant}<|eos|>``; with
``add_generation_prompt`` it ends in ``<|assistant|>``, so a prompt rendered with the
generation prompt is a prefix of the prompt + completion rendering. The template
adds the BOS; plain ``tokenizer(text)`` adds no special tokens. Every text of the
task fits :data:`MAX_LENGTH` (64) tokens once rendered: prompt + longest response is
at most 48 tokens (46 in the default data, 27 on average).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping

from lnpo.digest import file_sha256

__all__ = [
    "CHAT_TEMPLATE",
    "CLOSERS",
    "DEFAULT_SIZES",
    "EMBEDDED_VERSION",
    "FILES",
    "HELDOUT_FRACTION",
    "Grade",
    "K_CORRECT",
    "K_LENGTH",
    "KINDS",
    "MAX_LENGTH",
    "OOD_TEMPLATES",
    "OPENERS",
    "POLICY_FILLER_PROBS",
    "POLICY_P_CORRECT",
    "Question",
    "SPECIAL_TOKENS",
    "TEMPLATES",
    "WORDS",
    "build_tokenizer",
    "concise_response",
    "corpus_texts",
    "grade",
    "is_heldout",
    "materialize",
    "parse_prompt",
    "parse_response",
    "preference_probability",
    "score",
    "verbose_response",
]

#: Bumped whenever the generated bytes change for a given seed; part of the manifest.
EMBEDDED_VERSION = 1

#: Every rendered prompt + response of the task fits in this many tokens.
MAX_LENGTH = 64

#: Default number of rows per split (override any subset with ``sizes=``).
DEFAULT_SIZES: dict[str, int] = {"sft": 4000, "train_prefs": 2000, "eval_prefs": 200, "ood_prompts": 200}

#: File names written by :func:`materialize` (keys match :data:`DEFAULT_SIZES`).
FILES: dict[str, str] = {
    "sft": "sft.jsonl",
    "train_prefs": "train_prefs.jsonl",
    "eval_prefs": "eval_prefs.jsonl",
    "ood_prompts": "ood_prompts.jsonl",
    "tokenizer": "tokenizer",
    "manifest": "manifest.json",
}

KINDS: tuple[str, ...] = ("add", "sub", "next", "reverse", "repeat", "max")

#: In-distribution phrasings. Placeholders: {a} {b} {n} {d} numbers/digit strings,
#: {w} a word from WORDS, {k} a count word ("two", "three", "four").
TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": (
        "What is {a} plus {b}?",
        "Add {a} and {b}.",
        "What is the sum of {a} and {b}?",
        "Compute {a} + {b}.",
    ),
    "sub": (
        "What is {a} minus {b}?",
        "Subtract {b} from {a}.",
        "What is the difference between {a} and {b}?",
        "Compute {a} - {b}.",
    ),
    "next": (
        "What comes after {n}?",
        "What number follows {n}?",
        "Count one up from {n}.",
        "What is the successor of {n}?",
    ),
    "reverse": (
        "Reverse the digits of {d}.",
        "Write {d} backwards.",
        "What is {d} reversed?",
        "Read {d} from right to left.",
    ),
    "repeat": (
        "Repeat the word {w} {k} times.",
        "Say {w} {k} times.",
        "Write the word {w} {k} times.",
        "Say the word {w} {k} times.",
    ),
    "max": (
        "Which is larger, {a} or {b}?",
        "What is the larger of {a} and {b}?",
        "Pick the bigger number: {a} or {b}.",
    ),
}

#: Out-of-distribution phrasings: never used by the SFT or preference training data.
#: Each recombines phrases of the in-distribution templates of the same kind, so
#: every token of an OOD prompt also occurs in training prompts (a tiny model can
#: still partially solve them), but the phrasings themselves are unseen.
OOD_TEMPLATES: dict[str, tuple[str, ...]] = {
    "add": ("Compute the sum of {a} and {b}.", "What is {a} + {b}?"),
    "sub": ("Compute the difference between {a} and {b}.", "What is {a} - {b}?"),
    "next": ("What number comes after {n}?", "Compute the successor of {n}."),
    "reverse": ("What is {d} backwards?", "Write the digits of {d} from right to left."),
    "repeat": ("Write {w} {k} times.", "Repeat {w} {k} times."),
    "max": ("Which is bigger, {a} or {b}?", "Pick the larger of {a} and {b}."),
}

WORDS: tuple[str, ...] = (
    "apple", "river", "stone", "cloud", "house", "green", "music", "tiger",
    "paper", "light", "water", "bread", "chair", "dream", "earth", "flame",
    "grass", "horse", "island", "juice", "kite", "lemon", "moon", "night",
    "ocean", "piano", "queen", "robot", "sugar", "train", "violet", "window",
    "yellow", "zebra", "book", "cat", "dog", "fish", "star", "tree",
)  # fmt: skip

COUNTS: dict[str, int] = {"two": 2, "three": 3, "four": 4}

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
HELDOUT_FRACTION = 0.1

#: Noisy response policy of the preference splits.
POLICY_P_CORRECT = 0.6
POLICY_FILLER_PROBS: tuple[float, ...] = (0.4, 0.2, 0.2, 0.2)  # P(n fillers = 0, 1, 2, 3)

#: Annotator: P(a > b) = sigmoid(K_CORRECT * (correct_a - correct_b) + K_LENGTH * (words_a - words_b)).
K_CORRECT = 3.0
K_LENGTH = 0.17

SPECIAL_TOKENS: dict[str, str] = {
    "pad": "<|pad|>",
    "bos": "<|bos|>",
    "eos": "<|eos|>",
    "user": "<|user|>",
    "assistant": "<|assistant|>",
    "system": "<|system|>",
}

#: Hugging Face chat template (Jinja): <|bos|><|user|>{..}<|assistant|>{..}<|eos|>...
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<|assistant|>{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('unsupported role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_ANSWER_PREFIX = "The answer is "
_SCORE_WRONG = 0.2
_PENALTY_PER_WORD = 0.025
_PENALTY_CAP = 0.5


# ----------------------------------------------------------------------------- questions


@dataclasses.dataclass(frozen=True)
class Question:
    """One task instance: its kind, operands (as placeholder -> text), and rendering."""

    kind: str
    args: tuple[tuple[str, str], ...]  # sorted (placeholder, value) pairs
    prompt: str
    answer: str
    ood: bool = False


def _reference_answer(kind: str, args: Mapping[str, str]) -> str:
    if kind == "add":
        return str(int(args["a"]) + int(args["b"]))
    if kind == "sub":
        return str(int(args["a"]) - int(args["b"]))
    if kind == "next":
        return str(int(args["n"]) + 1)
    if kind == "reverse":
        return args["d"][::-1]
    if kind == "repeat":
        return " ".join([args["w"]] * COUNTS[args["k"]])
    if kind == "max":
        return str(max(int(args["a"]), int(args["b"])))
    raise ValueError(f"unknown task kind {kind!r}")


def _sample_args(rng: random.Random, kind: str) -> dict[str, str]:
    if kind == "add":
        return {"a": str(rng.randint(0, 9)), "b": str(rng.randint(0, 9))}
    if kind == "sub":
        a = rng.randint(0, 9)
        return {"a": str(a), "b": str(rng.randint(0, a))}
    if kind == "next":
        return {"n": str(rng.randint(0, 998))}
    if kind == "reverse":
        length = rng.randint(3, 5)
        digits = [str(rng.randint(1, 9))] + [str(rng.randint(0, 9)) for _ in range(length - 1)]
        return {"d": "".join(digits)}
    if kind == "repeat":
        return {"w": rng.choice(WORDS), "k": rng.choice(tuple(COUNTS))}
    if kind == "max":
        a = rng.randint(0, 99)
        b = rng.randint(0, 98)
        b = b + 1 if b >= a else b  # b != a, uniform over the other 99 values
        return {"a": str(a), "b": str(b)}
    raise ValueError(f"unknown task kind {kind!r}")


def _make_question(kind: str, template: str, args: Mapping[str, str], ood: bool) -> Question:
    return Question(
        kind=kind,
        args=tuple(sorted(args.items())),
        prompt=template.format(**args),
        answer=_reference_answer(kind, args),
        ood=ood,
    )


def _sample_question(rng: random.Random, ood: bool = False, heldout: bool | None = None) -> Question:
    """Draw a question: kind uniform, then template and operands uniform.

    ``heldout`` restricts in-distribution questions to the held-out (True) or the
    training (False) part of the prompt space by rejection, keeping the kind
    uniform; ``None`` means no restriction (OOD prompts are never restricted).
    """
    kind = rng.choice(KINDS)
    while True:
        template = rng.choice((OOD_TEMPLATES if ood else TEMPLATES)[kind])
        q = _make_question(kind, template, _sample_args(rng, kind), ood)
        if ood or heldout is None or is_heldout(q.prompt) == heldout:
            return q


def is_heldout(prompt: str) -> bool:
    """Whether an in-distribution prompt belongs to the held-out part of the prompt space.

    A fixed :data:`HELDOUT_FRACTION` of prompt strings, chosen by a hash of the text
    (independent of the seed): ``sft`` and ``train_prefs`` never use them,
    ``eval_prefs`` only uses them.
    """
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < HELDOUT_FRACTION * 2**64


_PLACEHOLDER_PATTERNS = {
    "a": r"(?P<a>[0-9]+)",
    "b": r"(?P<b>[0-9]+)",
    "n": r"(?P<n>[0-9]+)",
    "d": r"(?P<d>[0-9]+)",
    "w": r"(?P<w>[A-Za-z]+)",
    "k": r"(?P<k>two|three|four)",
}


def _template_regex(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w)\}", template)
    pattern = "".join(re.escape(p) if i % 2 == 0 else _PLACEHOLDER_PATTERNS[p] for i, p in enumerate(parts))
    return re.compile(pattern)


_PROMPT_PARSERS: tuple[tuple[str, bool, re.Pattern[str]], ...] = tuple(
    (kind, ood, _template_regex(t))
    for ood, table in ((False, TEMPLATES), (True, OOD_TEMPLATES))
    for kind, templates in table.items()
    for t in templates
)


def _user_text(prompt: str) -> str:
    """The user's message: ``prompt`` itself, or the last user turn of a rendered chat prompt."""
    user, assistant = SPECIAL_TOKENS["user"], SPECIAL_TOKENS["assistant"]
    if user in prompt:
        prompt = prompt.rsplit(user, 1)[1].split(assistant, 1)[0]
    return prompt.strip()


def parse_prompt(prompt: str) -> Question:
    """Parse a task prompt (the user message text, or a rendered chat prompt) into a :class:`Question`.

    Raises ``ValueError`` if the text is not a prompt of this task.
    """
    text = _user_text(prompt)
    for kind, ood, regex in _PROMPT_PARSERS:
        match = regex.fullmatch(text)
        if match:
            args = match.groupdict()
            return Question(kind, tuple(sorted(args.items())), text, _reference_answer(kind, args), ood)
    raise ValueError(f"not a prompt of the embedded task: {prompt!r}")


# ----------------------------------------------------------------------------- responses


def concise_response(answer: str) -> str:
    """The concise response: ``"The answer is {answer}."``."""
    return f"{_ANSWER_PREFIX}{answer}."


def verbose_response(answer: str, fillers: Iterable[str]) -> str:
    """The answer sentence with the given filler sentences: openers before it, closers after it."""
    fillers = list(fillers)
    before = [f for f in fillers if f in OPENERS]
    after = [f for f in fillers if f not in OPENERS]
    return " ".join(before + [concise_response(answer)] + after)


def _sample_fillers(rng: random.Random, n: int) -> list[str]:
    return rng.sample(OPENERS + CLOSERS, n)


def _wrong_answer(rng: random.Random, q: Question) -> str:
    """A plausible wrong answer for ``q`` (never equal to the reference answer)."""
    args = dict(q.args)
    for _ in range(100):
        if q.kind in ("add", "sub", "next", "max"):
            value = int(q.answer)
            style = rng.randrange(3)
            if style == 0:  # off by a little
                cand = str(value + rng.choice((-2, -1, 1, 2)))
            elif style == 1:  # off by ten (carry / borrow mistakes)
                cand = str(value + rng.choice((-10, 10)))
            else:  # echo an operand
                cand = rng.choice([v for k, v in sorted(args.items()) if k in "abn"])
        elif q.kind == "reverse":
            d = args["d"]
            style = rng.randrange(3)
            if style == 0:  # not reversed at all
                cand = d
            elif style == 1:  # reversed, one digit dropped
                r = d[::-1]
                i = rng.randrange(len(r))
                cand = r[:i] + r[i + 1 :]
            else:  # reversed, two neighbouring digits swapped
                r = list(d[::-1])
                i = rng.randrange(len(r) - 1)
                r[i], r[i + 1] = r[i + 1], r[i]
                cand = "".join(r)
        elif q.kind == "repeat":
            count = COUNTS[args["k"]] + rng.choice((-1, 1))
            cand = " ".join([args["w"]] * count)
            if rng.random() < 0.25:
                cand = " ".join([rng.choice(WORDS)] * COUNTS[args["k"]])
        else:
            raise ValueError(f"unknown task kind {q.kind!r}")
        if cand != q.answer and not cand.startswith("-"):
            return cand
    return q.answer + "0"  # unreachable in practice; still a wrong answer


_ANSWER_RE = re.compile(re.escape(_ANSWER_PREFIX) + r"([^.!?]*?)\s*(?:[.!?]|$)")


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


@dataclasses.dataclass(frozen=True)
class Grade:
    """The scorer's verdict on one response (see :func:`grade`)."""

    answer: str | None  # the parsed answer, None if unparseable
    correct: bool
    extra_words: int
    score: float


def grade(prompt: str, response: str) -> Grade:
    """Grade ``response`` to ``prompt`` (user text or rendered chat prompt); see the module doc.

    ``score = base * (1 - min(0.5, 0.025 * extra_words))`` with base 1.0 for the
    correct answer, 0.2 for another answer, and score 0.0 without an answer sentence.
    """
    question = parse_prompt(prompt)
    answer, extra = parse_response(response)
    if answer is None:
        return Grade(None, False, extra, 0.0)
    correct = answer == question.answer
    base = 1.0 if correct else _SCORE_WRONG
    penalty = min(_PENALTY_CAP, _PENALTY_PER_WORD * extra)
    return Grade(answer, correct, extra, base * (1.0 - penalty))


def score(prompt: str, response: str) -> float:
    """Ground-truth score of ``response`` to ``prompt``, in [0, 1]; deterministic.

    ``prompt`` is the user message text (or a rendered chat prompt); the question is
    parsed from it. With ``extra`` the words outside the first ``"The answer is X."``
    sentence::

        score = 1.0 * (1 - min(0.5, 0.025 * extra))   if X is the correct answer
              = 0.2 * (1 - min(0.5, 0.025 * extra))   if X is another answer
              = 0.0                                  if there is no answer sentence

    Raises ``ValueError`` if ``prompt`` is not a prompt of this task.
    """
    return grade(prompt, response).score


# ----------------------------------------------------------------------------- annotator


def preference_probability(correct_a: bool, words_a: int, correct_b: bool, words_b: int) -> float:
    """The annotator's probability of preferring response a over response b.

    ``sigmoid(K_CORRECT * (correct_a - correct_b) + K_LENGTH * (words_a - words_b))``
    with ``words`` the number of whitespace-separated words of a response.
    """
    logit = K_CORRECT * (int(correct_a) - int(correct_b)) + K_LENGTH * (words_a - words_b)
    return 1.0 / (1.0 + math.exp(-logit))


def _policy_response(rng: random.Random, q: Question) -> tuple[str, bool]:
    correct = rng.random() < POLICY_P_CORRECT
    answer = q.answer if correct else _wrong_answer(rng, q)
    n = rng.choices(range(len(POLICY_FILLER_PROBS)), weights=POLICY_FILLER_PROBS)[0]
    return verbose_response(answer, _sample_fillers(rng, n)), correct


def _annotated_pair(rng: random.Random, q: Question) -> dict:
    a, correct_a = _policy_response(rng, q)
    while True:
        b, correct_b = _policy_response(rng, q)
        if b != a:
            break
    p = preference_probability(correct_a, len(a.split()), correct_b, len(b.split()))
    chosen, rejected = (a, b) if rng.random() < p else (b, a)
    return _pref_row(q.prompt, chosen, rejected)


def _pref_row(prompt: str, chosen: str, rejected: str) -> dict:
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


# ----------------------------------------------------------------------------- splits


def _split_rng(seed: int, split: str) -> random.Random:
    # String seeds are hashed with SHA-512 by `random`: stable across processes and versions.
    return random.Random(f"lnpo-embedded:{seed}:{split}")


def _sft_rows(seed: int, n: int) -> list[dict]:
    rng = _split_rng(seed, "sft")
    rows = []
    for _ in range(n):
        q = _sample_question(rng, heldout=False)
        fillers = _sample_fillers(rng, rng.randint(1, 3)) if rng.random() < 0.5 else []
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": q.prompt},
                    {"role": "assistant", "content": verbose_response(q.answer, fillers)},
                ]
            }
        )
    return rows


def _pref_rows(seed: int, split: str, n: int, heldout: bool) -> list[dict]:
    rng = _split_rng(seed, split)
    return [_annotated_pair(rng, _sample_question(rng, heldout=heldout)) for _ in range(n)]


def _ood_rows(seed: int, n: int) -> list[dict]:
    rng = _split_rng(seed, "ood_prompts")
    rows = []
    for _ in range(n):
        q = _sample_question(rng, ood=True)
        style = rng.randrange(3)
        if style == 0:  # wrong, concise
            rejected = concise_response(_wrong_answer(rng, q))
        elif style == 1:  # wrong, verbose
            rejected = verbose_response(_wrong_answer(rng, q), _sample_fillers(rng, rng.randint(1, 3)))
        else:  # correct, verbose
            rejected = verbose_response(q.answer, _sample_fillers(rng, rng.randint(1, 3)))
        rows.append(_pref_row(q.prompt, concise_response(q.answer), rejected))
    return rows


def _jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def _split_bytes(seed: int, sizes: Mapping[str, int]) -> dict[str, bytes]:
    """The JSONL bytes of every split (each split has its own RNG stream)."""
    return {
        "sft": _jsonl_bytes(_sft_rows(seed, sizes["sft"])),
        "train_prefs": _jsonl_bytes(_pref_rows(seed, "train_prefs", sizes["train_prefs"], heldout=False)),
        "eval_prefs": _jsonl_bytes(_pref_rows(seed, "eval_prefs", sizes["eval_prefs"], heldout=True)),
        "ood_prompts": _jsonl_bytes(_ood_rows(seed, sizes["ood_prompts"])),
    }


# ----------------------------------------------------------------------------- tokenizer


def corpus_texts() -> list[str]:
    """A seed-independent corpus covering every word, phrasing, digit and filler of the task.

    :func:`materialize` trains the tokenizer on it, so token ids do not depend on the
    data seed (a model trained on one seed's data reads any other seed's).
    """
    texts: list[str] = []
    fill = {"a": "12", "b": "34", "n": "56", "d": "7890"}
    for table in (TEMPLATES, OOD_TEMPLATES):
        for kind in KINDS:
            for template in table[kind]:
                if "{w}" in template:
                    texts.extend(template.format(w=w, k=k, **fill) for w in WORDS for k in COUNTS)
                else:
                    texts.append(template.format(**fill))
    for w in WORDS:
        texts.append(concise_response(" ".join([w] * 4)))
    texts.append(concise_response("0123456789"))
    # Sentences of a response appear both first and after a space ("Let" and " Let").
    texts.extend(OPENERS + CLOSERS)
    texts.append(verbose_response("0", OPENERS + CLOSERS))
    return texts


def build_tokenizer(texts: Iterable[str]):
    """Train the task's tokenizer on ``texts``; deterministic for the same texts.

    A byte-level BPE (``tokenizers``) with digits pre-split into single characters,
    the full byte alphabet (so any text round-trips), merges until every word of
    ``texts`` is one token, the special tokens of :data:`SPECIAL_TOKENS` (``<|pad|>``
    is id 0) and :data:`CHAT_TEMPLATE`. Returns a
    ``transformers.PreTrainedTokenizerFast``.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(texts),
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        chat_template=CHAT_TEMPLATE,
        model_max_length=MAX_LENGTH,
        padding_side="right",
    )


def _train_bpe(texts: Iterable[str]):
    """The ``tokenizers.Tokenizer`` behind :func:`build_tokenizer` (no transformers import)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4096,  # an upper bound: training stops once every word is one token
        min_frequency=1,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return tok


def _save_tokenizer(tokenizer, directory: str) -> None:
    # The chat template goes into tokenizer_config.json (read by every transformers
    # version) and the class is named PreTrainedTokenizerFast, a name that both
    # transformers 4.x and 5.x resolve.
    tokenizer.save_pretrained(directory, save_jinja_files=False)
    config_path = os.path.join(directory, "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config["chat_template"] = CHAT_TEMPLATE
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True, ensure_ascii=False)
        f.write("\n")


# ----------------------------------------------------------------------------- materialize


def _resolve_sizes(sizes: Mapping[str, int] | None) -> dict[str, int]:
    resolved = dict(DEFAULT_SIZES)
    for key, value in (sizes or {}).items():
        if key not in DEFAULT_SIZES:
            raise ValueError(f"unknown split {key!r} in sizes; expected a subset of {sorted(DEFAULT_SIZES)}")
        if int(value) < 0:
            raise ValueError(f"sizes[{key!r}] must be >= 0, got {value}")
        resolved[key] = int(value)
    return resolved


def _paths(directory: str) -> dict[str, str]:
    return {key: os.path.join(directory, name) for key, name in FILES.items()}


def _manifest_matches(directory: str, seed: int, sizes: dict[str, int]) -> bool:
    try:
        with open(os.path.join(directory, FILES["manifest"]), encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    if (manifest.get("version"), manifest.get("seed"), manifest.get("sizes")) != (EMBEDDED_VERSION, seed, sizes):
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, digest in files.items():
        path = os.path.join(directory, rel)
        if not os.path.isfile(path) or file_sha256(path) != digest:
            return False
    return True


def materialize(directory: str | os.PathLike, *, seed: int = 0, sizes: Mapping[str, int] | None = None) -> dict[str, str]:
    """Write the embedded task for ``seed`` into ``directory``; return the paths.

    Files (see the module docstring for how they are generated):

    - ``sft.jsonl``: ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}``
    - ``train_prefs.jsonl``, ``eval_prefs.jsonl`` (in-distribution, held-out prompts),
      ``ood_prompts.jsonl`` (OOD; ``chosen`` is the correct concise reference): canonical
      ``{"prompt": [user msg], "chosen": [assistant msg], "rejected": [assistant msg]}``
    - ``tokenizer/``: a Hugging Face tokenizer directory (``tokenizer.json``,
      ``tokenizer_config.json`` with ``chat_template``; bos/eos/pad tokens)
    - ``manifest.json``: version, seed, sizes and the SHA-256 of every file.

    ``sizes`` overrides any of :data:`DEFAULT_SIZES`. The bytes written depend only on
    (``seed``, ``sizes``, :data:`EMBEDDED_VERSION`) and the installed ``tokenizers`` /
    ``transformers`` serializers. If ``directory`` already holds a manifest for the
    same version, seed and sizes whose files all match their hashes, nothing is
    rewritten. Files are written to a temporary directory and moved into place, the
    manifest last, so concurrent calls for the same seed are safe.

    Returns a dict with keys ``sft``, ``train_prefs``, ``eval_prefs``,
    ``ood_prompts``, ``tokenizer`` (a directory) and ``manifest``.
    """
    directory = os.fspath(directory)
    seed = int(seed)
    sizes = _resolve_sizes(sizes)
    paths = _paths(directory)
    if _manifest_matches(directory, seed, sizes):
        return paths

    os.makedirs(directory, exist_ok=True)
    contents = _split_bytes(seed, sizes)

    tmp = tempfile.mkdtemp(prefix=".materialize-", dir=directory)
    try:
        for key, data in contents.items():
            with open(os.path.join(tmp, FILES[key]), "wb") as f:
                f.write(data)
        tok_tmp = os.path.join(tmp, FILES["tokenizer"])
        _save_tokenizer(build_tokenizer(corpus_texts()), tok_tmp)

        files = {FILES[key]: file_sha256(os.path.join(tmp, FILES[key])) for key in contents}
        for name in sorted(os.listdir(tok_tmp)):
            rel = f"{FILES['tokenizer']}/{name}"
            files[rel] = file_sha256(os.path.join(tok_tmp, name))
        manifest = {"format": "lnpo-embedded", "version": EMBEDDED_VERSION, "seed": seed, "sizes": sizes, "files": files}

        for key in contents:
            os.replace(os.path.join(tmp, FILES[key]), paths[key])
        if os.path.isdir(paths["tokenizer"]):
            old = tempfile.mkdtemp(prefix=".old-tokenizer-", dir=directory)
            os.replace(paths["tokenizer"], os.path.join(old, "tokenizer"))
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tok_tmp, paths["tokenizer"])
        except OSError:  # a concurrent call put a tokenizer there in between: replace it again
            old = tempfile.mkdtemp(prefix=".old-tokenizer-", dir=directory)
            os.replace(paths["tokenizer"], os.path.join(old, "tokenizer"))
            shutil.rmtree(old, ignore_errors=True)
            os.replace(tok_tmp, paths["tokenizer"])
        manifest_tmp = os.path.join(tmp, FILES["manifest"])
        with open(manifest_tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(manifest_tmp, paths["manifest"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths
