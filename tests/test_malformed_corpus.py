"""The malformed-spec corpus in tests/malformed/: one mistake per file.

Each file's first line says where the error must be reported and what it must
say: `# error at LINE:COL: REGEX`. Every case must exit 2 with exactly that
`file:LINE:COL: error:` location, print no traceback, and write nothing.
"""

import re
from pathlib import Path

import pytest

from codegen.cli import main

CORPUS = sorted((Path(__file__).parent / "malformed").glob("*.yaml"))
EXPECTATION = re.compile(rb"# error at (\d+):(\d+): (.*)\n")


def test_the_corpus_has_at_least_a_hundred_cases():
    assert len(CORPUS) >= 100


@pytest.mark.parametrize("path", CORPUS, ids=[p.stem for p in CORPUS])
def test_malformed_spec_is_a_located_error(tmp_path, capsys, path):
    raw = path.read_bytes()
    expected = EXPECTATION.match(raw)
    assert expected, f"{path.name}: the first line must be '# error at LINE:COL: REGEX'"
    line, col, pattern = int(expected[1]), int(expected[2]), expected[3].decode()
    spec = tmp_path / "k.yaml"
    spec.write_bytes(raw)
    out = tmp_path / "out"
    rc = main(["build", str(spec), "-o", str(out)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and "internal error" not in err
    assert err.startswith(f"{spec}:{line}:{col}: error: "), err
    assert re.search(pattern, err, re.S), err
    assert not out.exists(), "nothing may be written on failure"
