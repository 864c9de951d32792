"""The pre-commit hook as a downstream repository uses it, through `pre-commit try-repo`."""

import os
import re
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
    files = re.compile(hook["files"])
    for path in ("specs/gdpa.yaml", "generated/gdpa.py", "pyproject.toml", "kernels/x.yml"):
        assert files.search(path), path
    assert not files.search("README.md")


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


def _hook_repository(tmp_path):
    """This project's files as they are now, committed to a repository of their own, as
    pre-commit sees a hook repository (try-repo on a working tree skips untracked files)."""
    hooks = tmp_path / "hook-repo"
    for name in ("codegen", "templates"):
        shutil.copytree(ROOT / name, hooks / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml"):
        shutil.copy(ROOT / name, hooks / name)
    _git(hooks, "init", "-q")
    _git(hooks, "add", "-A")
    _git(hooks, "commit", "-qm", "hooks")
    return hooks


def _try_repo(hooks, repo, home, *extra):
    pre_commit = shutil.which("pre-commit")
    command = [pre_commit] if pre_commit else [sys.executable, "-m", "pre_commit"]
    return subprocess.run(
        [*command, "try-repo", str(hooks), "codegen-check", *extra],
        cwd=repo, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PRE_COMMIT_HOME": str(home)},
    )


def test_the_hook_catches_a_changed_spec_and_an_edited_generated_file(tmp_path):
    pytest.importorskip("pre_commit", reason="pre-commit is in the test extra: pip install -e '.[test]'")
    hooks = _hook_repository(tmp_path)
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

    done = _try_repo(hooks, repo, home, "--all-files")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Passed" in done.stdout

    # a spec change that was not rebuilt
    spec = repo / "specs" / "axpy.yaml"
    spec.write_text(spec.read_text().replace("alpha: 2.0", "alpha: 3.0"))
    _git(repo, "add", "-A")
    done = _try_repo(hooks, repo, home)
    assert done.returncode == 1, done.stdout
    assert "src/kernels/axpy.py: stale" in done.stdout
    assert "+ALPHA = 3.0" in done.stdout
    _git(repo, "checkout", "HEAD", "--", "specs/axpy.yaml")

    # a hand edit to the generated module, the spec untouched
    generated.write_text(generated.read_text().replace("ALPHA = 2.0", "ALPHA = 2.5"))
    _git(repo, "add", "-A")
    done = _try_repo(hooks, repo, home)
    assert done.returncode == 1, done.stdout
    assert "-ALPHA = 2.5" in done.stdout and "+ALPHA = 2.0" in done.stdout
