"""Tokenization of canonical rows with the tokenizer's chat template, truncation and EOS handling.

:func:`tokenize_preferences` turns canonical preference rows (``prompt``,
``chosen``, ``rejected`` message lists; see :mod:`lnpo.data.sources`) into

=================  ===============  ===================================================
column             type             meaning
=================  ===============  ===================================================
``prompt_ids``     list[int32]      the prompt, ending with the generation prompt
``chosen_ids``     list[int32]      the chosen completion's tokens (the loss tokens)
``rejected_ids``   list[int32]      the rejected completion's tokens
``prompt_len``     int32            ``len(prompt_ids)`` (and likewise below)
``chosen_len``     int32
``rejected_len``   int32
``source_row``     int64            the row's index in the loaded split (a JSON Lines file: line - 1)
=================  ===============  ===================================================

and :func:`tokenize_sft` turns ``prompt`` / ``completion`` rows into
``prompt_ids``, ``completion_ids``, ``prompt_len``, ``completion_len``, ``source_row``.

Token contract
==============

- Chat template: ``prompt_ids = apply_chat_template(prompt, add_generation_prompt=True)``;
  a completion's tokens are ``apply_chat_template(prompt + completion)`` minus that
  prefix. When a template breaks the prefix property for a row (the full
  conversation does not start with the prompt's tokens: e.g. templates that render
  the last assistant turn differently, or drop reasoning from history), the
  completion falls back to ``tokenizer(completion text)`` (the contents of the
  completion messages joined with ``"\\n"``) plus EOS; counted as
  ``template_fallback`` in the report's ``adjusted`` counts.
- No chat template (or ``plain_template`` given, which takes precedence): the
  :class:`PlainTemplate` (a string is taken as its ``user`` format, e.g.
  ``"User: {content}\nAssistant: "``) renders the prompt text and the completion text, which are
  tokenized separately (so the prefix property holds by construction); the BOS
  token is prepended to the prompt when ``PlainTemplate.add_bos`` and the tokenizer
  has one.
- EOS: ``tokenizer.eos_token_id`` is appended to a completion unless the completion
  already contains it (a template that ends assistant turns with EOS) or
  ``add_eos=False``. A templated completion ends at its last EOS: tokens the template
  writes after it (ChatML's ``"\n"`` after ``<|im_end|>``) are dropped, since sampling
  stops at EOS and never produces them.
- Control tokens: with ``sanitize_control_tokens=True`` (default) special-token text
  inside the data (say a literal ``"<|im_end|>"`` in a response) is encoded as
  ordinary text, so only the template writes control tokens. This uses
  ``apply_chat_template(sanitize_control_tokens=True)`` where the installed
  ``transformers`` supports it (otherwise the template's own behaviour applies) and
  ``split_special_tokens=True`` for the plain template.

Lengths and truncation
======================

``max_prompt_len`` (default ``max_len - 1``) must be < ``max_len``.

- ``truncation="keep_end"``: a prompt longer than ``max_prompt_len`` keeps its last
  tokens (and its first token when that is BOS); then each completion is cut to
  ``max_len - len(prompt_ids)`` tokens (keeping its start; the cut drops the EOS).
  Counted as ``truncated_prompt`` / ``truncated_response`` (``adjusted``).
- ``truncation="drop"``: such rows are skipped as ``prompt_too_long`` (the prompt
  exceeds ``max_prompt_len``) or ``too_long`` (prompt + a completion exceeds ``max_len``).

Rows whose chosen and rejected tokens are equal after this are skipped as
``identical_tokens``; a template that raises on a row skips it as
``template_error``; a prompt that renders to no tokens is ``empty_prompt``; a
completion that renders to no tokens is ``empty_response``. ``strict=True``
raises :class:`~lnpo.errors.DataError` ``"<source> row <source_row>: <detail>"`` instead of skipping
(``"<source> line <source_row + 1>: ..."`` when ``source`` is a JSON Lines file).

Caching: the ``Dataset.map`` is fingerprinted from the input dataset's fingerprint,
the tokenizer (its serialized backend, chat template and special tokens), the
settings and the code of this module, so a re-run with the same inputs reuses the ``datasets`` cache files of
a file-backed dataset. ``num_proc > 1`` tokenizes in parallel processes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np

from lnpo.data import validate as validate_module
from lnpo.data.files import rows_are_lines
from lnpo.data.validate import LoadReport, RowIssue, code_hash, fingerprint_of, make_report, reasons_of, strict_error
from lnpo.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TRUNCATIONS = ("keep_end", "drop")
_REASON, _DETAIL, _ADJUST = "_lnpo_reason", "_lnpo_detail", "_lnpo_adjust"


@dataclasses.dataclass(frozen=True)
class PlainTemplate:
    """A text template for tokenizers without a chat template.

    Each prompt message is rendered with the format string of its role
    (``{content}``, and ``{role}`` for ``other``), concatenated. The ``user`` format
    ends with the cue the model continues from, so a prompt ending with a user
    message ends with that cue. A completion is rendered the same way except that
    its last message is its bare content (EOS is appended as a token id).

    The default renders ``[system s, user q]`` -> ``"s\\n\\nUser: q\\nAssistant: "``
    and the completion ``[assistant a]`` -> ``"a"``.
    """

    system: str = "{content}\n\n"
    user: str = "User: {content}\nAssistant: "
    assistant: str = "{content}\n"
    other: str = "{role}: {content}\n"
    add_bos: bool = True

    def __post_init__(self):
        for name in ("system", "user", "assistant", "other"):
            if "{content}" not in getattr(self, name):
                raise ValueError(f"PlainTemplate.{name} must contain '{{content}}', got {getattr(self, name)!r}")

    def _render(self, message: Mapping[str, str]) -> str:
        fmt = {"system": self.system, "user": self.user, "assistant": self.assistant}.get(message["role"], self.other)
        return fmt.format(role=message["role"], content=message["content"])

    def render_prompt(self, messages: Sequence[Mapping[str, str]]) -> str:
        return "".join(self._render(m) for m in messages)

    def render_completion(self, messages: Sequence[Mapping[str, str]]) -> str:
        return "".join(self._render(m) for m in messages[:-1]) + messages[-1]["content"]


def template_for(tokenizer, chat_template: PlainTemplate | str | None) -> PlainTemplate | None:
    """The template setting ``data.chat_template`` (training and evaluation alike) -> ``plain_template``.

    ``None`` or ``""``: the tokenizer's own chat template (``None`` is returned); a tokenizer without
    one is a :class:`~lnpo.errors.ConfigError` naming the field. ``"plain"``: the default
    :class:`PlainTemplate`. Any other string: ``PlainTemplate(user=<it>)`` (it must contain
    ``{content}``). A :class:`PlainTemplate` is returned as is.
    """
    from lnpo.errors import ConfigError

    if isinstance(chat_template, PlainTemplate):
        return chat_template
    if not chat_template:
        if getattr(tokenizer, "chat_template", None):
            return None
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ConfigError(f"config.data.chat_template: the tokenizer {name!r} has no chat template (usual for base "
                          "models); set data.chat_template=plain (lnpo.evaluate: --chat_template=plain) or a "
                          "user-turn format containing '{content}'")
    if chat_template == "plain":
        return PlainTemplate()
    try:
        return PlainTemplate(user=chat_template)
    except ValueError as e:
        raise ConfigError(f"config.data.chat_template: {e}") from None


@dataclasses.dataclass(frozen=True)
class TokenizeConfig:
    """Tokenization settings (see the module docstring)."""

    max_len: int
    max_prompt_len: int | None = None
    truncation: str = "keep_end"
    plain_template: PlainTemplate | str | None = None
    add_eos: bool = True
    sanitize_control_tokens: bool = True

    def __post_init__(self):
        if isinstance(self.plain_template, str):  # "User: {content}\nAssistant: " = the user-turn format
            object.__setattr__(self, "plain_template", PlainTemplate(user=self.plain_template))
        if not isinstance(self.max_len, int) or self.max_len < 2:
            raise ConfigError(f"max_len must be an integer >= 2, got {self.max_len!r}")
        if self.max_prompt_len is not None and not 1 <= self.max_prompt_len < self.max_len:
            raise ConfigError(f"max_prompt_len must be in [1, max_len={self.max_len}), got {self.max_prompt_len!r}")
        if self.truncation not in TRUNCATIONS:
            raise ConfigError(f"truncation must be one of {', '.join(TRUNCATIONS)}, got {self.truncation!r}")

    @property
    def prompt_budget(self) -> int:
        return self.max_len - 1 if self.max_prompt_len is None else self.max_prompt_len


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of what determines the tokenizer's output (vocab, merges, template, special tokens)."""
    h = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode("utf-8"))
    else:  # a slow tokenizer: its vocab
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode("utf-8"))
    template = getattr(tokenizer, "chat_template", None)
    h.update(json.dumps(template, sort_keys=True).encode("utf-8"))
    special = {"cls": type(tokenizer).__name__, "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
               "special": sorted(map(str, tokenizer.all_special_tokens))}
    h.update(json.dumps(special, sort_keys=True).encode("utf-8"))
    return h.hexdigest()[:16]


