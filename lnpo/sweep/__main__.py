"""``python -m lnpo.sweep --config=configs/sweeps/<name>.py --workdir=DIR`` (see :mod:`lnpo.sweep`)."""

from lnpo.sweep.cli import main

if __name__ == "__main__":
    main()
