"""Files and options the user did not mean: exit 2 with an error saying what to do,
never a traceback, and no file written or changed."""

import os
import re
import shlex
import stat
from pathlib import Path

import pytest

from codegen.build import build_source
from codegen.cli import main
from codegen.errors import SpecError
from codegen.tune import Tuned, write_tune_entry
from codegen.verify import Case

from conftest import GOOD_SPEC as GOOD
from conftest import write_spec

SHAPES = ["--shape", "m=64", "--shape", "n=256"]


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def usage_error(capsys, rc) -> str:
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "internal error" not in err
    return err


# --- command-line options ------------------------------------------------------

@pytest.mark.parametrize("command", ["estimate", "tune"])
@pytest.mark.parametrize("value, why", [
    ("²", r"in the digits 0-9"),  # str.isdigit says yes; int() says no
    ("9" * 5000, r"at most 2\*\*63 - 1"),  # past int()'s digit limit
    (str(2**63), r"at most 2\*\*63 - 1"),
])
def test_a_shape_in_other_digits_or_past_int64_is_a_shape_error(tmp_path, capsys, command, value, why):
    spec = write_spec(tmp_path, GOOD)
    before = files_under(tmp_path)
    rc = main([command, str(spec), "--chip", "v5e", "--shape", f"m={value}", "--shape", "n=256"])
    err = usage_error(capsys, rc)
    assert err.startswith("error: --shape 'm=") and re.search(why, err), err
    assert len(err) < 400, "a long value is shown cut short"
    assert files_under(tmp_path) == before


def test_a_block_in_other_digits_is_a_block_error(tmp_path, capsys):
    spec = write_spec(tmp_path, GOOD)
    rc = main(["estimate", str(spec), "--chip", "v5e", *SHAPES, "--block", "block_m=٣"])
    assert usage_error(capsys, rc).startswith("error: --block 'block_m=٣'")


@pytest.mark.parametrize("command", [["estimate", "--chip", "v5e"], ["tune", "--chip", "v5e"], ["verify", "--chip", "v5e"],
                                     ["verify"]])
@pytest.mark.parametrize("python, why", [
    ("{tmp}/nonexistent", "no such file"),
    ("{tmp}", "is a folder, not an interpreter"),
    ("{tmp}/k.yaml", "is not executable"),
    ("no-such-python-here", "not found on PATH"),
])
def test_an_interpreter_that_cannot_run_is_refused_up_front(tmp_path, capsys, command, python, why):
    spec = write_spec(tmp_path, GOOD)
    before = files_under(tmp_path)
    python = python.format(tmp=tmp_path)
    rc = main([command[0], str(spec), *command[1:], *SHAPES, "--python", python])
    err = usage_error(capsys, rc)
    assert err.startswith(f"<command line>:1:1: error: --python '{python}': {why}"), err
    assert "hint: give the path of a Python interpreter" in err
    assert files_under(tmp_path) == before


def test_the_interpreter_from_the_environment_is_checked_too(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CODEGEN_TPU_PYTHON", str(tmp_path / "gone"))
    rc = main(["estimate", str(write_spec(tmp_path, GOOD)), "--chip", "v5e", *SHAPES])
    assert "error: $CODEGEN_TPU_PYTHON" in usage_error(capsys, rc)


def test_a_negative_seed_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["verify", str(write_spec(tmp_path, GOOD)), "--seed", "-1"])
    assert exit.value.code == 2
    assert "argument --seed: -1 is negative" in capsys.readouterr().err


# --- the files a build reads and writes ---------------------------------------

