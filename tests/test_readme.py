"""The README's promises: its two set-up commands are what CI runs, and its losses example runs."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()


def test_readme_opens_with_the_main_and_test_commands():
    blocks = re.findall(r"```bash\n(.*?)\n```", README, flags=re.S)
    assert "python -m lnpo.main --config=configs/lndpo.py" in blocks[0]
    assert 'pip install -e ".[test]"' in blocks[1] and "python -m pytest" in blocks[1]
    ci = open(os.path.join(REPO, ".ci", "run"), encoding="utf-8").read()
    assert "<!-- test-command -->" in ci and "<!-- test-command -->" in README


def test_readme_losses_example_runs_with_jax_grad():
    code = re.findall(r"```python\n(.*?)\n```", README, flags=re.S)[0]
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ln_dpo" in proc.stdout and "Array" in proc.stdout
