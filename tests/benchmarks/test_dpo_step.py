"""benchmarks/dpo_step.py states what each side ran: TRL's dtype is the one its step computes in, its settings
are read back from the trainer, and no lnpo/TRL ratio is printed across different dtypes or references."""

import pytest

TINY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--vocab", "64", "--batch", "2",
        "--prompt-len", "6", "--response-len", "6", "--steps", "1", "--warmup", "0"]


def _observer():
    """A TrainerCallback that records, from outside the benchmark, the dtypes of the attention projections'
    outputs in every training forward and whether CPU autocast was on while they ran."""
    import torch
    from transformers import TrainerCallback

    class Observer(TrainerCallback):
        dtypes, autocast = set(), set()

        def on_train_begin(self, args, state, control, model=None, **kw):
            def hook(module, inputs, output):
                if module.training:
                    self.dtypes.add(output.dtype)
                    self.autocast.add(torch.is_autocast_enabled("cpu"))

            for layer in model.model.layers:
                layer.self_attn.q_proj.register_forward_hook(hook)

    return Observer()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_trl_line_reports_the_dtype_trl_computed_in(bench, dtype, tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    observer = _observer()
    line = bench.run_trl(bench.parse_args(TINY + ["--dtype", dtype]), callbacks=[observer])
    assert observer.dtypes == {getattr(torch, dtype)}
    assert observer.autocast == {dtype == "bfloat16"}
    assert line["dtype"] == line["observed_compute_dtype"] == dtype
    assert line["bf16"] is (dtype == "bfloat16") and line["fp16"] is False
    # read back from the trainer, not echoed from the flags: TRL 1.16 turns padding_free back off
    assert line["gradient_checkpointing"] is False and line["precompute_ref_log_probs"] is False
    assert line["padding_free"] is False and line["reference"] == "in_step"


def test_trl_precomputed_reference_is_reported_as_cache(bench, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = bench.run_trl(bench.parse_args(TINY + ["--reference", "cache", "--remat", "full"]))
    assert line["reference"] == "cache" and line["precompute_ref_log_probs"] is True
    assert line["gradient_checkpointing"] is True  # --trl-gradient-checkpointing auto follows --remat
    assert line["dtype"] == "float32"
    # the positions TRL's training forward ran: 2 x 2 sequences of prompt 6 + completion 6, once per step
    # (the precompute pass and the recomputation of checkpointed layers do not count)
    assert line["positions_per_step"] == [2 * 2 * 12] * line["steps_run"]


def _line(**kw):
    base = {"impl": "lnpo", "dtype": "float32", "reference": "in_step", "layout": "padded", "pairs_per_s": 4.0,
            "peak_rss_mb": 500.0, "mfu": 0.4}
    return {**base, **kw}


def test_ratio_is_refused_across_dtypes_or_references(bench):
    trl = _line(impl="trl", dtype="bfloat16", reference="cache", pairs_per_s=1.0, peak_rss_mb=1000.0, mfu=0.1)
    refused = bench.ratio_line(_line(), trl, allow_mismatch=False)
    assert "pairs_per_s" not in refused and "dtype" in refused["refused"] and "reference" in refused["refused"]
    allowed = bench.ratio_line(_line(), trl, allow_mismatch=True)
    assert allowed["mismatch"] == {"dtype": ["float32", "bfloat16"], "reference": ["in_step", "cache"]}
    assert allowed["pairs_per_s"] == 4.0 and allowed["peak_rss_mb"] == 0.5


def test_ratio_of_matching_sides_has_no_mismatch(bench):
    line = bench.ratio_line(_line(pairs_per_s=6.0), _line(impl="trl", pairs_per_s=2.0), allow_mismatch=False)
    assert line["pairs_per_s"] == 3.0 and "mismatch" not in line and "refused" not in line


def test_torch_harness_computes_the_dpo_loss(bench):
    import math

    # policy == reference at the first step: every margin is 0 and the DPO loss is log 2
    line = bench.run_torch(bench.parse_args(TINY + ["--steps", "2"]))
    assert line["first_loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert line["dtype"] == "float32" and line["observed_compute_dtype"] == ["float32"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny Hugging Face directory: a random LlamaForCausalLM (tied embeddings) and a byte-level BPE tokenizer
    trained offline, eos ``<|im_end|>``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = "the cat sat on a mat while dogs ran far away from every small house near green hills".split()
    corpus = [" ".join(words[i:] + words[:i]) for i in range(len(words))] * 4
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>",
                                                                                      "<|im_end|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                   bos_token="<|im_start|>", unk_token="<|endoftext|>")
    out = tmp_path_factory.mktemp("tiny-hf")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(out)
    fast.save_pretrained(out)
    return str(out), cfg, fast


MODEL_RUN = ["--batch", "2", "--prompt-len", "12", "--response-len", "10", "--lengths", "long-tailed",
             "--steps", "1", "--warmup", "0"]


def test_model_dir_sets_the_shape_and_draws_ids_that_tokenize_back(bench, model_dir):
    path, cfg, tokenizer = model_dir
    args = bench.parse_args(["--model", path, "--hidden", "999", *MODEL_RUN])
    assert (args.hidden, args.intermediate, args.layers, args.heads, args.kv_heads, args.vocab) == (
        cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
        cfg.num_key_value_heads, cfg.vocab_size)
    pairs = bench.make_pairs(args, 6)
    for x in pairs:
        assert x["chosen_ids"][-1] == x["rejected_ids"][-1] == tokenizer.eos_token_id
        text = tokenizer.decode(x["prompt_ids"])
        assert tokenizer(text + tokenizer.decode(x["chosen_ids"]), add_special_tokens=True)["input_ids"] == (
            x["prompt_ids"] + x["chosen_ids"])


def test_model_dir_loads_the_same_weights_and_tokenizer_into_both_sides(bench, model_dir, tmp_path, monkeypatch):
    import numpy as np
    from transformers import LlamaForCausalLM

    path, cfg, _ = model_dir
    monkeypatch.chdir(tmp_path)
    args = bench.parse_args(["--model", path, *MODEL_RUN])
    # run_trl raises unless TRL's tokenization of the decoded text gives exactly lnpo's ids
    trl = bench.run_trl(args)
    lnpo = bench.run_lnpo(bench.parse_args(["--model", path, "--layout", "packed", *MODEL_RUN]))
    weights = [p.detach().double().numpy() for p in LlamaForCausalLM.from_pretrained(path).parameters()]
    assert trl["params"] == lnpo["params"] == sum(w.size for w in weights)  # tied: counted once
    norm = float(np.sqrt(sum(np.sum(w**2) for w in weights)))  # the directory's weights, not a fresh init
    assert trl["init_param_norm"] == pytest.approx(norm, rel=1e-5)
    assert lnpo["init_param_norm"] == pytest.approx(norm, rel=1e-5)
    assert trl["model"] == lnpo["model"] == path and trl["vocab"] == lnpo["vocab"] == cfg.vocab_size
    # both start from the directory's weights with an in-step reference equal to them: the DPO loss is log 2
    import math

    assert lnpo["first_loss"] == pytest.approx(math.log(2), abs=1e-5)
