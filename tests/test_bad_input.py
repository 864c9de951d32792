"""Hostile or careless input: located errors with exit 2, never a traceback, a
generator-bug exit or a partial write."""

import os
import re
import stat
import subprocess
import sys
import time

import pytest

from codegen import build as build_module
from codegen.cli import main
from codegen.errors import Location, SpecError
from codegen.spec import parse_override, parse_spec

from conftest import GOOD_SPEC as GOOD
from conftest import ROOT, SPECS, write_spec

PAGED = (SPECS / "paged_attention.yaml").read_text()
GDPA = (SPECS / "gdpa.yaml").read_text()


def edit(text, old, new):
    assert old in text, old
    return text.replace(old, new, 1)


def build(tmp_path, text, *options, name="k.yaml"):
    """Run `codegen build` on `text`; returns (exit code, stderr, output folder)."""
    spec = write_spec(tmp_path, text, name)
    out = tmp_path / "out"
    return main(["build", str(spec), "-o", str(out), *options]), out


def assert_spec_error(capsys, rc, out, spec_name="k.yaml", line=None, col=None, pattern=""):
    captured = capsys.readouterr()
    err = captured.err
    assert rc == 2, err
    assert "Traceback" not in err and "internal error" not in err
    first = err.splitlines()[0]
    match = re.match(r"(.+):(\d+):(\d+): error: (.*)", first)
    assert match and match[1].endswith(spec_name), err
    if line is not None:
        assert int(match[2]) == line, err
    if col is not None:
        assert int(match[3]) == col, err
    assert re.search(pattern, err, re.S), err
    assert not out.exists(), "nothing may be written on failure"
    return err


# --- tracebacks that are now located errors --------------------------------

@pytest.mark.parametrize(
    "old, new, line, col, pattern",
    [
        ("block: 8}", "block: 064}", 5, 14, r"'064' has a leading zero.*write 64"),
        ("block: 8}", "block: 1:30}", 5, 14, r"base-60"),
        ("alpha: 2.0", "alpha: 1:30.5", 3, 10, r"base-60"),
        ("block: 8}", "block: " + "9" * 300 + "}", 5, 14, r"integer out of range"),
        ("alpha: 2.0", "alpha: " + "9" * 5000, 3, 10, r"integer out of range"),
        ("alpha: 2.0", "alpha: 1" + "0" * 400 + ".0", 3, 10, r"number out of range"),
        ("name: k", 'name: k\ndoc: "\\ud800"', 2, 6, r"lone surrogate"),
        ("name: k", 'name: k\ndoc: "\\U00110000"', 2, 9, r"escape names no Unicode character"),
        ("name: k", "name: k\ndoc: &d [*d]", 2, 6, r"recursive alias"),
        ("out: x * alpha", "out: " + "exp(" * 140 + "x" + ")" * 140, 11, None, r"nests more than 64 levels"),
        ("out: x * alpha", "out: " + " + ".join(["x"] * 350), 11, None, r"nests more than 64 levels"),
        ("out: x * alpha", "out: " + "-" * 1000 + "x", 11, None, r"nests more than 64 levels"),
        ("name: k", "name: k\ndoc: " + "[" * 2000 + "]" * 2000, 2, None, r"nest"),
    ],
    ids=["leading zero", "sexagesimal int", "sexagesimal float", "300 digits", "5000 digits", "float overflow",
         "lone surrogate", "escape out of range", "recursive alias", "140 nested calls", "350 terms",
         "1000 unary minuses", "deep YAML"],
)
def test_bad_numbers_text_and_depth_are_located_errors(tmp_path, capsys, old, new, line, col, pattern):
    rc, out = build(tmp_path, edit(GOOD, old, new))
    err = assert_spec_error(capsys, rc, out, pattern=pattern)
    assert f"k.yaml:{line}:" in err.splitlines()[0]
    if col is not None:
        assert f"k.yaml:{line}:{col}:" in err.splitlines()[0]


