"""The suite on each supported JAX: `python3 -m nox` (what CI runs), or `nox -s tests-3.12`.

Each session installs the project with its test and TPU-compiler extras; the
interpreter decides the JAX release (see pyproject.toml): jax 0.10.2 on Python
3.11, jax 0.12.0 on Python 3.12.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_existing_virtualenvs = True

PYTHONS = ["3.11", "3.12"]


def _put_pyenv_pythons_on_path() -> None:
    """pyenv's shim for `python3.12` fails unless 3.12 is the selected version, and nox
    finds interpreters on PATH: put the bin folder of each pyenv install in front."""
    if not shutil.which("pyenv"):
        return
    root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
    for version in PYTHONS:
        name = f"python{version}"
        if shutil.which(name) and subprocess.run([name, "--version"], capture_output=True).returncode == 0:
            continue
        installs = sorted(glob.glob(f"{root}/versions/{version}.*/bin/{name}"))
        if installs:
            os.environ["PATH"] = os.path.dirname(installs[-1]) + os.pathsep + os.environ["PATH"]


_put_pyenv_pythons_on_path()


@nox.session(python=PYTHONS, venv_backend="venv")
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test,tpu]")
    session.run("python", "-c", "import jax, libtpu, sys; print('python', sys.version.split()[0], 'jax', jax.__version__)")
    session.run("python", "-m", "pytest", *session.posargs)
