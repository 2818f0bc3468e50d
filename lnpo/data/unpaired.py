"""Unpaired (thumbs up / thumbs down) data for KTO: load, convert, tokenize, and lay out as pairs.

Canonical unpaired rows are TRL's unpaired format: ``prompt``, ``completion``
(message lists, as :func:`lnpo.data.load_sft`'s), ``label`` (bool: desirable)
and ``source_row``. They come from

- :func:`load_unpaired`: a source with ``prompt``, ``completion``, ``label``
  columns (any source :func:`lnpo.data.load_sft` reads; the prompt / completion
  checks and counted skips are load_sft's, a label that is not a bool is skipped
  as ``invalid_label``), or
- :func:`unpair_preferences`: canonical preference rows, each pair giving a
  desirable row (its chosen) and an undesirable one (its rejected), in TRL's
  ``unpair_preference_dataset`` order (every chosen row, then every rejected row).

:func:`tokenize_unpaired` gives ``prompt_ids``, ``completion_ids``, ``label``
(and the ``*_len`` and ``source_row`` columns); :func:`kto_pairs` turns that into
the pairs form every layout, iterator and the reference cache take, so an
unpaired batch needs nothing of its own downstream:

=================  ===========================================================
``prompt_ids``     the example's prompt x
``chosen_ids``     its completion y (the one the loss is about)
``rejected_ids``   its *KL completion* y': the completion of the next example
                   (dataset order, cyclic) with another prompt, truncated to fit
                   ``max_len`` after x: KTO's reference point estimates
                   KL(pi(y'|x) || pi_ref(y'|x)) from these mismatched pairs, as
                   TRL's ``KL_completion_ids`` (which also shifts by one)
``label``          1 desirable, 0 undesirable; the iterator hands it to the step
                   as ``pair_label`` and the objective reads ``PairLogps.label``
=================  ===========================================================

The KL completion is fixed per example (a column, not drawn per batch), so the
reference cache can hold its reference log-probs like any rejected response's.
"""

from __future__ import annotations

import datasets
import numpy as np

from lnpo.data import files, sources, tokenize
from lnpo.data.validate import LoadReport, RowIssue, code_hash, fingerprint_of, strict_error

LABEL_SKIP = "invalid_label"


def _labels(source, *, split: str, label_column: str) -> list:
    """The label value of every row of ``source`` (None where absent or unreadable), by source row."""
    ds, _ = files.open_source(source, split=split)
    if files.RAW in ds.column_names:  # JSON read as raw values: parse the label only
        out = []
        for raw in ds[files.RAW]:
            try:
                row = files.parse_line(bytes(raw))
            except RowIssue:
                row = None
            out.append(row.get(label_column) if isinstance(row, dict) else None)
        return out
    if label_column not in ds.column_names:
        return [None] * len(ds)
    return list(ds[label_column])


def load_unpaired(source, *, split: str = "train", strict: bool = False, label: str = "label",
                  **columns: str) -> tuple[datasets.Dataset, LoadReport]:
    """Load TRL's unpaired format (``prompt``, ``completion``, ``label``) as canonical unpaired rows.

    ``label``: the source's label column; ``columns``: load_sft's mapping of ``prompt`` /
    ``completion``. Returns ``(dataset, report)``; rows load_sft skips are counted by its
    reasons, a label that is not a bool (missing, null, 0/1, "yes") as ``invalid_label``
    (strict: ``ValueError("<source> row <i>: ...")``).
    """
    rows, report = sources.load_sft(source, schema="prompt_completion", split=split, strict=strict, **columns)
    labels = _labels(source, split=split, label_column=label)
    values = [labels[r] if r < len(labels) else None for r in rows["source_row"]]
    bad = [i for i, v in enumerate(values) if not isinstance(v, bool)]
    if strict and bad:
        row = rows["source_row"][bad[0]]
        raise strict_error(report.source, row, f"{label} must be true or false, got {values[bad[0]]!r}")
    keep = np.setdiff1d(np.arange(len(rows)), bad)
    rows = rows.select(keep).add_column("label", [bool(values[i]) for i in keep])
    skipped = dict(report.skipped)
    if bad:
        skipped[LABEL_SKIP] = skipped.get(LABEL_SKIP, 0) + len(bad)
    return rows, LoadReport(kept=len(rows), skipped=dict(sorted(skipped.items())), source=report.source,
                            adjusted=report.adjusted)


