"""Scorers: ``Scorer.score(prompts, responses) -> np.ndarray [N] float64``.

A prompt is a list of ``{"role", "content"}`` messages or a plain string (one
user message); a response is its text. Three scorers:

- :class:`EmbeddedScorer` (spec ``"embedded"``): the embedded task's ground-truth
  :func:`lnpo.data.embedded.score` of the last user message.
- :class:`JaxRewardModelScorer` (spec ``"jax:/path"``): a reward model in Hugging
  Face ``*ForSequenceClassification`` format (a supported decoder family, or one
  trained by lnpo's reward stage) loaded with :func:`lnpo.models.from_pretrained`
  and run in JAX. The conversation ``prompt + [assistant response]`` is tokenized
  with the tokenizer's chat template exactly like training data
  (:class:`lnpo.data.tokenize.Encoder`: prompt tokens with the generation prompt,
  then the completion tokens, EOS appended if the template does not write it)
  and the score head's output at the last token is the score
  (:func:`lnpo.models.sequence_scores`).
- :class:`TorchRewardModelScorer` (spec ``"torch:/path"``; needs the
  ``torch-scorer`` extra): any ``transformers`` PyTorch
  ``AutoModelForSequenceClassification`` from a local directory, read from safetensors
  only (``use_safetensors=True``; a folder holding only ``pytorch_model.bin`` is refused,
  nothing is unpickled; ``trust_remote_code`` is never enabled). Tokenizers with a chat template get the
  rendered conversation; others (e.g. OpenAssistant's DeBERTa reward models) get
  ``(question, answer)`` text pairs.

:func:`make_scorer` builds one from its spec string.
"""

from __future__ import annotations

import abc
import functools
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from lnpo.errors import ConfigError, InputNotFound, ModelError

log = logging.getLogger(__name__)

__all__ = [
    "EmbeddedScorer",
    "JaxRewardModelScorer",
    "Scorer",
    "TorchRewardModelScorer",
    "make_scorer",
    "prompt_text",
]


def _messages(prompt: Any) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Mapping):
        return [dict(prompt)]
    return [dict(m) for m in prompt]


def prompt_text(prompt: Any) -> str:
    """The text of a prompt: the string itself, the content of a single message,
    or ``"role: content"`` lines (blank-line separated) for a multi-message prompt."""
    if isinstance(prompt, str):
        return prompt
    msgs = _messages(prompt)
    if len(msgs) == 1:
        return str(msgs[0]["content"])
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in msgs)


def _last_user(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m for m in _messages(prompt) if m.get("role") == "user"]
    if not users:
        raise ValueError(f"prompt has no user message: {prompt!r}")
    return str(users[-1]["content"])


class Scorer(abc.ABC):
    """Scores responses to prompts; higher is better."""

    #: the spec string this scorer was made from (``make_scorer(spec)``), for reports.
    spec: str = ""

    @abc.abstractmethod
    def score(self, prompts: Sequence[Any], responses: Sequence[str]) -> np.ndarray:
        """float64 ``[N]``: the score of ``responses[i]`` to ``prompts[i]``."""

    def _check(self, prompts, responses) -> None:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")


class EmbeddedScorer(Scorer):
    """The embedded task's ground-truth scorer (:func:`lnpo.data.embedded.score`) on the last user message,
    with the formula of task ``version`` (spec ``"embedded"`` = version 1, ``"embedded-v2"`` = version 2).

    Raises ``ValueError`` for a prompt that is not an embedded-task prompt.
    """

    def __init__(self, version: int = 1):
        from lnpo.data.embedded import check_version, scorer_spec

        self.version = check_version(version)
        self.spec = scorer_spec(version)

    def score(self, prompts, responses) -> np.ndarray:
        from lnpo.data.embedded import score

        self._check(prompts, responses)
        return np.asarray([score(_last_user(p), str(r), version=self.version) for p, r in zip(prompts, responses)],
                          np.float64)


def _load_tokenizer(path: str):
    from lnpo.models.preflight import load_tokenizer

    return load_tokenizer(path, field=None)


