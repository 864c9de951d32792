"""ruff on the generated modules and on the generator's own code."""

import subprocess
import sys

import pytest

from conftest import GENERATED, KERNELS, ROOT, SPECS

# ruff's defaults plus import order (I) and bug-prone patterns (B): what a user's
# stricter configuration is likely to turn on.
GENERATED_RULES = "E4,E7,E9,F,I,B"


def ruff(*args):
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *args], cwd=ROOT,
                          capture_output=True, text=True)


@pytest.fixture(scope="module", autouse=True)
def ruff_installed():
    if subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode:
        pytest.fail("ruff is part of the test extra: python3 -m pip install -e '.[test]'")


def test_generated_modules_pass_ruff():
    done = ruff("--line-length", "100", "--select", GENERATED_RULES, *[str(GENERATED / f"{n}.py") for n in KERNELS])
    assert done.returncode == 0, done.stdout


def test_a_module_with_every_option_passes_ruff(tmp_path):
    from codegen.cli import main

    spec = SPECS / "gdpa_jagged.yaml"
    assert main(["build", str(spec), "-o", str(tmp_path), "-D", "activation=gelu", "-D", "qk_scale=0.5"]) == 0
    done = ruff("--line-length", "100", "--select", GENERATED_RULES, str(tmp_path / "gdpa_jagged.py"))
    assert done.returncode == 0, done.stdout


def test_the_generator_passes_ruff():
    done = ruff("codegen", "scripts")
    assert done.returncode == 0, done.stdout
