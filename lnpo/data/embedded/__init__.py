"""The embedded default task: a tiny, offline, deterministic preference-optimization task.

It recreates, at a scale a ~1M parameter decoder learns on two CPU cores in a few
minutes, the situation "A Practical Analysis of Human Alignment with *PO" (NAACL
Findings 2025) analyses: an SFT model, preference pairs from an annotator that prefers
correct answers but also longer ones, out-of-distribution (OOD) evaluation prompts and a
programmatic ground-truth scorer. Everything is written to disk by :func:`materialize`
and read back by the project's ordinary JSONL loaders and ``transformers.AutoTokenizer``.

Two versions (``config.data.embedded_version``; docs/embedded_task.md):

- **1** (:mod:`~lnpo.data.embedded.v1`): always-correct SFT data, 6-30 token responses;
  kept byte for byte for the record.
- **2** (:mod:`~lnpo.data.embedded.v2`, the default): SFT data with 25% wrong answers,
  pairs that prefer correct (and longer) answers, explanations of 5-150 tokens.

The package by job: :mod:`~lnpo.data.embedded.task` (questions, phrasings, parsing),
:mod:`~lnpo.data.embedded.responses` (answer sentence), :mod:`~lnpo.data.embedded.v1` /
:mod:`~lnpo.data.embedded.v2` (each version's generator and annotator),
:mod:`~lnpo.data.embedded.scorer` (ground truth), :mod:`~lnpo.data.embedded.tokenizer`,
:mod:`~lnpo.data.embedded.files` (:func:`materialize`, the manifest).
"""

from __future__ import annotations

from lnpo.data.embedded.files import DEFAULT_SIZES, FILES, LATEST_VERSION, materialize
from lnpo.data.embedded.responses import (
    CLOSERS,
    OPENERS,
    concise_response,
    parse_response,
    verbose_response,
)
from lnpo.data.embedded.scorer import (
    VERSIONS,
    Grade,
    check_version,
    grade,
    score,
    scorer_spec,
    scorer_version,
)
from lnpo.data.embedded.task import (
    HELDOUT_FRACTION,
    KINDS,
    OOD_TEMPLATES,
    SPECIAL_TOKENS,
    TEMPLATES,
    WORDS,
    Question,
    is_heldout,
    make_question,
    parse_prompt,
    sample_args,
    sample_question,
    wrong_answer,
)
from lnpo.data.embedded.tokenizer import (
    CHAT_TEMPLATE,
    MAX_LENGTHS,
    build_tokenizer,
    corpus_texts,
)
from lnpo.data.embedded.v1 import (
    K_CORRECT,
    K_LENGTH,
    MAX_LENGTH,
    POLICY_FILLER_PROBS,
    POLICY_P_CORRECT,
    preference_probability,
)

#: The version a materialized directory's manifest records when none is asked for (``materialize``'s default).
EMBEDDED_VERSION = 1

__all__ = [
    "CHAT_TEMPLATE",
    "CLOSERS",
    "DEFAULT_SIZES",
    "EMBEDDED_VERSION",
    "FILES",
    "HELDOUT_FRACTION",
    "KINDS",
    "K_CORRECT",
    "K_LENGTH",
    "LATEST_VERSION",
    "MAX_LENGTH",
    "MAX_LENGTHS",
    "OOD_TEMPLATES",
    "OPENERS",
    "POLICY_FILLER_PROBS",
    "POLICY_P_CORRECT",
    "SPECIAL_TOKENS",
    "TEMPLATES",
    "VERSIONS",
    "WORDS",
    "Grade",
    "Question",
    "build_tokenizer",
    "check_version",
    "concise_response",
    "corpus_texts",
    "grade",
    "is_heldout",
    "make_question",
    "materialize",
    "parse_prompt",
    "parse_response",
    "preference_probability",
    "sample_args",
    "sample_question",
    "score",
    "scorer_spec",
    "scorer_version",
    "verbose_response",
    "wrong_answer",
]
