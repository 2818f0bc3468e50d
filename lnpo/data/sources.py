"""Loading preference and SFT data through ``datasets``, and schema adapters to the canonical rows.

Public entry points:

- :func:`load_preferences` -> ``(Dataset, LoadReport)`` with columns
  ``prompt``, ``chosen``, ``rejected`` (lists of ``{"role", "content"}`` messages)
  and ``source_row`` (the row's 0-based index in the loaded split; for a JSON Lines
  file its 0-based line index, so line ``source_row + 1`` as an editor counts);
- :func:`load_sft` -> ``(Dataset, LoadReport)`` with ``prompt``, ``completion``
  and ``source_row``;
- :func:`validate_preferences` / :func:`validate_sft`: the same validation for a
  ``Dataset`` that is already in the canonical format.

Sources (``source`` argument):

- a ``datasets.Dataset`` or ``DatasetDict`` (the split is picked from a dict), or
  a list of row dicts (``split`` only slices these: ``"train[:10]"``);
- a local file: ``.json`` / ``.jsonl`` (JSON Lines or a JSON array), ``.parquet``,
  ``.arrow``, ``.csv``, optionally compressed (``.gz``, ``.bz2``, ``.xz``, ``.zst``);
  the file is the requested split (``split`` may carry a
  slice, e.g. ``"train[:100]"``);
- a local directory: a ``Dataset.save_to_disk`` directory, or a directory of data
  files laid out as ``datasets`` infers splits (``train.jsonl``, ``data/test-*.parquet``, ...);
- a builder name with ``data_files`` (``load_preferences("json", data_files=[...])``);
- otherwise a Hugging Face Hub dataset name (``name`` = its config, ``revision``),
  which needs network access. Dataset loading scripts are never run.

JSON files are read by :mod:`lnpo.data.files`, line by line with Python's ``json``:
every line of a JSON Lines file is a row, so a line that is not UTF-8, not JSON, not an
object, nested too deeply, or blank is skipped and counted (``undecodable_text``,
``malformed_json``, ``blank_line``) and never costs another row; a column may mix text
and message lists from row to row. An empty source is a :class:`~lnpo.errors.DataError`.

Caching: the adapter pass (the adapters are :mod:`lnpo.data.adapters`) is a ``Dataset.map``
fingerprinted from the input dataset, the schema, the column mapping, the options and the code
of this module, the adapters, :mod:`lnpo.data.files` and :mod:`lnpo.data.validate`, so a
file-backed source is adapted once.

Schemas (``schema=``; ``"auto"`` detects from the columns, after the column mapping):

=====================  =====================================================================
``generic``            ``prompt`` (text or messages), ``chosen`` / ``rejected`` (text or
                       messages); an optional ``system`` text column. A completion that
                       repeats the prompt messages at its start has them removed.
``conversational``     ``chosen`` / ``rejected``: whole conversations (message lists); the
                       prompt is their shared prefix, which must end where both continue
                       with an assistant message.
``hh_rlhf``            ``chosen`` / ``rejected``: Anthropic HH-RLHF transcripts
                       ``"\\n\\nHuman: ... \\n\\nAssistant: ..."``; the prompt is the
                       transcript before the final assistant turn (it must be the same in
                       both), the completions are the final assistant turns.
``pku_saferlhf``       ``prompt``, ``response_0``, ``response_1`` and ``better_response_id``
                       or ``safer_response_id`` (``pku_preference="better"`` or ``"safer"``).
``ultrafeedback``      UltraFeedback-binarized: ``prompt``, ``chosen`` / ``rejected`` whole
                       conversations, ``score_chosen`` / ``score_rejected``; handled as
                       ``conversational`` (the ``prompt`` column is not needed).
=====================  =====================================================================

SFT schemas: ``messages`` (a conversation ending with the assistant message that
is the completion; everything before it is the prompt) and ``prompt_completion``
(``prompt`` and ``completion``, each text or messages).

Auto-detection order (preferences): ``response_0`` + ``response_1`` + a label
column -> ``pku_saferlhf``; ``chosen`` + ``rejected`` + ``prompt`` +
``score_chosen`` + ``score_rejected`` -> ``ultrafeedback``; ``chosen`` +
``rejected`` + ``prompt`` -> ``generic``; ``chosen`` + ``rejected`` -> ``hh_rlhf``
when their values are text, ``conversational`` when they are message lists.
SFT: ``messages`` -> ``messages``; ``prompt`` + ``completion`` -> ``prompt_completion``.

Column mapping: keyword arguments name the source column of a canonical input
column, e.g. ``load_preferences("qa.parquet", prompt="question", chosen="good",
rejected="bad")``. A mapped column that does not exist is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np

from lnpo.data import adapters as adapters_module
from lnpo.data import files as files_module
from lnpo.data import validate as validate_module
from lnpo.data.adapters import PKU_PREFERENCES, PREFERENCE_ADAPTERS, SFT_ADAPTERS, column_value
from lnpo.data.files import LINE, RAW, open_source, parse_line
from lnpo.data.validate import (
    LoadReport,
    RowIssue,
    check_preference_row,
    check_sft_row,
    code_hash,
    fingerprint_of,
    make_report,
    reasons_of,
    strict_error,
)
from lnpo.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PREFERENCE_SCHEMAS = ("generic", "conversational", "hh_rlhf", "pku_saferlhf", "ultrafeedback")
SFT_SCHEMAS = ("messages", "prompt_completion")

# Canonical input columns a mapping may name.
PREFERENCE_COLUMNS = ("prompt", "chosen", "rejected", "system", "response_0", "response_1",
                      "better_response_id", "safer_response_id", "score_chosen", "score_rejected")
SFT_COLUMNS = ("prompt", "completion", "messages", "system")

_MESSAGE = {"role": datasets.Value("string"), "content": datasets.Value("string")}
PREFERENCE_FEATURES = datasets.Features(
    {"prompt": [_MESSAGE], "chosen": [_MESSAGE], "rejected": [_MESSAGE], "source_row": datasets.Value("int64")}
)
SFT_FEATURES = datasets.Features(
    {"prompt": [_MESSAGE], "completion": [_MESSAGE], "source_row": datasets.Value("int64")}
)

_REASON, _DETAIL = "_lnpo_reason", "_lnpo_detail"
_SAMPLE_ROWS = 64  # parsed rows that schema detection looks at
_SAMPLE_SCAN = 4096  # raw rows scanned for them at most


class _Adapter:
    """The ``Dataset.map`` function: raw row -> canonical row + skip reason (picklable, hashable)."""

    def __init__(self, kind: str, schema: str, columns: dict[str, str], options: dict, raw: bool):
        self.kind, self.schema, self.columns, self.options, self.raw = kind, schema, columns, options, raw

    def __call__(self, row: dict, index: int) -> dict:
        empty = ("prompt", "chosen", "rejected") if self.kind == "preference" else ("prompt", "completion")
        if LINE in row:  # a JSON Lines file: the row is its line
            index = row[LINE] - 1
        try:
            if self.raw:
                row = parse_line(row[RAW])
            if self.kind == "preference":
                out = check_preference_row(PREFERENCE_ADAPTERS[self.schema](row, self.columns, self.options))
            else:
                out = check_sft_row(SFT_ADAPTERS[self.schema](row, self.columns, self.options))
            out.update({_REASON: "", _DETAIL: ""})
        except RowIssue as issue:
            out = {key: [] for key in empty}
            out.update({_REASON: issue.reason, _DETAIL: issue.detail})
        out["source_row"] = index
        return out


# ----------------------------------------------------------------------------- schema detection


def _sample_rows(ds: datasets.Dataset, raw: bool) -> list[dict]:
    """Up to ``_SAMPLE_ROWS`` rows from the start of ``ds`` (raw rows: the first that parse)."""
    if not raw:
        batch = ds[:min(len(ds), _SAMPLE_ROWS)]
        return [{key: batch[key][i] for key in batch} for i in range(len(next(iter(batch.values()), [])))]
    parsed = []
    for raw_line in ds.select_columns([RAW])[:min(len(ds), _SAMPLE_SCAN)][RAW]:
        try:
            parsed.append(parse_line(raw_line))
        except RowIssue:
            continue
        if len(parsed) == _SAMPLE_ROWS:
            break
    return parsed


def _canonical_columns(available: set[str], mapping: dict[str, str], allowed: Sequence[str], source: str) -> set[str]:
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise TypeError(f"unknown column mapping key(s) {unknown}; allowed: {', '.join(allowed)}")
    for key, column in mapping.items():
        if column not in available:
            raise DataError(f"{source}: column mapping {key}={column!r} names a column that does not exist "
                             f"(columns: {', '.join(sorted(available))})")
    mapped_sources = set(mapping.values())
    present = {key for key in allowed if key in mapping or (key in available and key not in mapped_sources)}
    return present


def _first_value(rows: list[dict], columns: Mapping[str, str], key: str) -> Any:
    for row in rows:
        value = column_value(row, columns, key)
        if value is not None:
            return value
    return None


def detect_preference_schema(present: set[str], rows: list[dict], columns: Mapping[str, str],
                             source: str = "the data") -> str:
    """The preference schema of data with canonical columns ``present`` (see the module docstring).

    ``rows`` are sample raw rows and ``columns`` maps canonical names to their source
    columns; they tell text transcripts (``hh_rlhf``) from conversations.
    """
    if {"response_0", "response_1"} <= present and present & {"better_response_id", "safer_response_id"}:
        return "pku_saferlhf"
    if {"chosen", "rejected"} <= present:
        if {"prompt", "score_chosen", "score_rejected"} <= present:
            return "ultrafeedback"
        if "prompt" in present:
            return "generic"
        value = _first_value(rows, columns, "chosen")
        if isinstance(value, (str, bytes)):
            return "hh_rlhf"
        if isinstance(value, (list, tuple)):
            return "conversational"
    raise DataError(f"{source}: cannot detect the preference schema from columns {sorted(present)}; set the schema "
                    f"(data.schema: one of {', '.join(PREFERENCE_SCHEMAS)}) and/or a column mapping "
                    f"(e.g. data.columns.prompt=question)")


def detect_sft_schema(present: set[str], source: str = "the data") -> str:
    """The SFT schema of data with canonical columns ``present``."""
    if "messages" in present:
        return "messages"
    if {"prompt", "completion"} <= present:
        return "prompt_completion"
    raise DataError(f"{source}: cannot detect the SFT schema from columns {sorted(present)}; set the schema "
                    f"(data.schema: one of {', '.join(SFT_SCHEMAS)}) and/or a column mapping "
                    f"(e.g. data.columns.messages=conversations)")


_REQUIRED = {
    "generic": ("prompt", "chosen", "rejected"),
    "conversational": ("chosen", "rejected"),
    "hh_rlhf": ("chosen", "rejected"),
    "pku_saferlhf": ("prompt", "response_0", "response_1"),
    "ultrafeedback": ("chosen", "rejected"),
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
}


# ----------------------------------------------------------------------------- the pass


def _finish(ds: datasets.Dataset, source: str, strict: bool, *, lines: bool, schema: str,
            detected: bool) -> tuple[datasets.Dataset, LoadReport]:
    """Count the skip reasons, raise in strict mode, drop skipped rows and the bookkeeping columns."""
    reasons = reasons_of(ds, _REASON)
    bad = np.flatnonzero(reasons != "")
    if strict and len(bad):
        first = ds[int(bad[0])]
        raise strict_error(source, first["source_row"], first[_DETAIL], lines=lines)
    report = make_report(source, reasons.tolist(), schema=schema, schema_detected=detected)
    if len(bad):
        ds = ds.select(np.flatnonzero(reasons == ""))
    ds = ds.remove_columns([_REASON, _DETAIL])
    log.log(logging.WARNING if report.skipped else logging.INFO, "%s", report.summary())
    return ds, report


def _load(kind: str, source, *, schema, split, strict, name, data_files, revision, cache_dir, num_proc,
          options, columns, display: str | None = None) -> tuple[datasets.Dataset, LoadReport]:
    ds, opened = open_source(source, split=split, name=name, data_files=data_files, revision=revision,
                             cache_dir=cache_dir, num_proc=num_proc)
    display = display or opened
    if len(ds) == 0:
        raise DataError(f"{display}: no rows (empty data)")
    raw = RAW in ds.column_names
    lines = LINE in ds.column_names
    rows = _sample_rows(ds, raw)
    available = set().union(*(r.keys() for r in rows)) if raw else set(ds.column_names)
    allowed = PREFERENCE_COLUMNS if kind == "preference" else SFT_COLUMNS
    schemas = PREFERENCE_SCHEMAS if kind == "preference" else SFT_SCHEMAS
    present = _canonical_columns(available, columns, allowed, display)
    resolved = {key: columns.get(key, key) for key in sorted(present)}
    detected = schema == "auto"
    unparsed = raw and not rows  # no line is a JSON object: every line is skipped with its reason
    if detected and unparsed:
        schema = PREFERENCE_SCHEMAS[0] if kind == "preference" else SFT_SCHEMAS[-1]
    elif detected:
        schema = (detect_preference_schema(present, rows, resolved, display) if kind == "preference"
                  else detect_sft_schema(present, display))
    elif schema not in schemas:
        raise ConfigError(f"unknown {kind} schema {schema!r}; expected 'auto' or one of {', '.join(schemas)}")
    missing = [key for key in _REQUIRED[schema] if key not in present]
    if schema == "pku_saferlhf" and PKU_PREFERENCES[options["pku_preference"]] not in present:
        missing.append(PKU_PREFERENCES[options["pku_preference"]])
    if missing and rows:
        raise DataError(f"{display}: schema {schema!r} needs column(s) {missing}; columns: {sorted(available)}")
    log.info("%s: %s schema %r, %d rows", display, kind, schema, len(ds))
    adapter = _Adapter(kind, schema, resolved, dict(options), raw)
    features = PREFERENCE_FEATURES if kind == "preference" else SFT_FEATURES
    features = datasets.Features({**features, _REASON: datasets.Value("string"), _DETAIL: datasets.Value("string")})
    code = code_hash(__file__, adapters_module.__file__, validate_module.__file__, files_module.__file__)
    fingerprint = fingerprint_of(ds._fingerprint, code, kind, schema, resolved, options, raw)
    ds = ds.map(adapter, with_indices=True, remove_columns=ds.column_names, features=features,
                num_proc=num_proc if num_proc and num_proc > 1 and len(ds) >= 2 * num_proc else None,
                new_fingerprint=fingerprint, desc=f"{kind} rows ({schema})")
    return _finish(ds, display, strict, lines=lines, schema="" if unparsed else schema, detected=detected)


def load_preferences(source, *, schema: str = "auto", split: str = "train", strict: bool = False,
                     name: str | None = None, data_files=None, revision: str | None = None,
                     cache_dir: str | None = None, num_proc: int | None = None, pku_preference: str = "better",
                     **columns: str) -> tuple[datasets.Dataset, LoadReport]:
    """Load preference pairs from ``source`` as canonical rows.

    Args:
        source: see the module docstring (Dataset, local file or directory, builder
            name with ``data_files``, or Hub name).
        schema: ``"auto"`` or one of :data:`PREFERENCE_SCHEMAS`.
        split: the split to load (may carry a slice: ``"train[:1000]"``).
        strict: raise ``ValueError("<source> row <i>: <detail>")`` at the first
            malformed row instead of skipping it.
        name, revision: Hub dataset config name and revision.
        data_files: data files for a builder name (``source="json"``).
        cache_dir: ``datasets`` cache directory (default: the ``datasets`` default).
        num_proc: processes for loading and the adapter ``map`` (default: one).
        pku_preference: PKU-SafeRLHF label, ``"better"`` (``better_response_id``) or
            ``"safer"`` (``safer_response_id``).
        **columns: column mapping, canonical input name -> source column (keys:
            :data:`PREFERENCE_COLUMNS`).

    Returns:
        ``(dataset, report)``: a ``datasets.Dataset`` with columns ``prompt``,
        ``chosen``, ``rejected`` (lists of ``{"role", "content"}``; chosen and
        rejected hold only completion turns, starting with an assistant message)
        and ``source_row`` (0-based index of the row in the loaded split), in
        source order; and a :class:`~lnpo.data.validate.LoadReport` of the rows
        kept and skipped by reason.
    """
    if pku_preference not in PKU_PREFERENCES:
        raise ConfigError(f"pku_preference must be one of {', '.join(PKU_PREFERENCES)}, got {pku_preference!r}")
    return _load("preference", source, schema=schema, split=split, strict=strict, name=name,
                 data_files=data_files, revision=revision, cache_dir=cache_dir, num_proc=num_proc,
                 options={"pku_preference": pku_preference}, columns=columns)


def load_sft(source, *, schema: str = "auto", split: str = "train", strict: bool = False,
             name: str | None = None, data_files=None, revision: str | None = None,
             cache_dir: str | None = None, num_proc: int | None = None,
             **columns: str) -> tuple[datasets.Dataset, LoadReport]:
    """Load SFT examples from ``source`` as canonical rows ``{"prompt", "completion", "source_row"}``.

    Same arguments as :func:`load_preferences`; ``schema`` is ``"auto"`` or one of
    :data:`SFT_SCHEMAS`, mapping keys are :data:`SFT_COLUMNS`. For ``messages``
    the completion is the final (assistant) message and the prompt everything
    before it.
    """
    return _load("sft", source, schema=schema, split=split, strict=strict, name=name,
                 data_files=data_files, revision=revision, cache_dir=cache_dir, num_proc=num_proc,
                 options={}, columns=columns)


def validate_preferences(dataset: datasets.Dataset, *, strict: bool = False, source: str = "<Dataset>",
                         num_proc: int | None = None) -> tuple[datasets.Dataset, LoadReport]:
    """Validate a ``Dataset`` already in the canonical preference format (the ``generic`` schema).

    Returns ``(dataset, report)`` as :func:`load_preferences`; ``source`` names the
    data in the report and in strict-mode errors.
    """
    return _load("preference", dataset, schema="generic", split="train", strict=strict, name=None,
                 data_files=None, revision=None, cache_dir=None, num_proc=num_proc,
                 options={"pku_preference": "better"}, columns={}, display=source)


def validate_sft(dataset: datasets.Dataset, *, strict: bool = False, source: str = "<Dataset>",
                 num_proc: int | None = None) -> tuple[datasets.Dataset, LoadReport]:
    """Validate a ``Dataset`` already in the canonical SFT format (the ``prompt_completion`` schema)."""
    return _load("sft", dataset, schema="prompt_completion", split="train", strict=strict, name=None,
                 data_files=None, revision=None, cache_dir=None, num_proc=num_proc, options={}, columns={},
                 display=source)