@functools.cache
def _supports_sanitize(cls) -> bool:
    try:
        return "sanitize_control_tokens" in inspect.signature(cls.apply_chat_template).parameters
    except (TypeError, ValueError):
        return False


class Encoder:
    """Encodes canonical rows with one tokenizer and :class:`TokenizeConfig` (picklable for ``num_proc``)."""

    def __init__(self, tokenizer, config: TokenizeConfig):
        self.tokenizer = tokenizer
        self.config = config
        self.use_chat = config.plain_template is None
        if self.use_chat and not getattr(tokenizer, "chat_template", None):
            template_for(tokenizer, None)  # raises: the ConfigError naming data.chat_template
        self.eos_id = tokenizer.eos_token_id
        self.bos_id = tokenizer.bos_token_id
        if config.add_eos and self.eos_id is None:
            log.warning("the tokenizer has no EOS token: completions get no EOS")

    # --- raw encodings

    def _chat(self, messages: list, add_generation_prompt: bool) -> list[int]:
        kwargs = {}
        if self.config.sanitize_control_tokens and _supports_sanitize(type(self.tokenizer)):
            kwargs["sanitize_control_tokens"] = True
        try:
            out = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                     tokenize=True, return_dict=False, **kwargs)
        except Exception as e:  # jinja TemplateError / raise_exception(...) in the template, ValueError, ...
            raise RowIssue("template_error", f"chat template error: {type(e).__name__}: {e}") from None
        if isinstance(out, Mapping):
            out = out["input_ids"]
        return [int(t) for t in out]

    def _text(self, text: str) -> list[int]:
        kwargs = {"split_special_tokens": True} if self.config.sanitize_control_tokens else {}
        return [int(t) for t in self.tokenizer(text, add_special_tokens=False, **kwargs)["input_ids"]]

    def _end_at_eos(self, ids: list[int]) -> list[int]:
        """Drop what a template writes after the completion's last EOS (ChatML's newline after ``<|im_end|>``):
        sampling stops at EOS, so those tokens are never generated."""
        if self.eos_id is None or self.eos_id not in ids:
            return ids
        return ids[: len(ids) - ids[::-1].index(self.eos_id)]

    def _with_eos(self, ids: list[int]) -> list[int]:
        if self.config.add_eos and self.eos_id is not None and self.eos_id not in ids:
            ids = ids + [self.eos_id]
        return ids

    def prompt_ids(self, prompt: list) -> list[int]:
        """The prompt's tokens, ending with the generation prompt (untruncated)."""
        if self.use_chat:
            ids = self._chat(prompt, add_generation_prompt=True)
        else:
            ids = self._text(self.config.plain_template.render_prompt(prompt))
            if self.config.plain_template.add_bos and self.bos_id is not None:
                ids = [self.bos_id] + ids
        if not ids:
            raise RowIssue("empty_prompt", "the prompt has no tokens")
        return ids

    def completion_ids(self, prompt: list, prompt_ids: list[int], completion: list, what: str
                       ) -> tuple[list[int], bool]:
        """``(tokens, fell_back)``: a completion's tokens after ``prompt_ids`` (untruncated)."""
        fell_back = False
        if self.use_chat:
            full = self._chat(prompt + completion, add_generation_prompt=False)
            if full[: len(prompt_ids)] == prompt_ids:
                ids = self._end_at_eos(full[len(prompt_ids):])
            else:
                ids = self._text("\n".join(m["content"] for m in completion))
                fell_back = True
        else:
            ids = self._text(self.config.plain_template.render_completion(completion))
        ids = self._with_eos(ids)
        if not ids or ids == [self.eos_id]:
            raise RowIssue("empty_response", f"{what} has no tokens")
        return ids, fell_back

    # --- truncation

    def _fit_prompt(self, ids: list[int], adjust: set) -> list[int]:
        budget = self.config.prompt_budget
        if len(ids) <= budget:
            return ids
        if self.config.truncation == "drop":
            raise RowIssue("prompt_too_long", f"prompt has {len(ids)} tokens > max_prompt_len {budget}")
        adjust.add("truncated_prompt")
        if self.bos_id is not None and ids[0] == self.bos_id and budget > 1:
            return [ids[0]] + ids[len(ids) - (budget - 1):]
        return ids[len(ids) - budget:]

    def _fit_completion(self, prompt_len: int, ids: list[int], what: str, adjust: set) -> list[int]:
        room = self.config.max_len - prompt_len
        if len(ids) <= room:
            return ids
        if self.config.truncation == "drop":
            raise RowIssue("too_long", f"prompt + {what} has {prompt_len + len(ids)} tokens > max_len "
                                       f"{self.config.max_len}")
        adjust.add("truncated_response")
        return ids[:room]

    # --- rows

    def encode_pair(self, row: Mapping[str, Any]) -> tuple[dict, set]:
        """``({"prompt_ids", "chosen_ids", "rejected_ids"}, adjustments)`` of one canonical pair.

        Raises :class:`RowIssue` for a row to skip.
        """
        adjust: set = set()
        full_prompt = self.prompt_ids(row["prompt"])
        out = {}
        completions = {}
        for key in ("chosen", "rejected"):
            ids, fell_back = self.completion_ids(row["prompt"], full_prompt, row[key], key)
            if fell_back:
                adjust.add("template_fallback")
            completions[key] = ids
        prompt = self._fit_prompt(full_prompt, adjust)
        out["prompt_ids"] = prompt
        for key in ("chosen", "rejected"):
            out[f"{key}_ids"] = self._fit_completion(len(prompt), completions[key], key, adjust)
        if out["chosen_ids"] == out["rejected_ids"]:
            raise RowIssue("identical_tokens", "chosen and rejected have the same tokens"
                           + (" after truncation" if "truncated_response" in adjust else ""))
        return out, adjust

    def encode_sft(self, row: Mapping[str, Any]) -> tuple[dict, set]:
        """``({"prompt_ids", "completion_ids"}, adjustments)`` of one canonical SFT row; may raise :class:`RowIssue`."""
        adjust: set = set()
        full_prompt = self.prompt_ids(row["prompt"])
        ids, fell_back = self.completion_ids(row["prompt"], full_prompt, row["completion"], "completion")
        if fell_back:
            adjust.add("template_fallback")
        prompt = self._fit_prompt(full_prompt, adjust)
        return {"prompt_ids": prompt,
                "completion_ids": self._fit_completion(len(prompt), ids, "completion", adjust)}, adjust