def test_an_expression_just_under_the_depth_bound_builds(tmp_path, capsys):
    text = edit(GOOD, "out: x * alpha", "out: " + "exp(" * 60 + "x" + ")" * 60)
    rc, out = build(tmp_path, text)
    assert rc == 0, capsys.readouterr().err
    assert "jnp.exp(" * 60 in (out / "k.py").read_text().replace("\n", "").replace(" ", "")


@pytest.mark.parametrize(
    "define, pattern",
    [
        ("alpha=" + "9" * 500, r"-D alpha: integer out of range"),
        ("alpha=.nan", r"-D alpha: NaN is not allowed"),
        ("alpha=064", r"-D alpha: '064' has a leading zero"),
        ("alpha=1e400", r"-D alpha: number out of range"),
        ("alpha=a\nb", r"is not a number, boolean or name"),
        (("alpha=1", "-D", "alpha=2"), r"-D alpha is given twice"),
    ],
)
def test_bad_define_values_are_usage_errors(tmp_path, capsys, define, pattern):
    rc, out = build(tmp_path, GOOD, "-D", *([define] if isinstance(define, str) else define))
    captured = capsys.readouterr()
    assert rc == 2 and "Traceback" not in captured.err
    assert captured.err.startswith("<command line>:1:1: error: "), captured.err
    assert re.search(pattern, captured.err), captured.err
    assert len(captured.err.strip().splitlines()) <= 2  # message and hint, never broken by the value
    assert not out.exists()


def test_numbers_in_yaml_1_2_form_are_numbers(tmp_path):
    spec = parse_spec(edit(GOOD, "alpha: 2.0", "alpha: 1e-3"), "k.yaml")
    assert spec.params["alpha"].value == 0.001
    assert parse_override("alpha=1e-3") == ("alpha", 0.001)
    assert parse_override("alpha=-2E+2") == ("alpha", -200.0)
    # quoted, it stays text
    with pytest.raises(SpecError, match="is not a valid name"):
        parse_spec(edit(GOOD, "alpha: 2.0", "alpha: '1e-3'"), "k.yaml")


def test_an_integral_float_is_an_integer_as_in_json_schema():
    spec = parse_spec(edit(GOOD, "block: 8}", "block: 8.0}"), "k.yaml")
    assert spec.axes["m"].block == 8 and isinstance(spec.axes["m"].block, int)
    with pytest.raises(SpecError, match="must be a positive integer, got 8.5"):
        parse_spec(edit(GOOD, "block: 8}", "block: 8.5}"), "k.yaml")


# --- exit 3 (generator bug) that was a spec mistake -------------------------

def test_a_name_with_a_trailing_newline_is_invalid(tmp_path, capsys):
    rc, out = build(tmp_path, edit(GOOD, "name: k", 'name: "k\\n"'))
    err = assert_spec_error(capsys, rc, out, line=1, col=7, pattern=r"kernel name 'k\\n' is not a valid name")
    assert len(err.strip().splitlines()) == 2  # the newline is shown escaped


def test_a_paged_table_width_axis_may_have_any_name(tmp_path, capsys):
    text = PAGED.replace("  pages: {}", "  width: {}").replace("[b, pages]", "[b, width]").replace(" pages: 128", " width: 128")
    rc, out = build(tmp_path, text)
    assert rc == 0, capsys.readouterr().err
    source = (out / "paged_attention.py").read_text()
    assert "width" in source and re.search(r"\bpages\b", source.split('"""')[-1]) is None


def test_a_tensor_name_containing_ref_is_not_mangled(tmp_path, capsys):
    text = re.sub(r"\bk\b", "k_ref", GDPA.split("compute:")[0]) + "compute:" + re.sub(r"\bk\b", "k_ref", GDPA.split("compute:")[1])
    rc, out = build(tmp_path, text)
    assert rc == 0, capsys.readouterr().err
    source = (out / "gdpa.py").read_text()
    assert "k_ref_hbm_ref" in source
    assert "k_hbm_ref_hbm_ref" not in source


