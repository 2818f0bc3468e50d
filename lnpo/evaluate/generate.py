"""Batched sampling with a KV cache: one jitted prefill + a ``jax.lax.while_loop`` over decode steps.

Two entry points:

- :func:`generate_ids` works on token ids (``prompt_ids: list[list[int]]``) and
  returns the sampled response ids;
- :func:`generate` renders chat prompts (message lists, or plain strings taken as
  one user message) with the tokenizer's chat template exactly as
  :mod:`lnpo.data.tokenize` does (``apply_chat_template(prompt,
  add_generation_prompt=True)``, or :class:`lnpo.data.PlainTemplate` for a
  tokenizer without one), samples, decodes the text and applies stop strings.

Algorithm (per batch of ``B`` rows, each row one (prompt, sample) pair):

1. Prompts are **left-padded** to ``P`` = :func:`bucket_length` of the longest
   prompt of the batch (so a handful of shapes compile). Pad
   slots are marked invalid in the KV cache (no token attends to them); real
   prompt tokens get RoPE positions ``0 .. len-1``.
2. One prefill (``Decoder.decode_hidden``) fills a cache of ``P + max_new_tokens``
   slots and gives the next-token logits at the last prompt token.
3. A ``while_loop`` of at most ``max_new_tokens`` steps samples one token per row
   (:func:`sample_logits`), records it, marks rows that produced an EOS id as done
   (later tokens of a done row are padding, never part of the response) and feeds
   the token back through the cache. It exits early once every row is done.

Randomness: row ``(prompt_index p, sample s)`` draws step ``t`` with key
``fold_in(fold_in(fold_in(key(seed), p), s), t)``, so a sample depends only on
the seed, its prompt index, its sample index and the model, not on which rows
share its batch. Temperature 0 is greedy argmax decoding.

Stop strings are applied after decoding (the jitted loop only stops at EOS ids):
the response text is cut before the first occurrence of any stop string, and
``response_ids`` keeps the generated tokens up to and including the token that
completes it.

Sharding: the jitted functions take the model's NNX state as an argument and
place nothing on a device themselves, so parameters already laid out on a mesh
(``lnpo.models.from_pretrained(..., mesh=mesh)``) stay where they are.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lnpo.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "SamplingSettings",
    "bucket_length",
    "eos_token_ids",
    "generate",
    "generate_ids",
    "prompt_encoder",
    "render_prompt_ids",
    "sample_logits",
]


@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Sampling settings (validated; only ``max_new_tokens`` is static under jit). No defaults of its own:
    an evaluation's come from :class:`lnpo.eval_settings.EvalSettings`.

    temperature: 0 = greedy argmax; otherwise logits are divided by it.
    top_k: keep the k largest logits (0 = all; ties with the k-th value are kept).
    top_p: nucleus sampling, keep the smallest set of most likely tokens whose
    probability (after temperature and top-k) reaches top_p (1.0 = all).
    """

    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int

    def __post_init__(self):
        if int(self.max_new_tokens) < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens!r}")
        if float(self.temperature) < 0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if int(self.top_k) < 0:
            raise ConfigError(f"top_k must be >= 0, got {self.top_k!r}")


# ----------------------------------------------------------------------------- sampling