class _MapFn:
    """The ``Dataset.map`` function (batched): canonical rows -> token columns + skip reason."""

    def __init__(self, encoder: Encoder, kind: str):
        self.encoder, self.kind = encoder, kind

    def __call__(self, batch: dict, indices: list[int]) -> dict:
        keys = ("prompt", "chosen", "rejected") if self.kind == "preference" else ("prompt", "completion")
        id_cols = [f"{k}_ids" for k in keys]
        out: dict[str, list] = {c: [] for c in id_cols + [f"{k}_len" for k in keys]}
        out.update({_REASON: [], _DETAIL: [], _ADJUST: [], "source_row": []})
        rows = batch.get("source_row", indices)
        for i in range(len(indices)):
            row = {k: batch[k][i] for k in keys}
            try:
                enc, adjust = (self.encoder.encode_pair(row) if self.kind == "preference"
                               else self.encoder.encode_sft(row))
                reason, detail = "", ""
            except RowIssue as issue:
                enc, adjust = {c: [] for c in id_cols}, set()
                reason, detail = issue.reason, issue.detail
            for k in keys:
                out[f"{k}_ids"].append(enc[f"{k}_ids"])
                out[f"{k}_len"].append(len(enc[f"{k}_ids"]))
            out[_REASON].append(reason)
            out[_DETAIL].append(detail)
            out[_ADJUST].append(sorted(adjust))
            out["source_row"].append(int(rows[i]))
        return out


