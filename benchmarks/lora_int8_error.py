"""The logits error of lnpo's int8 frozen base (``model.lora.base_dtype=int8``) against the float32 model.

    PYTHONPATH=$PWD python benchmarks/lora_int8_error.py

For tiny random transformers models of three families (tests/models/hf_tiny.py), prints the max abs logits
error over the max abs logit, the mean abs log-prob error and the argmax agreement (docs/lora.md).
"""

from __future__ import annotations

import os
import sys
import tempfile

import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "models"))


def _log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def main() -> None:
    from hf_tiny import build_hf_model, random_batch

    import lnpo.models as M
    from lnpo.models import lora

    for family in ("llama_untied_bias", "qwen2_bias", "gemma2"):
        with tempfile.TemporaryDirectory() as d:
            build_hf_model(family).save_pretrained(d)
            ref, q = M.from_pretrained(d), M.from_pretrained(d)
        lora.quantize_base(q)
        ids, mask = random_batch(seq=12)
        positions = np.maximum(np.cumsum(mask, 1) - 1, 0)

        def logits(m, ids=ids, positions=positions, mask=mask):
            return np.asarray(m(jnp.asarray(ids), positions=jnp.asarray(positions), segment_ids=jnp.asarray(mask)))

        a, b = logits(q), logits(ref)
        v = mask == 1
        print(f"{family}: max|dlogits|/max|logits| {np.abs(a - b)[v].max() / np.abs(b[v]).max():.4f}, "
              f"mean|dlogp| {np.abs(_log_softmax(a) - _log_softmax(b))[v].mean():.4f}, "
              f"argmax agreement {(a.argmax(-1) == b.argmax(-1))[v].mean():.3f}")


if __name__ == "__main__":
    main()