def _require_safetensors(path: str) -> None:
    """A :class:`~lnpo.errors.ModelError` unless ``path`` holds safetensors weights: lnpo never unpickles,
    so a folder with only ``pytorch_model.bin`` (or other pickle files) is refused."""
    from lnpo.errors import ModelError
    from lnpo.models.hf import INDEX_FILE, SINGLE_FILE

    if os.path.isfile(os.path.join(path, SINGLE_FILE)) or os.path.isfile(os.path.join(path, INDEX_FILE)):
        return
    pickles = sorted(f for f in os.listdir(path) if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".pkl")))
    found = f"only pickle weights ({', '.join(pickles)})" if pickles else "no weights"
    raise ModelError(f"{path}: {found}; lnpo loads reward models from safetensors only ({SINGLE_FILE} or "
                     f"{INDEX_FILE}) and never unpickles: convert the checkpoint to safetensors")


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _rm_scores(graphdef, state, ids, mask):
    from flax import nnx

    from lnpo.models import sequence_scores

    return sequence_scores(nnx.merge(graphdef, state), ids, mask)


class JaxRewardModelScorer(Scorer):
    """A ``*ForSequenceClassification`` reward model run in JAX (see the module docstring).

    path: HF directory with config.json, safetensors and the tokenizer
    (``tokenizer``: another directory or a tokenizer object).
    label: the score-head output used as the score (0 for the usual 1-label RM).
    max_length: token budget of prompt + response (default: the model's
    ``max_position_embeddings``); longer inputs lose prompt tokens from the start
    (a leading BOS is kept), and a response longer than the budget alone is cut at
    its end.
    plain_template: :class:`lnpo.data.PlainTemplate` for a tokenizer without a chat template.
    """

    def __init__(self, path: str, *, tokenizer=None, batch_size: int = 16, dtype: str = "float32", label: int = 0,
                 max_length: int | None = None, plain_template=None, mesh=None):
        from flax import nnx

        from lnpo.models import from_pretrained

        self.spec = f"jax:{path}"
        self.model = from_pretrained(path, dtype=dtype, mesh=mesh)
        c = self.model.config
        if c.num_labels <= 0:
            raise ModelError(f"{path}: not a reward model "
                             "(config.json architectures is not *ForSequenceClassification)")
        if not 0 <= label < c.num_labels:
            raise ConfigError(f"label {label} out of range for num_labels {c.num_labels}")
        if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = _load_tokenizer(os.fspath(tokenizer or path))
        self.tokenizer = tokenizer
        self.label = int(label)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length or c.max_position_embeddings)
        from lnpo.evaluate.generate import prompt_encoder

        self._encoder = prompt_encoder(tokenizer, plain_template=plain_template)
        self._graphdef, self._state = nnx.split(self.model)

    def encode(self, prompt: Any, response: str) -> list[int]:
        """Token ids of ``prompt + [assistant response]`` as the training data contract renders them."""
        from lnpo.data.validate import RowIssue

        msgs = _messages(prompt)
        try:
            p = self._encoder.prompt_ids(msgs)
            c, _ = self._encoder.completion_ids(msgs, p, [{"role": "assistant", "content": str(response)}], "response")
        except RowIssue as issue:
            raise ValueError(f"cannot render prompt + response for scoring: {issue.detail}") from None
        budget = self.max_length
        if len(c) >= budget:
            return c[:budget]
        if len(p) + len(c) > budget:
            keep = budget - len(c)
            bos = self.tokenizer.bos_token_id
            p = (([p[0]] + p[len(p) - keep + 1:]) if (bos is not None and p[0] == bos and keep > 1)
                 else p[len(p) - keep:])
        return p + c

    def score(self, prompts, responses) -> np.ndarray:
        from lnpo.evaluate.generate import bucket_length

        self._check(prompts, responses)
        seqs = [self.encode(p, r) for p, r in zip(prompts, responses)]
        n = len(seqs)
        out = np.zeros(n, np.float64)
        if n == 0:
            return out
        order = sorted(range(n), key=lambda i: len(seqs[i]))
        B = min(self.batch_size, n)
        for start in range(0, n, B):
            idx = order[start:start + B]
            T = bucket_length(max(len(seqs[i]) for i in idx))
            ids = np.zeros((B, T), np.int32)
            mask = np.zeros((B, T), np.int32)
            for b, i in enumerate(idx):
                ids[b, : len(seqs[i])] = seqs[i]
                mask[b, : len(seqs[i])] = 1
            mask[len(idx):, 0] = 1  # filler rows: one token, discarded
            s = np.asarray(jax.device_get(_rm_scores(self._graphdef, self._state, ids, mask)), np.float64)
            if s.ndim == 2:
                s = s[:, self.label]
            for b, i in enumerate(idx):
                out[i] = s[b]
        return out