# --- path injection ---------------------------------------------------------

@pytest.mark.parametrize("name", ["a\nimport os; os.system('true')\n.yaml", "tab\there.yaml", "cr\r.yaml"])
def test_a_spec_path_with_control_characters_is_refused_on_one_line(tmp_path, capsys, name):
    rc, out = build(tmp_path, GOOD, name=name)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 2, err  # message and hint, the path escaped
    assert "the spec's path contains a control character" in err
    assert not out.exists()


def test_a_folder_name_with_a_newline_is_refused(tmp_path, capsys):
    (tmp_path / "pyproject.toml").write_text("")  # the header shows the path from here
    folder = tmp_path / "x\nimport os"
    folder.mkdir()
    rc, out = build(folder, GOOD)
    err = capsys.readouterr().err
    assert rc == 2 and "control character" in err and len(err.strip().splitlines()) == 2
    assert not out.exists()


def test_error_locations_never_break_lines():
    loc = Location("a\nb.yaml", 1, 2)
    assert str(SpecError("bad\nthing", loc, "try\nthis")) == "a\\nb.yaml:1:2: error: bad\\nthing\n  hint: try\\nthis"


# --- alias bomb -------------------------------------------------------------

def test_an_alias_bomb_is_refused_quickly(tmp_path, capsys):
    bomb = "name: k\ndoc: &a0 [x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        bomb += f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
    assert len(bomb) < 700
    started = time.perf_counter()
    rc, out = build(tmp_path, bomb)
    assert time.perf_counter() - started < 2.0
    assert_spec_error(capsys, rc, out, pattern=r"expands to more than \d+ YAML nodes")


def test_a_few_aliases_still_work(tmp_path, capsys):
    text = edit(edit(GOOD, "x: {dims: [m, n]", "x: {dims: &mn [m, n]"), "out: {dims: [m, n]", "out: {dims: *mn")
    rc, out = build(tmp_path, text)
    assert rc == 0, capsys.readouterr().err


# --- reserved names ---------------------------------------------------------

@pytest.mark.parametrize("name", ["tuple", "sum", "range", "len", "print", "checkify", "debug"])
def test_builtins_are_reserved(tmp_path, capsys, name):
    rc, out = build(tmp_path, GOOD.replace("alpha", name))
    assert_spec_error(capsys, rc, out, line=3, col=3, pattern=rf"param '{name}' is reserved in generated code")


@pytest.mark.parametrize("name", ["values", "keys", "items", "update", "copy"])
def test_dict_method_names_are_ordinary_names(tmp_path, capsys, name):
    rc, out = build(tmp_path, GOOD.replace("alpha", name))
    assert rc == 0, capsys.readouterr().err
    assert f"{name.upper()} = 2.0" in (out / "k.py").read_text()


# --- smaller ----------------------------------------------------------------

def test_empty_dims_are_located(tmp_path, capsys):
    rc, out = build(tmp_path, edit(GOOD, "x: {dims: [m, n]", "x: {dims: []"))
    assert_spec_error(capsys, rc, out, line=8, col=13, pattern=r"tensors.x.dims must be a non-empty list")


def test_an_axis_named_like_a_fused_dim_is_refused(tmp_path, capsys):
    text = PAGED.replace("  d: {max: 128}", "  d: {max: 128}\n  kvh_g: {}")
    rc, out = build(tmp_path, text)
    assert_spec_error(capsys, rc, out, line=14, col=3, pattern=r"axis 'kvh_g' clashes with a name generated for 'kvh\*g'")