def _features(kind: str) -> datasets.Features:
    keys = ("prompt", "chosen", "rejected") if kind == "preference" else ("prompt", "completion")
    feats = {}
    for k in keys:
        feats[f"{k}_ids"] = [datasets.Value("int32")]
    for k in keys:
        feats[f"{k}_len"] = datasets.Value("int32")
    feats.update({"source_row": datasets.Value("int64"), _REASON: datasets.Value("string"),
                  _DETAIL: datasets.Value("string"), _ADJUST: [datasets.Value("string")]})
    return datasets.Features(feats)


def _tokenize(kind: str, dataset: datasets.Dataset, tokenizer, config: TokenizeConfig, *, num_proc, strict,
              source) -> tuple[datasets.Dataset, LoadReport]:
    needed = ("prompt", "chosen", "rejected") if kind == "preference" else ("prompt", "completion")
    missing = [c for c in needed if c not in dataset.column_names]
    if missing:
        raise DataError(f"{source}: not a canonical {kind} dataset, missing column(s) {missing} "
                         f"(columns: {dataset.column_names}); load it with lnpo.data.load_"
                         f"{'preferences' if kind == 'preference' else 'sft'}")
    encoder = Encoder(tokenizer, config)
    fingerprint = fingerprint_of(code_hash(__file__, validate_module.__file__), kind, dataset._fingerprint,
                                 tokenizer_fingerprint(tokenizer), repr(config))
    use_procs = num_proc if num_proc and num_proc > 1 and len(dataset) >= 2 * num_proc else None
    out = dataset.map(
        _MapFn(encoder, kind), batched=True, batch_size=256, with_indices=True,
        remove_columns=dataset.column_names, features=_features(kind), num_proc=use_procs,
        new_fingerprint=fingerprint, desc=f"tokenize {kind}s",
    )
    reasons = reasons_of(out, _REASON)
    bad = np.flatnonzero(reasons != "")
    if strict and len(bad):
        first = out[int(bad[0])]
        raise strict_error(source, first["source_row"], first[_DETAIL], lines=rows_are_lines(source))
    adjusted = Counter(a for row in out[_ADJUST] for a in row) if len(out) else Counter()
    report = make_report(source, reasons.tolist(), adjusted=adjusted)
    if len(bad):
        out = out.select(np.flatnonzero(reasons == ""))
    out = out.remove_columns([_REASON, _DETAIL, _ADJUST])
    log.log(logging.WARNING if report.skipped else logging.INFO, "tokenized %s", report.summary())
    return out, report


