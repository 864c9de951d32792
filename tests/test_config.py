"""[tool.codegen] in pyproject.toml: project-wide specs, output folder and chip."""

import pytest

from codegen.cli import main

from conftest import SPECS


def project(tmp_path, table):
    (tmp_path / "specs").mkdir()
    for name in ("exp", "axpy"):
        (tmp_path / "specs" / f"{name}.yaml").write_text((SPECS / f"{name}.yaml").read_text())
    (tmp_path / "pyproject.toml").write_text(f'[project]\nname = "downstream"\n\n[tool.codegen]\n{table}')
    return tmp_path


def test_a_bare_build_and_check_use_the_project_settings(tmp_path, capsys, monkeypatch):
    root = project(tmp_path, 'specs = ["specs/*.yaml"]\noutput = "src/kernels"\nchip = "v6e"\n')
    (root / "specs" / "sub").mkdir()
    monkeypatch.chdir(root / "specs" / "sub")  # anywhere inside the project
    assert main(["build"]) == 0
    out = capsys.readouterr().out
    assert "../../src/kernels/axpy.py: written" in out and "../../src/kernels/exp.py: written" in out
    header = (root / "src" / "kernels" / "exp.py").read_text().splitlines()
    assert "#   codegen build specs/exp.yaml -o src/kernels --chip v6e" in header
    assert main(["check"]) == 0
    # options on the command line win
    assert main(["check", "--chip", "v5e"]) == 1
    assert "stale; run `codegen build ../exp.yaml -o ../../src/kernels --chip v5e`" in capsys.readouterr().err


@pytest.mark.parametrize(
    "table, where, message",
    [
        ('specs = ["specs/*.yaml"]\noutptu = "gen"\n', "pyproject.toml:6:1", "unknown key 'outptu' in [tool.codegen]"),
        ('chip = "v9"\n', "pyproject.toml:5:1", "[tool.codegen] chip must be one of v5e, v6e, v7x"),
        ('specs = ["nothing/*.yaml"]\n', "pyproject.toml:5:1", "'nothing/*.yaml' matches no file"),
        ('specs = 3\n', "pyproject.toml:5:1", "specs must be a list of paths or glob patterns"),
        ('specs = ["a"\n', "pyproject.toml:5:13", "invalid TOML: Unclosed array"),
        ('specs = = 1\n', "pyproject.toml:5:9", "invalid TOML"),
    ],
)
def test_bad_settings_are_located_errors(tmp_path, capsys, monkeypatch, table, where, message):
    project(tmp_path, table)
    monkeypatch.chdir(tmp_path)
    assert main(["build"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{where}: error: "), err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "generated").exists()