def test_two_specs_with_one_name_are_refused(tmp_path, capsys):
    first = write_spec(tmp_path, GOOD, "a.yaml")
    second = write_spec(tmp_path, GOOD.replace("alpha: 2.0", "alpha: 3.0"), "b.yaml")
    out = tmp_path / "out"
    rc = main(["build", str(first), str(second), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith(f"{second}:1:7: error: kernel name 'k' is also the name of {first}"), err
    assert not out.exists()


def test_an_unclosed_quote_is_reported_where_it_opens(tmp_path, capsys):
    rc, out = build(tmp_path, GOOD + 'doc: "abc\n')
    assert_spec_error(capsys, rc, out, line=12, col=6, pattern=r"the file ends while scanning a quoted scalar")


def test_a_syntax_error_is_never_past_the_end_of_the_file(tmp_path, capsys):
    rc, out = build(tmp_path, GOOD + "rules: [a, b")
    err = assert_spec_error(capsys, rc, out)
    line = int(re.search(r"k\.yaml:(\d+):", err)[1])
    assert line <= len((GOOD + "rules: [a, b").splitlines())


def test_a_keyword_given_twice_is_refused(tmp_path, capsys):
    text = edit(edit(GOOD, "n: {block: 128}", "n: {}"), "out: x * alpha", "out: x * sum(x, over=n, over=m)")
    text = edit(text, "out: {dims: [m, n]", "out: {dims: [m]")
    rc, out = build(tmp_path, text)
    assert_spec_error(capsys, rc, out, line=11, col=27, pattern=r"keyword argument 'over' is given twice")


def test_a_non_utf8_spec_is_located(tmp_path, capsys):
    spec = tmp_path / "k.yaml"
    spec.write_bytes(GOOD.encode().replace(b"alpha: 2.0", b"alpha: \xff"))
    out = tmp_path / "out"
    rc = main(["build", str(spec), "-o", str(out)])
    assert_spec_error(capsys, rc, out, line=3, col=10, pattern="not UTF-8")


# --- the output folder ------------------------------------------------------

def test_output_naming_a_file_is_a_usage_error(tmp_path, capsys):
    spec = write_spec(tmp_path, GOOD)
    afile = tmp_path / "afile"
    afile.write_text("keep\n")
    for out in (afile, afile / "under"):
        assert main(["build", str(spec), "-o", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("<command line>:1:1: error: -o ") and "a file, not a folder" in err, err
    assert afile.read_text() == "keep\n"


def test_a_target_that_is_a_folder_is_a_usage_error(tmp_path, capsys):
    spec = write_spec(tmp_path, GOOD)
    (tmp_path / "out" / "k.py").mkdir(parents=True)
    assert main(["build", str(spec), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("<command line>:1:1: error: cannot write ") and "Is a directory" in err, err


def test_an_unwritable_folder_is_a_usage_error(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path, GOOD)
    real_open = os.open

    def refuse(path, flags, mode=0o777, **kw):
        if str(path).endswith(".tmp"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, mode, **kw)

    monkeypatch.setattr(build_module.os, "open", refuse)
    out = tmp_path / "out"
    assert main(["build", str(spec), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"<command line>:1:1: error: cannot write {out / 'k.py'}: Permission denied"), err
    assert not out.exists(), "a folder created for the build is removed again"


# --- all-or-nothing writes ---------------------------------------------------

def _specs(tmp_path, n=3):
    return [write_spec(tmp_path, GOOD.replace("name: k", f"name: k{i}"), f"k{i}.yaml") for i in range(n)]


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_a_failed_rename_puts_back_every_file_already_replaced(tmp_path, capsys, monkeypatch):
    specs = _specs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    for i in range(3):
        (out / f"k{i}.py").write_text(f"# old {i}\n")
    real_replace = os.replace
    calls = []

    def fail_third(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(build_module.os, "replace", fail_third)
    assert main(["build", *map(str, specs), "-o", str(out)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert [(out / f"k{i}.py").read_text() for i in range(3)] == [f"# old {i}\n" for i in range(3)]
    assert _leftovers(out) == []


def test_a_failed_staging_replaces_nothing_and_leaves_no_temporaries(tmp_path, capsys, monkeypatch):
    specs = _specs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "k0.py").write_text("# old\n")
    real_stage = build_module._stage
    count = []

    def fail_second(target, text):
        count.append(target)
        if len(count) == 2:
            raise OSError(5, "Input/output error")
        return real_stage(target, text)

    monkeypatch.setattr(build_module, "_stage", fail_second)
    assert main(["build", *map(str, specs), "-o", str(out)]) == 2
    assert (out / "k0.py").read_text() == "# old\n"
    assert sorted(p.name for p in out.iterdir()) == ["k0.py"]


def test_file_modes(tmp_path, capsys):
    spec = write_spec(tmp_path, GOOD)
    out = tmp_path / "out"
    code = (
        "import os, sys; os.umask(0o022); from codegen.cli import main; "
        f"sys.exit(main(['build', {str(spec)!r}, '-o', {str(out)!r}]))"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    target = out / "k.py"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    target.chmod(0o664)
    target.write_text("# stale\n")
    assert main(["build", str(spec), "-o", str(out)]) == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o664 and target.read_text() != "# stale\n"


# --- paths as the user sees them -------------------------------------------

def _project(tmp_path):
    project = tmp_path / "proj"
    (project / "specs").mkdir(parents=True)
    (project / "pyproject.toml").write_text("[project]\nname = 'downstream'\n")
    write_spec(project / "specs", GOOD)
    return project


def test_the_default_output_is_under_the_project_root(tmp_path, capsys, monkeypatch):
    project = _project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["build", "../proj/specs/k.yaml"]) == 0
    assert "../proj/generated/k.py: written" in capsys.readouterr().out
    assert (project / "generated" / "k.py").exists() and not (elsewhere / "generated").exists()
    header = (project / "generated" / "k.py").read_text().splitlines()[:5]
    assert header[0].endswith("from specs/k.yaml")
    assert header[4] == "#   codegen build specs/k.yaml -o generated --chip v5e"


def test_errors_show_the_path_the_user_gave(tmp_path, capsys, monkeypatch):
    project = _project(tmp_path)
    (project / "specs" / "k.yaml").write_text(edit(GOOD, "x * alpha", "x * nope"))
    monkeypatch.chdir(project / "specs")
    assert main(["build", "k.yaml"]) == 2
    assert capsys.readouterr().err.startswith("k.yaml:11:12: error: undefined name 'nope'")
    monkeypatch.chdir(tmp_path)
    assert main(["build", "proj/specs/k.yaml"]) == 2
    assert capsys.readouterr().err.startswith("proj/specs/k.yaml:11:12: error:")


def test_the_header_and_check_give_the_exact_rebuild_command(tmp_path, capsys, monkeypatch):
    project = _project(tmp_path)
    monkeypatch.chdir(project)
    assert main(["build", "specs/k.yaml", "-o", "src/kernels", "--chip", "v6e", "-D", "alpha=0.5"]) == 0
    target = project / "src" / "kernels" / "k.py"
    command = "codegen build specs/k.yaml -o src/kernels --chip v6e -D alpha=0.5"
    assert f"#   {command}" in target.read_text().splitlines()
    target.write_text(target.read_text() + "# edited\n")
    assert main(["check", "specs/k.yaml", "-o", "src/kernels", "--chip", "v6e", "-D", "alpha=0.5"]) == 1
    assert f"stale; run `{command}`" in capsys.readouterr().err
    # the command in the header reproduces the file
    assert main(command.split()[1:]) == 0
    assert main(["check", *command.split()[2:]]) == 0


def test_verify_without_jax_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['jax'] = None; from codegen.cli import main; "
        f"sys.exit(main(['verify', {str(SPECS / 'exp.yaml')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "codegen verify needs JAX" in done.stderr and "tpu-codegen[jax]" in done.stderr


def test_a_vmem_overflow_from_an_axis_max_is_blamed_on_that_max(tmp_path, capsys):
    text = (SPECS / "softmax.yaml").read_text().replace("n: {max: 4096}", "n: {max: 100000000}")
    rc, out = build(tmp_path, text, name="softmax.yaml")
    err = assert_spec_error(capsys, rc, out, "softmax.yaml", 5, 12, r"MiB of VMEM, over the 128 MiB")
    assert "use a smaller max" in err
    # and an overflow from blocks is still blamed on the largest block
    rc, out = build(tmp_path, edit(edit(GOOD, "m: {block: 8}", "m: {block: 8192}"), "n: {block: 128}", "n: {block: 16384}"))
    err = assert_spec_error(capsys, rc, out, line=6, col=14, pattern=r"MiB of VMEM")
    assert "use smaller blocks" in err


def test_a_vmem_overflow_counting_an_axis_of_unknown_size_names_that_axis(tmp_path, capsys):
    """'n' has no max: the estimate counts 512 for it, which the message says."""
    text = edit(edit(GOOD, "m: {block: 8}", "m: {block: 32768}"), "n: {block: 128}", "n: {}")
    rc, out = build(tmp_path, text)
    err = assert_spec_error(capsys, rc, out, line=6, col=3, pattern=r"counting 512 for 'n', which every block holds whole")
    assert "give 'n' a max" in err


def test_an_output_folder_with_a_control_character_is_refused(tmp_path, capsys):
    spec = write_spec(tmp_path, GOOD)
    out = tmp_path / "out\nx"
    assert main(["build", str(spec), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("<command line>:1:1: error: -o: the output folder's path contains a control character")
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_a_spec_path_in_a_symlink_loop_is_a_located_error(tmp_path, capsys):
    loop = tmp_path / "loop.yaml"
    loop.symlink_to(loop)
    out = tmp_path / "out"
    assert main(["build", str(loop), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{loop}:1:1: error: cannot resolve the path"), err
    assert not out.exists()


# --- literals, characters and tags ------------------------------------------

@pytest.mark.parametrize("literal", ["0x" + "f" * 4000, "9" * 30, "-9223372036854775809"])
def test_an_integer_literal_beyond_int64_is_refused(tmp_path, capsys, literal):
    rc, out = build(tmp_path, GOOD.replace("out: x * alpha", f"out: x * {literal}"))
    assert_spec_error(capsys, rc, out, line=11, col=12 + literal.startswith("-"), pattern="integer literal out of range")


def test_the_largest_int64_literal_is_a_number(tmp_path, capsys):
    rc, out = build(tmp_path, GOOD.replace("out: x * alpha", "out: x * 9223372036854775807"))
    assert rc == 0, capsys.readouterr().err


@pytest.mark.parametrize("expression, col", [('"\uff58 * alpha"', 9), ('"x * \uff58"', 13)])
def test_an_expression_is_ascii(tmp_path, capsys, expression, col):
    """Python would read a full-width x as x; the error column counts characters."""
    rc, out = build(tmp_path, GOOD.replace("out: x * alpha", f"out: {expression}"))
    assert_spec_error(capsys, rc, out, line=11, col=col, pattern=r"expressions are ASCII; found 'ｘ' \(U\+FF58\)")


def test_float16_is_refused_with_what_to_use(tmp_path, capsys):
    rc, out = build(tmp_path, GOOD.replace("float32", "float16"))
    err = assert_spec_error(capsys, rc, out, line=8, pattern=r"tensors.x.dtype 'float16' is not a supported dtype")
    assert "use bfloat16, or float32" in err
    (tmp_path / "cast").mkdir()
    rc, out = build(tmp_path / "cast", GOOD.replace("out: x * alpha", "out: cast(x, float16)"))
    assert_spec_error(capsys, rc, out, line=11, pattern=r"cast\(\) needs a supported dtype, got 'float16'")


def test_a_structured_value_is_shown_as_written(tmp_path, capsys):
    rc, out = build(tmp_path, GOOD.replace("name: k", "name: [k]"))
    err = assert_spec_error(capsys, rc, out, line=1, pattern=r"kernel name \['k'\] is not a valid name")
    assert "Node(" not in err and "Location(" not in err


def test_a_surrogate_pair_escape_is_one_character(tmp_path, capsys):
    rc, out = build(tmp_path, GOOD.replace("name: k\n", 'name: k\ndoc: "smile \\ud83d\\ude00"\n'))
    assert rc == 0, capsys.readouterr().err
    assert '"""smile \U0001F600"""' in (out / "k.py").read_text()
    (tmp_path / "lone").mkdir()
    rc, out = build(tmp_path / "lone", GOOD.replace("name: k\n", 'name: k\ndoc: "half \\ud83d"\n'))
    assert_spec_error(capsys, rc, out, line=2, pattern="lone surrogate")


def test_a_bidirectional_control_never_reaches_the_source(tmp_path, capsys):
    rc, out = build(tmp_path, GOOD.replace("name: k\n", 'name: k\ndoc: "x \\u202e y"\n'))
    assert_spec_error(capsys, rc, out, line=2, pattern="bidirectional control U\\+202E")


@pytest.mark.parametrize("tagged", ["x: !!python/object:os.system {dims", "x: {dims: !!set"])
def test_a_tag_on_a_mapping_or_sequence_is_refused(tmp_path, capsys, tagged):
    rc, out = build(tmp_path, GOOD.replace("x: {dims" if "set" not in tagged else "x: {dims:", tagged))
    assert_spec_error(capsys, rc, out, line=8, pattern="unsupported YAML tag")


# --- tune entries -----------------------------------------------------------

@pytest.mark.parametrize("entry, pattern", [
    ("{v5e: {shapes: {m: 64}, blocks: {n: 100}}}", r"tune.v5e: block 100 of axis 'n' breaks TPU tiling"),
    ("{v7x: {shapes: {m: 64}, blocks: {m: 4}}}", r"tune.v7x: block 4 of axis 'm' breaks TPU tiling"),
    ("{v5e: {shapes: {zz: 64}, blocks: {n: 256}}}", r"tune.v5e.shapes: 'zz' is not an axis or a jagged max"),
    ("{v5e: {shapes: {}, blocks: {n: 256}}}", r"tune.v5e.shapes: no sizes"),
])
def test_a_tune_entry_is_checked_as_the_spec_is(tmp_path, capsys, entry, pattern):
    """A build for the chip defaults to the entry's blocks, so they must tile as the spec's do."""
    rc, out = build(tmp_path, GOOD + f"tune: {entry}\n")
    assert_spec_error(capsys, rc, out, line=12, pattern=pattern)


# --- a kernel of positions alone ---------------------------------------------

def test_a_kernel_without_inputs_takes_its_sizes_as_keywords(tmp_path, capsys):
    import importlib.util

    import numpy as np

    text = GOOD.replace("  x: {dims: [m, n], dtype: float32}\n", "").replace("out: x * alpha", "out: index(m) * alpha + index(n)")
    rc, out = build(tmp_path, text)
    assert rc == 0, capsys.readouterr().err
    spec = importlib.util.spec_from_file_location("positions_only", out / "k.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    got = np.asarray(module.k(m=20, n=300, interpret=True))
    rows, cols = np.meshgrid(np.arange(20), np.arange(300), indexing="ij")
    np.testing.assert_array_equal(got, rows * 2.0 + cols)


@pytest.mark.parametrize("written", ["x *\n    nope", ">-\n    x * nope", '"x \\x2a nope"'], ids=["plain", "folded", "escaped"])
def test_an_error_in_a_folded_or_escaped_expression_is_shown_at_its_start(tmp_path, capsys, written):
    """Their text is not the source column for column: a column inside it would point elsewhere."""
    rc, out = build(tmp_path, GOOD.replace("out: x * alpha", f"out: {written}"))
    start = 9 if written.startswith('"') else 8
    assert_spec_error(capsys, rc, out, line=11, col=start, pattern="undefined name 'nope'")
