"""The three layouts give identical per-sequence log-prob sums with a tiny model.

End to end: fixture file -> load -> tokenize (chat template) -> each layout ->
``Decoder.hidden_states`` -> ``logprobs.token_logps`` -> ``logprobs.sequence_logps``;
compared with each other and with a plain one-sequence forward pass
(``model(ids)``, default positions, causal mask) per completion.

Uses the model layer's documented API (docs/architecture.md):
``lnpo.models.ModelConfig(vocab_size, hidden_size, intermediate_size, num_layers,
num_heads, num_kv_heads, sliding_window)`` and ``lnpo.models.Decoder(config, rngs=nnx.Rngs(0))``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lnpo import logprobs
from lnpo.data import LAYOUTS, layout_pairs, load_preferences, tokenize_preferences
from lnpo.models import Decoder, ModelConfig


@pytest.fixture(scope="module")
def examples(fixtures, cache_dir, tokenizer):
    pairs = []
    for name in ("generic", "conversational", "hh_rlhf"):
        ds, _ = load_preferences(fixtures[name].path, cache_dir=cache_dir)
        tok, _ = tokenize_preferences(ds, tokenizer, max_len=40, max_prompt_len=24)
        pairs.extend(tok.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_list())
    return pairs


def reference_sums(model, examples, length: int) -> np.ndarray:
    """Per completion: sum of log p(completion token | prompt + earlier completion tokens), one sequence per row
    (right-padded, which a causal model does not see), default positions."""
    seqs = [ex["prompt_ids"] + ex[key] for ex in examples for key in ("chosen_ids", "rejected_ids")]
    ids = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    logp = np.asarray(nnx.jit(lambda m, x: jax.nn.log_softmax(m(x).astype(jnp.float32), axis=-1))(model, ids))
    out = []
    for i, ex in enumerate(ex for ex in examples for _ in range(2)):
        p, n = len(ex["prompt_ids"]), len(seqs[i])
        out.append(sum(float(logp[i, t, ids[i, t + 1]]) for t in range(p - 1, n - 1)))
    return np.asarray(out)


@nnx.jit(static_argnums=(2,))
def _sums(model, batch, num_sequences):
    hidden = model.hidden_states(batch["input_ids"], positions=batch["positions"], segment_ids=batch["segment_ids"],
                                 branch_ids=batch["branch_ids"])
    token = logprobs.token_logps(hidden, batch["targets"], model.unembed, chunk_size=16)
    return logprobs.sequence_logps(token, batch["seq_index"], num_sequences)


def layout_sums(model, rows, num_sequences):
    sums, counts = _sums(model, {k: jnp.asarray(v) for k, v in rows.items()}, num_sequences)
    return np.asarray(sums), np.asarray(counts)


def test_layouts_give_identical_sequence_logps(examples, tokenizer):
    # one sliding-window layer (window 5, in positions) and one global layer
    config = ModelConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
                         num_kv_heads=2, sliding_window=5, layer_types=("sliding_attention", "full_attention"))
    model = Decoder(config, rngs=nnx.Rngs(0))
    n = 2 * len(examples)
    expected_counts = np.asarray([len(ex[k]) for ex in examples for k in ("chosen_ids", "rejected_ids")])
    seq_len = 96  # a shared-prompt pair needs P + Cc + Cr + 1 <= 2 * max_len tokens
    reference = reference_sums(model, examples, seq_len)
    needed = {layout: layout_pairs(examples, layout, seq_len)["input_ids"].shape[0] for layout in LAYOUTS}
    assert needed["shared_prompt"] < needed["packed"] < needed["padded"] == n  # less padding
    for layout in LAYOUTS:
        # the same number of rows for every layout: one compilation
        rows = layout_pairs(examples, layout, seq_len, num_rows=n)
        sums, counts = layout_sums(model, rows, n)
        np.testing.assert_array_equal(counts, expected_counts, err_msg=layout)
        np.testing.assert_allclose(sums, reference, rtol=1e-5, atol=1e-4, err_msg=layout)