def sample_logits(logits_BxV: jax.Array, keys_B: jax.Array, *, temperature=1.0, top_k=0, top_p=1.0) -> jax.Array:
    """Sample one token id per row: int32 ``[B]``.

    ``temperature == 0``: ``argmax(logits)``. Otherwise, with ``z = logits / temperature``:
    top-k (``top_k > 0``) keeps ``z >= z_(k)``, the k-th largest value; top-p
    (``top_p < 1``) then sorts the kept tokens by probability and keeps those whose
    preceding cumulative probability is below ``top_p`` (so at least the most
    likely one); the token is drawn from ``softmax`` over the kept ``z`` with the
    row's key (``keys_B``: one PRNG key per row). Tokens tied with the last kept
    value are kept too. ``temperature``, ``top_k`` and ``top_p`` may be traced
    scalars, so one compiled program serves every setting.
    """
    logits = jnp.asarray(logits_BxV, jnp.float32)
    V = logits.shape[-1]
    t = jnp.asarray(temperature, jnp.float32)
    k = jnp.asarray(top_k, jnp.int32)
    p = jnp.asarray(top_p, jnp.float32)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    z = logits / jnp.where(t > 0, t, 1.0)
    neg = jnp.finfo(jnp.float32).min

    def filtered(z):
        z_sorted = -jnp.sort(-z, axis=-1)  # descending
        kth = jnp.where(k > 0, z_sorted[:, jnp.clip(k - 1, 0, V - 1)], neg)[:, None]
        z_sorted = jnp.where(z_sorted >= kth, z_sorted, neg)
        probs = jax.nn.softmax(z_sorted, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass strictly before each token
        keep = (before < p) | (jnp.arange(V) == 0)[None, :]
        keep &= z_sorted > neg
        keep = keep.at[:, 0].set(True)
        threshold = jnp.min(jnp.where(keep, z_sorted, jnp.inf), axis=-1, keepdims=True)
        return jnp.where(z >= threshold, z, neg)

    z = jax.lax.cond(((k > 0) & (k < V)) | (p < 1.0), filtered, lambda z: z, z)
    sampled = jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys_B, z).astype(jnp.int32)
    return jnp.where(t > 0, sampled, greedy)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _generate_batch(graphdef, state, ids_BxP, valid_BxP, positions_BxP, prompt_index_B, sample_index_B, seed,
                    temperature, top_k, top_p, eos_mask_V, pad_id, *, max_new_tokens: int):
    """One batch: (tokens int32 [B, N] (pad_id after EOS / unused), lengths int32 [B], finished bool [B])."""
    model = nnx.merge(graphdef, state)
    B, P = ids_BxP.shape
    N = int(max_new_tokens)
    base = jax.random.key(seed)
    row_keys = jax.vmap(lambda p, s: jax.random.fold_in(jax.random.fold_in(base, p), s))(prompt_index_B, sample_index_B)

    cache = model.init_cache(B, P + N)
    hidden, cache = model.decode_hidden(ids_BxP, positions_BxP, cache, valid_BxT=valid_BxP)
    logits = model.unembed(hidden[:, -1:])[:, 0]  # left-padded: the last slot is each row's last prompt token
    next_pos = jnp.max(jnp.where(valid_BxP, positions_BxP, -1), axis=1) + 1

    def cond(carry):
        i, _, _, _, done, _, _ = carry
        return (i < N) & ~jnp.all(done)

    def body(carry):
        i, cache, logits, out, done, lengths, pos = carry
        keys = jax.vmap(lambda k: jax.random.fold_in(k, i))(row_keys)
        tok = sample_logits(logits, keys, temperature=temperature, top_k=top_k, top_p=top_p)
        tok = jnp.where(done, pad_id, tok)
        out = jax.lax.dynamic_update_slice_in_dim(out, tok[:, None], i, axis=1)
        lengths = lengths + (~done).astype(jnp.int32)
        done = done | eos_mask_V[tok]
        step_logits, cache = model.decode(tok[:, None], pos[:, None], cache)
        return i + 1, cache, step_logits[:, 0], out, done, lengths, pos + 1

    init = (jnp.zeros((), jnp.int32), cache, logits, jnp.full((B, N), pad_id, jnp.int32), jnp.zeros((B,), bool),
            jnp.zeros((B,), jnp.int32), next_pos)
    _, _, _, out, done, lengths, _ = jax.lax.while_loop(cond, body, init)
    return out, lengths, done