def _unpair_batch(batch: dict) -> dict:
    n = len(batch["chosen"])
    return {"prompt": batch["prompt"] + batch["prompt"], "completion": batch["chosen"] + batch["rejected"],
            "label": [True] * n + [False] * n, "source_row": batch["source_row"] + batch["source_row"]}


def unpair_preferences(pairs: datasets.Dataset) -> datasets.Dataset:
    """Canonical preference rows -> canonical unpaired rows: every pair's (prompt, chosen, True),
    then every pair's (prompt, rejected, False), as TRL's ``unpair_preference_dataset`` in one batch."""
    if "source_row" not in pairs.column_names:
        pairs = pairs.add_column("source_row", list(range(len(pairs))))
    return pairs.map(_unpair_batch, batched=True, batch_size=None, remove_columns=pairs.column_names,
                     new_fingerprint=fingerprint_of(pairs._fingerprint, "unpair", code_hash(__file__)))


def tokenize_unpaired(rows: datasets.Dataset, tokenizer, *, max_len: int, source: str = "<Dataset>",
                      **kwargs) -> tuple[datasets.Dataset, LoadReport]:
    """Tokenize canonical unpaired rows as :func:`lnpo.data.tokenize_sft` does (same contract, same
    counted skips), keeping ``label`` and the original ``source_row``."""
    position = rows.select_columns(["prompt", "completion"]).add_column("source_row", list(range(len(rows))))
    tokens, report = tokenize.tokenize_sft(position, tokenizer, max_len=max_len, source=source, **kwargs)
    at = np.asarray(tokens["source_row"], np.int64)
    labels = np.asarray(rows["label"], bool)[at]
    original = np.asarray(rows["source_row"], np.int64)[at] if "source_row" in rows.column_names else at
    tokens = tokens.remove_columns(["source_row"]).add_column("source_row", original.tolist())
    return tokens.add_column("label", labels.tolist()), report


def kl_partners(prompts: list) -> np.ndarray:
    """For each example, the index of the next one (cyclically) whose prompt differs (itself if none does)."""
    n = len(prompts)
    out = np.arange(n)
    for i in range(n):
        for step in range(1, n):
            j = (i + step) % n
            if prompts[j] != prompts[i]:
                out[i] = j
                break
    return out


def kto_pairs(tokens: datasets.Dataset, *, max_len: int) -> datasets.Dataset:
    """Tokenized unpaired rows -> the pairs form of the module docstring (``chosen_ids`` = the completion,
    ``rejected_ids`` = the KL completion, at most ``max_len - prompt_len`` tokens; ``label`` int32)."""
    prompts = [tuple(p) for p in tokens["prompt_ids"]]
    completions = tokens["completion_ids"]
    partner = kl_partners(prompts)

    def convert(batch, indices):
        kl = [completions[partner[i]][: max(max_len - len(p), 1)] for i, p in zip(indices, batch["prompt_ids"])]
        return {"prompt_ids": batch["prompt_ids"], "chosen_ids": batch["completion_ids"], "rejected_ids": kl,
                "prompt_len": [len(p) for p in batch["prompt_ids"]], "chosen_len": [len(c) for c in
                                                                                  batch["completion_ids"]],
                "rejected_len": [len(c) for c in kl], "label": [int(v) for v in batch["label"]],
                "source_row": batch["source_row"]}

    features = datasets.Features({"prompt_ids": [datasets.Value("int32")], "chosen_ids": [datasets.Value("int32")],
                                  "rejected_ids": [datasets.Value("int32")], "prompt_len": datasets.Value("int32"),
                                  "chosen_len": datasets.Value("int32"), "rejected_len": datasets.Value("int32"),
                                  "label": datasets.Value("int32"), "source_row": datasets.Value("int64")})
    return tokens.map(convert, batched=True, with_indices=True, remove_columns=tokens.column_names,
                      features=features,
                      new_fingerprint=fingerprint_of(tokens._fingerprint, "kto_pairs", max_len, code_hash(__file__)))
