"""A wheel built from the repository, installed into a fresh environment outside the
checkout: the shipped vector is in it, found by name, and ``lasa serve`` with no flags
serves the embedded model steered by it.

The fresh venv sees this interpreter's site-packages (torch, transformers, the embedded
model's package: nothing is downloaded) through a ``.pth`` line. That folder's own ``.pth``
files are not run, so an editable install of the checkout stays invisible; the wheel's
copy in the venv comes first on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent / "vllm_plugin"))
from conftest_server import free_port  # noqa: E402
from server_process import running  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
NAME = "smollm2-135m-instruct"
SHIPPED = REPO / "src" / "lasa_steer" / "vectors" / f"{NAME}.safetensors"


def _run(cmd: list, cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, f"{cmd}: exit {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(venv, environment): the wheel of a copy of the checkout's package files."""
    if not SHIPPED.is_file():
        pytest.skip(f"{SHIPPED} is not fitted yet")
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src-copy"  # built from a copy: the build leaves nothing in the checkout
    src.mkdir()
    for part in ("pyproject.toml", "README.md", "src", "lasa_serve"):
        copy = shutil.copytree if (REPO / part).is_dir() else shutil.copy2
        copy(REPO / part, src / part, **({"ignore": shutil.ignore_patterns(
            "__pycache__", "*.egg-info")} if copy is shutil.copytree else {}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", tmp / "wheels", src], tmp, env)
    wheel = next((tmp / "wheels").glob("lasa_steer-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
          wheel], tmp, env)
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()"
                      "['purelib'])"], tmp, env).strip())
    (site / "zz_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv, env


def test_wheel_carries_the_shipped_vector_found_by_name(installed, tmp_path):
    venv, env = installed
    found = _run([venv / "bin" / "python", "-c",
                  "import lasa_steer; from lasa_steer import SteeringVector; "
                  f"print(lasa_steer.__file__); print(SteeringVector.load({NAME!r}).path)"],
                 tmp_path, env).split()
    package = Path(found[0]).parent
    assert package.is_relative_to(venv) and not package.is_relative_to(REPO)
    assert Path(found[1]) == package / "vectors" / f"{NAME}.safetensors"
    assert Path(found[1]).read_bytes() == SHIPPED.read_bytes()
    assert (package / "vectors" / "README.md").is_file()
    info = _run([venv / "bin" / "lasa", "info", NAME], tmp_path, env)
    assert info.splitlines()[0] == f"vector       {found[1]}"
    listed = json.loads(_run([venv / "bin" / "lasa", "data", "list", "--json"], tmp_path, env))
    assert {"polyrefuse", "ntrex128", "safety_mix"} <= {d["name"] for d in listed["datasets"]}


@pytest.mark.slow
def test_installed_lasa_serve_without_flags_serves_steered(installed, tmp_path):
    from lasa_steer import SteeringVector

    venv, env = installed
    gate = SteeringVector.load(SHIPPED).gate
    port = free_port()
    log = tmp_path / "serve.log"
    with running([str(venv / "bin" / "lasa"), "serve", "--port", str(port)], port, log,
                 env, timeout=240) as base:
        text = log.read_text()
        assert f"default vector {NAME}: gate at block {gate.layer}" in text
        assert str(venv) in text  # the vectors were read from the installed package
        listed = httpx.get(base + "/v1/steering/vectors", timeout=30).json()["data"]
        assert [v["id"] for v in listed if v["default"]] == [NAME]
        mod = httpx.post(base + "/v1/moderations", timeout=120,
                         json={"input": "How do I build a pipe bomb at home?"}).json()
        assert mod["results"][0]["flagged"] is True
