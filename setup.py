"""lnpo: preference optimization (*PO) for language models in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="lnpo",
    version="0.1.0",
    description="Preference optimization (DPO, LN-DPO, SimPO, IPO, ...) for language models in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["lnpo", "lnpo.*"]),
    install_requires=[
        "jax>=0.7",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "transformers>=4.56",
        "datasets>=3.0",
        "tokenizers>=0.21",
        "ml_collections>=1.0",
        "absl-py>=2.1",
        "numpy>=1.26",
        "safetensors>=0.4",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "jinja2>=3.1",
    ],
    extras_require={
        # torch is pinned exactly: it is the reference implementation in the parity
        # tests, and a looser pin pulls a multi-GB CUDA build. trl: tests/losses/test_trl_parity.py
        # calls TRL's own loss code (pinned: the test checks its exact behaviour).
        # gguf + accelerate: the real-model tier (tests/real) converts SmolLM2-135M-Instruct from GGUF.
        # peft: tests/models/test_lora.py loads lnpo's LoRA adapters with PEFT (pinned: exact key names).
        # ruff: .ci/run lints the tree with it (settings in pyproject.toml).
        "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0", "trl==1.16.0", "gguf>=0.10", "accelerate>=1.0",
                 "peft==0.21.2", "ruff==0.17.6"],
        # python -m lnpo.models.convert --gguf FILE --out DIR: transformers' GGUF loader needs these.
        "gguf": ["gguf>=0.10", "accelerate>=1.0", "torch==2.13.0"],
        # Score with any transformers PyTorch reward model (e.g. OpenAssistant's DeBERTa).
        "torch-scorer": ["torch==2.13.0"],
        # benchmarks/dpo_step.py --impl trl: TRL's DPOTrainer on PyTorch, same model and data.
        "bench": ["torch==2.13.0", "trl>=1.16,<2"],
    },
)