class TorchRewardModelScorer(Scorer):
    """Any ``transformers`` PyTorch sequence-classification reward model from a local directory.

    Input format (``input_format``): ``"chat"`` renders ``prompt + [assistant
    response]`` with the tokenizer's chat template (as text, then tokenized without
    adding special tokens again); ``"pair"`` passes ``(prompt_text(prompt),
    response)`` as a text pair (OpenAssistant's DeBERTa reward models);
    ``"auto"`` picks ``"chat"`` when the tokenizer has a chat template, else
    ``"pair"``. The score is ``logits[:, label]``. Never runs remote code.
    """

    def __init__(self, path: str, *, batch_size: int = 8, device: str = "cpu", label: int = 0,
                 max_length: int = 512, input_format: str = "auto", torch_dtype: str = "float32"):
        try:
            import torch
            from transformers import AutoModelForSequenceClassification
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("the torch scorer needs PyTorch: pip install 'lnpo[torch-scorer]'") from e
        if input_format not in ("auto", "chat", "pair"):
            raise ConfigError(f"input_format must be auto, chat or pair, got {input_format!r}")
        self.spec = f"torch:{path}"
        self.torch = torch
        _require_safetensors(path)
        self.tokenizer = _load_tokenizer(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, trust_remote_code=False, use_safetensors=True, dtype=getattr(torch, torch_dtype)).to(device).eval()
        if input_format == "auto":
            input_format = "chat" if getattr(self.tokenizer, "chat_template", None) else "pair"
        self.input_format = input_format
        self.device, self.label, self.max_length = device, int(label), int(max_length)
        pad = self.tokenizer.pad_token_id
        if self.model.config.pad_token_id is None and pad is not None:
            self.model.config.pad_token_id = pad
        self.batch_size = int(batch_size) if self.model.config.pad_token_id is not None else 1

    def _batch(self, prompts, responses):
        tok = self.tokenizer
        if self.input_format == "pair":
            return tok([prompt_text(p) for p in prompts], [str(r) for r in responses], padding=True,
                       truncation=True, max_length=self.max_length, return_tensors="pt")
        texts = [tok.apply_chat_template(_messages(p) + [{"role": "assistant", "content": str(r)}], tokenize=False)
                 for p, r in zip(prompts, responses)]
        return tok(texts, padding=True, truncation=True, max_length=self.max_length, add_special_tokens=False,
                   return_tensors="pt")

    def score(self, prompts, responses) -> np.ndarray:
        self._check(prompts, responses)
        torch = self.torch
        out = []
        with torch.no_grad():
            for start in range(0, len(prompts), self.batch_size):
                enc = self._batch(prompts[start:start + self.batch_size], responses[start:start + self.batch_size])
                enc = {k: v.to(self.device) for k, v in enc.items()}
                logits = self.model(**enc).logits.float()
                out.append(logits[:, self.label].cpu().numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros(0, np.float64)


def make_scorer(spec: str | None, **kwargs) -> Scorer | None:
    """Build a scorer from its spec: ``"embedded"``, ``"jax:/path/to/hf-rm"`` or ``"torch:/path/to/hf-rm"``.

    ``None`` or ``""`` gives ``None`` (no scoring). ``kwargs`` go to the scorer's constructor.
    """
    if spec is None or spec == "":
        return None
    if isinstance(spec, Scorer):
        return spec
    spec = str(spec)
    from lnpo.data.embedded import scorer_version

    if scorer_version(spec) is not None:
        return EmbeddedScorer(scorer_version(spec), **kwargs)
    kind, _, path = spec.partition(":")
    if kind in ("jax", "torch") and path:
        path = os.path.expanduser(path)
        if not os.path.isdir(path):
            raise InputNotFound(f"scorer {spec!r}: {path} is not a directory")
        cls = JaxRewardModelScorer if kind == "jax" else TorchRewardModelScorer
        scorer = cls(path, **kwargs)
        scorer.spec = spec
        return scorer
    raise ConfigError(f"unknown scorer spec {spec!r}: expected 'embedded', 'embedded-v2', 'jax:/path/to/rm' or "
                      "'torch:/path/to/rm'")
