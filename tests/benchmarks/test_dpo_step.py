"""benchmarks/dpo_step.py states what each side ran: TRL's dtype is the one its step computes in, its settings
are read back from the trainer, and no lnpo/TRL ratio is printed across different dtypes or references."""

import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--kv-heads", "1", "--vocab", "64", "--batch", "2",
        "--prompt-len", "6", "--response-len", "6", "--steps", "1", "--warmup", "0"]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("dpo_step", os.path.join(ROOT, "benchmarks", "dpo_step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
