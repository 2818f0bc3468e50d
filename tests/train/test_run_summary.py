"""The run's closing summary line: evaluation metrics that are not computable (None) are left out."""

from lnpo.train.run import format_summary


def test_summary_without_a_scorer_prints_the_metrics_it_has():
    summary = {"stage": "po", "workdir": "/runs/x", "steps": 3, "preempted": False, "export": "/runs/x/export",
               "final": {"loss": 0.69}, "eval": {"score_mean": None, "win_rate_vs_chosen": None,
                                                 "kl_seq_mean": 0.125, "length_tokens_mean": 12.0}}
    text = format_summary(summary)
    assert "eval kl_seq_mean = 0.1250" in text and "eval length_tokens_mean = 12.0000" in text
    assert "score_mean" not in text and "win_rate" not in text
