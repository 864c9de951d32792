"""The pre-commit hook as a downstream repository uses it, through `pre-commit try-repo`."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, SPECS


def test_the_hook_manifest_declares_codegen_check():
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    hook = next(h for h in hooks if h["id"] == "codegen-check")
    assert hook["entry"] == "codegen check" and hook["pass_filenames"] is False
    import re

    files = re.compile(hook["files"])
    for path in ("specs/gdpa.yaml", "generated/gdpa.py", "pyproject.toml", "kernels/x.yml"):
        assert files.search(path), path
    assert not files.search("README.md")


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


def _try_repo(repo, home, *extra):
    pre_commit = shutil.which("pre-commit")
    command = [pre_commit] if pre_commit else [sys.executable, "-m", "pre_commit"]
    return subprocess.run(
        [*command, "try-repo", str(ROOT), "codegen-check", *extra],
        cwd=repo, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PRE_COMMIT_HOME": str(home)},
    )


def test_the_hook_catches_a_changed_spec_and_an_edited_generated_file(tmp_path):
    pytest.importorskip("pre_commit", reason="pre-commit is in the test extra: pip install -e '.[test]'")
    # try-repo takes this repository's working tree, but only files git knows about.
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", ".pre-commit-hooks.yaml"], cwd=ROOT,
                             capture_output=True)
    assert tracked.returncode == 0, ".pre-commit-hooks.yaml must be committed"
    repo, home = tmp_path / "downstream", tmp_path / "pre-commit-home"
    (repo / "specs").mkdir(parents=True)
    shutil.copy(SPECS / "axpy.yaml", repo / "specs")
    (repo / "pyproject.toml").write_text(
        '[project]\nname = "downstream"\n\n[tool.codegen]\nspecs = ["specs/*.yaml"]\noutput = "src/kernels"\n'
    )
    built = subprocess.run([sys.executable, "-m", "codegen", "build"], cwd=repo, capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert built.returncode == 0, built.stderr
    generated = repo / "src" / "kernels" / "axpy.py"
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "kernels")

    done = _try_repo(repo, home, "--all-files")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Passed" in done.stdout

    # a spec change that was not rebuilt
    spec = repo / "specs" / "axpy.yaml"
    spec.write_text(spec.read_text().replace("alpha: 2.0", "alpha: 3.0"))
    _git(repo, "add", "-A")
    done = _try_repo(repo, home)
    assert done.returncode == 1, done.stdout
    assert "src/kernels/axpy.py: stale" in done.stdout
    assert "+ALPHA = 3.0" in done.stdout
    _git(repo, "checkout", "HEAD", "--", "specs/axpy.yaml")

    # a hand edit to the generated module, the spec untouched
    generated.write_text(generated.read_text().replace("ALPHA = 2.0", "ALPHA = 2.5"))
    _git(repo, "add", "-A")
    done = _try_repo(repo, home)
    assert done.returncode == 1, done.stdout
    assert "-ALPHA = 2.5" in done.stdout and "+ALPHA = 2.0" in done.stdout