def tokenize_preferences(dataset: datasets.Dataset, tokenizer, *, max_len: int, max_prompt_len: int | None = None,
                         truncation: str = "keep_end", plain_template: PlainTemplate | str | None = None,
                         add_eos: bool = True, sanitize_control_tokens: bool = True, num_proc: int | None = None,
                         strict: bool = False, source: str = "<Dataset>") -> tuple[datasets.Dataset, LoadReport]:
    """Tokenize canonical preference pairs (see the module docstring for the contract).

    Returns ``(tokenized dataset, report)``; the report counts rows skipped by reason
    (``prompt_too_long``, ``too_long``, ``identical_tokens``, ``template_error``,
    ``empty_prompt``, ``empty_response``) and the kept rows that were adjusted
    (``truncated_prompt``, ``truncated_response``, ``template_fallback``).
    Every kept row satisfies ``prompt_len >= 1``, ``chosen_len >= 1``,
    ``rejected_len >= 1``, ``prompt_len <= max_prompt_len`` and
    ``prompt_len + max(chosen_len, rejected_len) <= max_len``.
    """
    config = TokenizeConfig(max_len=max_len, max_prompt_len=max_prompt_len, truncation=truncation,
                            plain_template=plain_template, add_eos=add_eos,
                            sanitize_control_tokens=sanitize_control_tokens)
    return _tokenize("preference", dataset, tokenizer, config, num_proc=num_proc, strict=strict, source=source)


def tokenize_sft(dataset: datasets.Dataset, tokenizer, *, max_len: int, max_prompt_len: int | None = None,
                 truncation: str = "keep_end", plain_template: PlainTemplate | str | None = None,
                 add_eos: bool = True, sanitize_control_tokens: bool = True, num_proc: int | None = None,
                 strict: bool = False, source: str = "<Dataset>") -> tuple[datasets.Dataset, LoadReport]:
    """Tokenize canonical SFT rows into ``prompt_ids`` / ``completion_ids`` (same contract as pairs)."""
    config = TokenizeConfig(max_len=max_len, max_prompt_len=max_prompt_len, truncation=truncation,
                            plain_template=plain_template, add_eos=add_eos,
                            sanitize_control_tokens=sanitize_control_tokens)
    return _tokenize("sft", dataset, tokenizer, config, num_proc=num_proc, strict=strict, source=source)
