"""The ``lasa`` command line: user errors print one line (no traceback); the library never
imports the server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lasa_steer.cli import main


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
                                  ["fit", "m", "-o", "x", "--refusal-layers", "1,b"]])
def test_bad_flag_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_library_does_not_import_the_server():
    code = ("import sys, lasa_steer, lasa_steer.cli, lasa_steer.fit, lasa_steer.eval.run; "
            "sys.exit(any(m.split('.')[0] == 'lasa_serve' for m in sys.modules))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
