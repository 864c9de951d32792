"""The command line: build, check, plan, schema, verify."""

import json
import os
import re
import subprocess
import sys

from codegen.cli import main

from conftest import GENERATED, KERNELS, ROOT, SPECS, write_spec


def test_checked_in_generated_files_are_current(capsys):
    assert main(["check", *[str(SPECS / f"{n}.yaml") for n in KERNELS], "-o", str(GENERATED)]) == 0


def test_build_then_check_then_stale(tmp_path, capsys):
    spec = SPECS / "exp.yaml"
    out = tmp_path / "gen"
    assert main(["build", str(spec), "-o", str(out)]) == 0
    assert "written" in capsys.readouterr().out
    assert main(["build", str(spec), "-o", str(out)]) == 0
    assert "unchanged" in capsys.readouterr().out
    assert main(["check", str(spec), "-o", str(out)]) == 0
    target = out / "exp.py"
    stale = target.read_text().replace("jnp.exp(x)", "jnp.exp(x) + 0")
    target.write_text(stale)
    assert main(["check", str(spec), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    assert "-    out_ref[...] = jnp.exp(x) + 0" in captured.out
    assert "+    out_ref[...] = jnp.exp(x)" in captured.out
    assert "stale" in captured.err
    assert target.read_text() == stale, "check changes nothing"
    target.unlink()
    assert main(["check", str(spec), "-o", str(out)]) == 1
    assert "missing" in capsys.readouterr().err
    assert not target.exists()


def test_check_with_a_define_compares_against_that_build(tmp_path, capsys):
    spec = SPECS / "axpy.yaml"
    assert main(["build", str(spec), "-o", str(tmp_path), "-D", "alpha=0.5"]) == 0
    assert "ALPHA = 0.5" in (tmp_path / "axpy.py").read_text()
    assert "# build options: --chip v5e -D alpha=0.5" in (tmp_path / "axpy.py").read_text()
    assert main(["check", str(spec), "-o", str(tmp_path), "-D", "alpha=0.5"]) == 0
    assert main(["check", str(spec), "-o", str(tmp_path)]) == 1


def test_plan_command(capsys):
    assert main(["plan", str(SPECS / "exp.yaml")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"output_only\s+on\s+out\s+fired", out)


def test_schema_command(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["required"] == ["name", "axes", "tensors", "compute"]


def test_python_dash_m_and_help(tmp_path):
    done = subprocess.run([sys.executable, "-m", "codegen", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0
    for command in ("build", "check", "plan", "verify", "schema"):
        assert command in done.stdout
    # Outside any project with [tool.codegen], a bare build has nothing to build.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "codegen", "build"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert done.stderr.startswith("<command line>:1:1: error: no spec given"), done.stderr


def test_verify_command_runs_and_lowers(capsys):
    assert main(["verify", str(SPECS / "softmax.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok") >= 4
    assert "lowered for TPU (aligned): ok" in out
    assert "verify softmax: passed" in out


def test_verify_reports_a_wrong_kernel(tmp_path, capsys, monkeypatch):
    import codegen.verify as verify

    real = verify.reference

    def off_by_one(k, inputs, sizes):
        return {name: value + 1.0 for name, value in real(k, inputs, sizes).items()}

    monkeypatch.setattr(verify, "reference", off_by_one)
    assert main(["verify", str(SPECS / "exp.yaml")]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_verify_a_jagged_kernel(capsys):
    assert main(["verify", str(SPECS / "gdpa_jagged.yaml")]) == 0
    out = capsys.readouterr().out
    for case in ("mixed segments", "a single segment", "all empty but one"):
        assert case in out
    assert "verify gdpa_jagged: passed" in out
