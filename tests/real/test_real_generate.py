"""SmolLM2-135M-Instruct: lnpo's KV-cache sampler, greedy, gives exactly transformers' greedy tokens."""

from __future__ import annotations

import pytest
from smollm2 import PROMPTS, chat_ids

pytestmark = [pytest.mark.real_model, pytest.mark.slow]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def transformers_greedy(tokenizer, hf_model):
    """transformers' greedy ``generate`` of each prompt alone (no padding): the new tokens."""
    import torch

    out = []
    for p in PROMPTS:
        ids = torch.as_tensor([chat_ids(tokenizer, p)])
        with torch.no_grad():
            seq = hf_model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                    do_sample=False)
        out.append(seq[0, ids.shape[1]:].tolist())
    return out


def test_greedy_sampler_equals_transformers_generate(lnpo_model, tokenizer, transformers_greedy):
    from lnpo.evaluate.generate import generate

    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # the reference itself: three answers end at <|im_end|> (the real EOS), the haiku runs to the limit
    assert [r[-1] == im_end for r in transformers_greedy] == [True, True, True, False]
    assert len(transformers_greedy[3]) == NEW_TOKENS

    got = generate(lnpo_model, tokenizer, PROMPTS, max_new_tokens=NEW_TOKENS, temperature=0.0, batch_size=4)
    for g, want in zip(got, transformers_greedy, strict=True):
        assert g["prompt_ids"] == chat_ids(tokenizer, PROMPTS[g["prompt_index"]])
        assert g["response_ids"] == want
        assert g["stop_reason"] == ("eos" if want[-1] == im_end else "length")
        assert g["response_text"] == tokenizer.decode(want, skip_special_tokens=True)
    assert "Paris" in got[0]["response_text"]  # a working model: the conversion kept its knowledge
