"""lnpo: preference optimization (*PO) for language models in JAX/Flax.

Subpackages are imported on demand so that ``import lnpo.losses`` stays light
(no transformers, datasets or torch).
"""

__version__ = "0.1.0"
