"""lnpo.train.distributed: when to start JAX's multi-process runtime, its timeouts, lost-peer errors."""

from __future__ import annotations

import pytest
from train_helpers import REPO, small_config

from lnpo.config import ConfigError
from lnpo.train import distributed


@pytest.mark.parametrize("env, expected", [
    ({}, False),
    ({"SLURM_NTASKS": "1"}, False),
    ({"SLURM_NTASKS": "4"}, True),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.2,10.0.0.3"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, True),
])
def test_launched_as_one_of_several(env, expected):
    assert distributed.launched_as_one_of_several(env) is expected


@pytest.mark.parametrize("field", ["initialization_timeout_s", "heartbeat_timeout_s"])
@pytest.mark.parametrize("value", [0, -5])
def test_bad_timeouts_name_the_field(field, value):
    config = small_config(REPO, {"train_prefs": "", "eval_prefs": ""})
    config.distributed[field] = value
    with pytest.raises(ConfigError, match=rf"config\.distributed\.{field}"):
        distributed.initialize(config)


def test_one_process_starts_no_runtime_and_reports_no_lost_peer(monkeypatch):
    for name in ("JAX_COORDINATOR_ADDRESS", "SLURM_NTASKS", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(name, raising=False)
    config = small_config(REPO, {"train_prefs": "", "eval_prefs": ""})
    distributed.initialize(config)  # a no-op here
    import jax

    assert not jax.distributed.is_initialized()
    assert not distributed.lost_peer(ValueError("Gloo AllGather failed: Connection reset by peer"))


def test_coordinator_without_process_id_is_a_config_error(monkeypatch):
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    monkeypatch.delenv("JAX_PROCESS_ID", raising=False)
    with pytest.raises(ConfigError, match="JAX_PROCESS_ID"):
        distributed.initialize(small_config(REPO, {"train_prefs": "", "eval_prefs": ""}))