def bucket_length(n: int, minimum: int = 16) -> int:
    """Padded length for ``n`` tokens: the next power of two >= max(n, minimum) up to 256, then a multiple of 256
    (few distinct shapes, so few compilations)."""
    n = max(int(n), int(minimum), 1)
    if n <= 256:
        return 1 << (n - 1).bit_length()
    return -(-n // 256) * 256


def eos_token_ids(model=None, tokenizer=None) -> tuple[int, ...]:
    """The union of the tokenizer's ``eos_token_id`` and the model config's ``eos_token_id`` (int or tuple)."""
    ids: list[int] = []
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        ids.append(int(tokenizer.eos_token_id))
    cfg_eos = getattr(getattr(model, "config", None), "eos_token_id", None)
    if cfg_eos is not None:
        ids.extend(int(e) for e in (cfg_eos if isinstance(cfg_eos, (tuple, list)) else (cfg_eos,)))
    return tuple(sorted(set(ids)))


def _eos_mask(eos_ids: Sequence[int], vocab_size: int) -> np.ndarray:
    """bool ``[V]``: which ids end a response. A fixed-shape mask, so any set of EOS ids runs the same
    compiled program; an id outside the vocabulary is ignored with a warning."""
    eos = np.zeros((vocab_size,), bool)
    for e in eos_ids:
        if 0 <= int(e) < vocab_size:
            eos[int(e)] = True
        else:
            log.warning("EOS id %d is outside the model's vocabulary (%d): ignored", int(e), vocab_size)
    return eos


def _left_padded(prompts: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, valid, positions)`` int32/bool/int32 ``[B, P]``: the prompts right-aligned in rows of the
    bucketed length ``P`` of the longest (so every row's next token is written at the same slot), positions
    counting from each prompt's first token."""
    P = bucket_length(max(len(p) for p in prompts))
    ids = np.full((len(prompts), P), pad_id, np.int32)
    valid = np.zeros((len(prompts), P), bool)
    pos = np.zeros((len(prompts), P), np.int32)
    for b, p in enumerate(prompts):
        n = len(p)
        ids[b, P - n:] = p
        valid[b, P - n:] = True
        pos[b, P - n:] = np.arange(n)
    return ids, valid, pos


def generate_ids(
    model,
    prompt_ids: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_samples: int = 1,
    seed: int = 0,
    eos_ids: Sequence[int] = (),
    pad_id: int = 0,
    batch_size: int = 32,
) -> list[dict]:
    """Sample ``num_samples`` responses per prompt of token ids.

    Returns one dict per (prompt, sample), prompt-major (``prompt_index``, then
    ``sample``): ``prompt_index``, ``sample``, ``response_ids`` (list of ints: the
    sampled tokens up to and including the first EOS id; at most
    ``max_new_tokens``), ``finished`` (an EOS id was produced).

    ``batch_size`` rows (prompt x sample pairs) run per jitted call; rows are
    ordered by prompt length so prompts of similar length share a batch, and the
    last batch is filled up with copies of a row (discarded) to keep shapes fixed.
    The result for a row does not depend on ``batch_size`` (up to float
    reassociation in differently padded batches).
    """
    settings = SamplingSettings(int(max_new_tokens), float(temperature), float(top_p), int(top_k))
    if int(num_samples) < 1:
        raise ConfigError(f"num_samples must be >= 1, got {num_samples!r}")
    if int(batch_size) < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size!r}")
    prompts = [np.asarray(p, np.int64).reshape(-1) for p in prompt_ids]
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} has no tokens")
    rows = [(p, s) for p in range(len(prompts)) for s in range(int(num_samples))]
    if not rows:
        return []
    order = sorted(range(len(rows)), key=lambda r: len(prompts[rows[r][0]]))
    B = min(int(batch_size), len(rows))
    graphdef, state = nnx.split(model)
    eos = _eos_mask(eos_ids, int(model.config.vocab_size))
    max_pos = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(p) for p in prompts) + settings.max_new_tokens
    if max_pos and longest > max_pos:
        log.warning("prompt + max_new_tokens reaches %d positions > max_position_embeddings %d", longest, max_pos)

    results: dict[int, dict] = {}
    for start in range(0, len(order), B):
        chunk = order[start:start + B]
        real = len(chunk)
        chunk = chunk + [chunk[-1]] * (B - real)
        ids, valid, pos = _left_padded([prompts[rows[r][0]] for r in chunk], pad_id)
        pidx = np.asarray([rows[r][0] for r in chunk], np.int32)
        sidx = np.asarray([rows[r][1] for r in chunk], np.int32)
        out, lengths, done = _generate_batch(
            graphdef, state, ids, valid, pos, pidx, sidx, np.uint32(int(seed) % (1 << 32)),
            np.float32(settings.temperature), np.int32(settings.top_k), np.float32(settings.top_p), eos,
            np.int32(pad_id), max_new_tokens=settings.max_new_tokens)
        out, lengths, done = (np.asarray(jax.device_get(x)) for x in (out, lengths, done))
        for b in range(real):
            r = chunk[b]
            results[r] = {
                "prompt_index": rows[r][0],
                "sample": rows[r][1],
                "response_ids": [int(t) for t in out[b, : int(lengths[b])]],
                "finished": bool(done[b]),
            }
    return [results[r] for r in range(len(rows))]


# ----------------------------------------------------------------------------- text


def _as_messages(prompt: Any) -> list[dict]:
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, Mapping):
        return [dict(prompt)]
    return [dict(m) for m in prompt]


def prompt_encoder(tokenizer, *, plain_template=None, max_prompt_len: int | None = None):
    """The :class:`lnpo.data.tokenize.Encoder` used for prompts (the training token contract).

    ``plain_template`` is the ``data.chat_template`` setting of training
    (:func:`lnpo.data.tokenize.template_for`): ``None``/``""`` = the tokenizer's chat
    template (a tokenizer without one is an error naming the setting, as in training),
    ``"plain"``, a user-turn format, or a :class:`lnpo.data.PlainTemplate`.
    """
    from lnpo.data.tokenize import Encoder, TokenizeConfig, template_for

    plain_template = template_for(tokenizer, plain_template)
    budget = int(max_prompt_len) if max_prompt_len else 1 << 30
    return Encoder(tokenizer, TokenizeConfig(max_len=budget + 1, max_prompt_len=budget,
                                             plain_template=plain_template))


