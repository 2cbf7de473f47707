"""The ``lasa`` command line: user errors print one line (no traceback); the library never
imports the server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lasa_steer.cli import main
from lasa_steer.vector.shipped import SHIPPED_DIR


def test_lasa_error_is_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "absent.safetensors")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("lasa info: error:") and "absent" in err


def test_calibrate_add_languages_refuses_a_refit_before_loading(tmp_path, capsys):
    """--add-languages keeps the gate, so --gate refit is refused at once (no file read)."""
    argv = ["calibrate", str(tmp_path / "absent.safetensors"), "m", "-o", str(tmp_path / "o"),
            "--add-languages", "--gate", "refit"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "--add-languages keeps the gate" in err and "absent" not in err


@pytest.mark.parametrize("argv", [["fit", "m", "-o", "x", "--band", "0.3"],
                                  ["fit", "m", "-o", "x", "--layer", "middle"],
                                  ["fit", "m", "-o", "x", "--refusal-layers", "1,b"],
                                  ["fit", "m", "-o", "x", "--identify", "ntrex,news"],
                                  ["calibrate", "v", "m", "-o", "x", "--identify", "wiki"]])
def test_bad_flag_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_identify_sources():
    from lasa_steer.cli.common import identify_sources

    assert identify_sources("none") == []
    assert identify_sources("nusax") == ["nusax"]
    assert identify_sources("ntrex, nusax") == ["ntrex", "nusax"]


def test_library_does_not_import_the_server():
    code = ("import sys, lasa_steer, lasa_steer.cli, lasa_steer.fit, lasa_steer.eval.run; "
            "sys.exit(any(m.split('.')[0] == 'lasa_serve' for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_vllm_args_prints_the_plain_server_flags(tmp_path, capsys):
    """``lasa vllm-args`` prints one shell-quoted line (``server_args``) after reading every
    file; a folder gives each file by stem; bad input is a one-line error."""
    import shlex
    from pathlib import Path

    from lasa_steer import SteeringVector
    from lasa_steer.engines.vllm.config import server_args

    shipped = SHIPPED_DIR / "smollm2-135m-instruct.safetensors"
    SteeringVector.load(shipped).save(tmp_path / "b.safetensors")
    argv = ["vllm-args", "--vector", f"a={shipped}", "--vectors", str(tmp_path),
            "--default-vector", "a", "--default-action", "add", "--max-model-len", "1024"]
    assert main(argv) == 0
    printed = shlex.split(capsys.readouterr().out)
    assert printed == server_args({"b": tmp_path / "b.safetensors", "a": shipped},
                                  default_vector="a", default_action="add", max_model_len=1024)
    (tmp_path / "c.safetensors").write_bytes(b"not a vector")
    for bad, needle in ((["--vector", "a"], "NAME=FILE"), ([], "at least one"),
                        (["--vectors", str(tmp_path)], "c.safetensors"),
                        (["--vector", f"a={shipped}", "--default-vector", "z"], "'z'")):
        assert main(["vllm-args", *bad]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and needle in err, err