def test_a_generated_file_that_is_not_utf8_is_stale(tmp_path, capsys):
    spec = write_spec(tmp_path, GOOD)
    out = tmp_path / "out"
    out.mkdir()
    (out / "k.py").write_bytes(b"\xff\xfe")
    assert main(["check", str(spec), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "k.py: stale (not UTF-8 text); run `codegen build" in err and "Traceback" not in err
    assert (out / "k.py").read_bytes() == b"\xff\xfe", "check changes nothing"
    assert main(["build", str(spec), "-o", str(out)]) == 0
    assert "k.py: written" in capsys.readouterr().out
    assert main(["check", str(spec), "-o", str(out)]) == 0


def test_an_output_folder_name_too_long_is_refused(tmp_path, capsys):
    spec = write_spec(tmp_path, GOOD)
    before = files_under(tmp_path)
    for out in (tmp_path / ("o" * 300), tmp_path / "new" / ("o" * 300)):
        err = usage_error(capsys, main(["build", str(spec), "-o", str(out)]))
        assert err.startswith("<command line>:1:1: error: -o ") and "..." in err and len(err) < 400, err
    assert files_under(tmp_path) == before and not (tmp_path / "new").exists()


@pytest.mark.parametrize("length", [300, 5000])
@pytest.mark.parametrize("command", ["build", "check"])
def test_a_kernel_name_too_long_for_a_file_name_is_refused(tmp_path, capsys, command, length):
    spec = write_spec(tmp_path, GOOD.replace("name: k", "name: " + "k" * length))
    out = tmp_path / "out"
    out.mkdir()
    err = usage_error(capsys, main([command, str(spec), "-o", str(out)]))
    assert re.match(rf".*k\.yaml:1:7: error: kernel name 'k+\.\.\.k+' \({length} characters\) is too long", err), err
    assert "hint: give the kernel a shorter name" in err and len(err) < 400
    assert not any(out.iterdir())


def test_a_kernel_name_near_the_limit_still_builds(tmp_path, capsys):
    """The file is first written under a longer temporary name, which must fit too."""
    spec = write_spec(tmp_path, GOOD.replace("name: k", "name: " + "k" * 250))
    assert main(["build", str(spec), "-o", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["k" * 250 + ".py"]


@pytest.mark.parametrize("command", ["build", "check"])
def test_a_spec_the_module_would_replace_is_refused(tmp_path, capsys, command):
    folder = tmp_path / "D"
    folder.mkdir()
    spec = write_spec(folder, GOOD, "k.py")  # kernel k: its module is D/k.py
    err = usage_error(capsys, main([command, str(spec), "-o", str(folder)]))
    assert "error: the generated module" in err and "would be the spec" in err and "give the spec a .yaml name" in err
    assert spec.read_text() == GOOD
    # the same file by another name
    os.link(spec, tmp_path / "spec.yaml")
    err = usage_error(capsys, main([command, str(tmp_path / "spec.yaml"), "-o", str(folder)]))
    assert "would be the spec" in err and spec.read_text() == GOOD


@pytest.mark.parametrize("value", [".inf", "-.inf"])
def test_the_rebuild_command_in_the_header_runs(tmp_path, capsys, monkeypatch, value):
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'p'\n")
    write_spec(tmp_path, GOOD)
    monkeypatch.chdir(tmp_path)
    assert main(["build", "k.yaml", "-o", "out", "-D", f"alpha={value}"]) == 0
    built = Path("out/k.py").read_bytes()
    command = next(line[len("#   "):] for line in built.decode().splitlines() if line.startswith("#   codegen build"))
    assert command == f"codegen build k.yaml -o out --chip v5e -D alpha={value}"
    capsys.readouterr()
    assert main(shlex.split(command)[1:]) == 0, capsys.readouterr().err
    assert "out/k.py: unchanged" in capsys.readouterr().out
    assert Path("out/k.py").read_bytes() == built
    # and check's hint is the same command
    Path("out/k.py").write_bytes(built + b"# edited\n")
    assert main(["check", "k.yaml", "-o", "out", "-D", f"alpha={value}"]) == 1
    assert f"stale; run `{command}`" in capsys.readouterr().err


# --- [tool.codegen] in pyproject.toml -------------------------------------------

@pytest.mark.parametrize("toml, where, message", [
    ("[tool]\ncodegen = 5\n", 2, r"\[tool.codegen\] must be a table of settings, got an integer"),
    ("tool = 5\n", 1, r"'tool' must be a table .*, got an integer"),
    ("[tool]\ncodegen = [1]\n", 2, r"\[tool.codegen\] must be a table of settings, got an array"),
    ('[tool.codegen]\nchip = ["v5e"]\n', 2, r"chip must be a string, one of v5e, v6e, v7x, got an array"),
    ("[tool.codegen]\nchip = {a=1}\n", 2, r"chip must be a string, one of v5e, v6e, v7x, got a table"),
    ('[tool.codegen]\nspecs = ["/abs/*.yaml"]\n', 2, r"specs: the glob pattern '/abs/\*.yaml' is absolute"),
    ('[tool.codegen]\nspecs = ["k.yaml"]\noutput = "g\\u0000x"\n', 3,
     r"output must be a path \(a string\), not one with a null character"),
    ('[tool.codegen]\nspecs = ["k\\u0000.yaml"]\n', 2, r"specs: 'k\\x00.yaml' contains a null character"),
])
@pytest.mark.parametrize("command", [["build"], ["plan", "k.yaml"]])
def test_a_malformed_tool_codegen_table_is_a_located_error(tmp_path, capsys, monkeypatch, toml, where, message, command):
    write_spec(tmp_path, GOOD)
    (tmp_path / "pyproject.toml").write_text(toml)
    monkeypatch.chdir(tmp_path)
    before = files_under(tmp_path)
    err = usage_error(capsys, main(command))
    assert err.startswith(f"pyproject.toml:{where}:1: error: "), err
    assert re.search(message, err), err
    assert files_under(tmp_path) == before


# --- codegen tune writing its entry into the spec ---------------------------------

def tuned(compiler="libtpu 0.0.1"):
    shapes = {"m": 64, "n": 256}
    return Tuned("v5e", shapes, Case("tune", shapes), {"m": 16, "n": 256}, 77, compiler, [], 1.0)


def tune_into(path: Path, compiler="libtpu 0.0.1"):
    write_tune_entry(path, build_source(path), tuned(compiler))


V6E = "  v6e: {shapes: {m: 64, n: 256}, blocks: {m: 8, n: 128}, compiler: 'lib\"tpu'}\n"


def test_a_compiler_with_quotes_reads_back(tmp_path):
    spec = write_spec(tmp_path, GOOD + "tune:\n" + V6E)
    tune_into(spec, 'libtpu "nightly" \\ 2')
    entries = build_source(spec).spec.tune
    assert entries["v6e"].compiler == 'lib"tpu' and entries["v6e"].blocks == {"m": 8, "n": 128}
    assert entries["v5e"].compiler == 'libtpu "nightly" \\ 2' and entries["v5e"].blocks == {"m": 16, "n": 256}


FLOW = """\
{name: k, doc: one flow mapping,
 params: {alpha: 2.0}, axes: {m: {block: 8}, n: {block: 128}},
 tensors: {x: {dims: [m, n], dtype: float32}, out: {dims: [m, n], dtype: float32}},
 compute: {out: x * alpha}}
"""


@pytest.mark.parametrize("text, line, why", [
    (FLOW, 1, "the spec is written as one flow mapping"),
    (GOOD + "...\n", 12, "line 12 ends the YAML document"),
    # what the layout check lets through, the loader catches: a quoted `tune` key stays
    (GOOD + '"tune":\n' + V6E, 1, "the spec would no longer load .*duplicate key 'tune'"),
])
def test_a_spec_whose_layout_takes_no_appended_section_is_left_as_it_is(tmp_path, capsys, text, line, why):
    spec = write_spec(tmp_path, text)
    with pytest.raises(SpecError) as error:
        tune_into(spec)
    err = str(error.value)
    assert err.startswith(f"{spec}:{line}:1: error: cannot add a tune entry to the spec as it is laid out: "), err
    assert re.search(why, err) and "rewrite the spec in block style" in err
    assert spec.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == ["k.yaml"]


def test_a_tune_section_before_the_document_end_is_replaced_in_place(tmp_path):
    spec = write_spec(tmp_path, GOOD + "tune:\n" + V6E + "...\n# after the document\n")
    tune_into(spec)
    text = spec.read_text()
    assert text.startswith(GOOD + "tune:") and text.endswith("\n...\n# after the document\n")
    assert set(build_source(spec).spec.tune) == {"v5e", "v6e"}


def test_a_read_only_spec_is_refused_before_tuning(tmp_path, capsys):
    spec = write_spec(tmp_path, GOOD)
    spec.chmod(0o444)
    with pytest.raises(SpecError, match="the spec is read-only"):
        tune_into(spec)
    assert spec.read_text() == GOOD and stat.S_IMODE(spec.stat().st_mode) == 0o444
    # from the command line, before any candidate is compiled
    rc = main(["tune", str(spec), "--chip", "v5e", *SHAPES])
    err = usage_error(capsys, rc)
    assert "error: the spec is read-only" in err and "chmod u+w" in err and "--dry-run" in err
    assert spec.read_text() == GOOD


def test_a_symlinked_spec_is_written_through_the_link_with_its_mode(tmp_path):
    real = write_spec(tmp_path, GOOD, "real.yaml")
    real.chmod(0o640)
    link = tmp_path / "k.yaml"
    link.symlink_to("real.yaml")
    tune_into(link)
    assert link.is_symlink() and os.readlink(link) == "real.yaml"
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert build_source(real).spec.tune["v5e"].blocks == {"m": 16, "n": 256}


def test_a_crlf_spec_keeps_its_line_endings(tmp_path):
    spec = tmp_path / "k.yaml"
    spec.write_bytes((GOOD + "tune:\n" + V6E + "\n").replace("\n", "\r\n").encode())
    tune_into(spec)
    raw = spec.read_bytes()
    assert raw.count(b"\n") == raw.count(b"\r\n") > 13
    assert set(build_source(spec).spec.tune) == {"v5e", "v6e"}


@pytest.mark.parametrize("command", ["estimate", "tune"])
def test_without_chip_the_default_chip_is_used(tmp_path, capsys, command):
    """The help says [tool.codegen] chip, else the default: not `unknown chip 'None'`."""
    spec = write_spec(tmp_path, GOOD)
    rc = main([command, str(spec), "--shape", "m=64"])  # n missing: refused once the spec is built
    err = capsys.readouterr().err
    assert rc == 2 and "unknown chip" not in err and "needs a size for n" in err


def test_the_header_records_build_options_as_a_command_line_takes_them(tmp_path):
    source = build_source(write_spec(tmp_path, GOOD), {"alpha": float("-inf")}).source
    assert "# build options: --chip v5e -D alpha=-.inf" in source