def render_prompt_ids(tokenizer, prompts: Sequence[Any], *, plain_template=None,
                      max_prompt_len: int | None = None) -> list[list[int]]:
    """Token ids of each prompt, ending with the generation prompt; the prompt's
    first tokens are dropped (keeping a leading BOS) beyond ``max_prompt_len``.

    Raises ``ValueError`` naming the prompt when the template fails on it or it has no tokens.
    """
    from lnpo.data.validate import RowIssue

    enc = prompt_encoder(tokenizer, plain_template=plain_template, max_prompt_len=max_prompt_len)
    out = []
    for i, prompt in enumerate(prompts):
        try:
            ids = enc.prompt_ids(_as_messages(prompt))
            ids = enc._fit_prompt(ids, set())
        except RowIssue as issue:
            raise ValueError(f"prompt {i}: {issue.detail}") from None
        out.append(ids)
    return out


def _find_stop(text: str, stop_strings: Sequence[str]) -> int:
    hits = [text.find(s) for s in stop_strings if s]
    hits = [h for h in hits if h >= 0]
    return min(hits) if hits else -1


def _apply_stop(tokenizer, ids: list[int], text: str, stop_strings: Sequence[str]) -> tuple[list[int], str, bool]:
    """Cut ``text`` before the first stop string and ``ids`` after the token completing it."""
    cut = _find_stop(text, stop_strings)
    if cut < 0:
        return ids, text, False

    def contains(k: int) -> bool:
        return _find_stop(tokenizer.decode(ids[:k], skip_special_tokens=True), stop_strings) >= 0

    lo, hi = 1, len(ids)  # smallest k with contains(k): containment grows with the prefix
    while lo < hi:
        mid = (lo + hi) // 2
        if contains(mid):
            hi = mid
        else:
            lo = mid + 1
    return ids[:lo], text[:cut], True


def generate(
    model,
    tokenizer,
    prompts: Sequence[Any],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    num_samples: int = 1,
    seed: int = 0,
    stop_strings: Sequence[str] = (),
    batch_size: int = 32,
    eos_ids: Sequence[int] | None = None,
    plain_template=None,
    max_prompt_len: int | None = None,
) -> list[dict]:
    """Sample responses to chat prompts (message lists or plain user strings).

    Returns one dict per (prompt, sample), prompt-major: ``prompt_index``,
    ``sample``, ``prompt_ids``, ``response_ids`` (generated tokens, including the
    terminating EOS if any), ``response_text`` (decoded without special tokens, cut
    before the first stop string), ``stop_reason`` (``"eos"``, ``"stop_string"``
    or ``"length"``).

    ``eos_ids`` default: :func:`eos_token_ids` of the model and tokenizer. The pad
    id fed into the cache for padding is the tokenizer's pad id (else 0); padding
    is masked, so its value does not matter.
    """
    stop_strings = tuple(s for s in (stop_strings or ()) if s)
    prompt_ids = render_prompt_ids(tokenizer, prompts, plain_template=plain_template, max_prompt_len=max_prompt_len)
    eos = eos_token_ids(model, tokenizer) if eos_ids is None else tuple(eos_ids)
    pad = tokenizer.pad_token_id if getattr(tokenizer, "pad_token_id", None) is not None else 0
    raw = generate_ids(model, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                       top_k=top_k, num_samples=num_samples, seed=seed, eos_ids=eos, pad_id=pad,
                       batch_size=batch_size)
    out = []
    for r in raw:
        ids = r["response_ids"]
        body = ids[:-1] if r["finished"] else ids
        text = tokenizer.decode(body, skip_special_tokens=True)
        reason = "eos" if r["finished"] else "length"
        if stop_strings:
            cut_ids, cut_text, stopped = _apply_stop(tokenizer, body, text, stop_strings)
            if stopped:
                ids, text, reason = cut_ids, cut_text, "stop_string"
        out.append({"prompt_index": r["prompt_index"], "sample": r["sample"],
                    "prompt_ids": list(prompt_ids[r["prompt_index"]]), "response_ids": list(ids),
                    "response_text": text, "stop_reason": reason})
    return out
