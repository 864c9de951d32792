"""Mutate the specs in specs/ and run each mutant through `codegen check`.

Every mutant must end in one of three ways: it builds, or it is refused with
exit 2 and a `file:line:col: error:` message (or `<command line>:1:1:` for a
-D mutant). A traceback (a crash) or exit 3 (a generator bug) is a finding.

    python3 scripts/fuzz_specs.py --count 10000 --seed 0 --jobs 2

Mutant i is made from its own generator seeded with (seed, i), so a run is
reproducible, in any order and over any number of processes; `--show N`
prints mutant N's text to reproduce a finding.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing
import random
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from codegen.cli import main  # noqa: E402

SPECS = sorted((ROOT / "specs").glob("*.yaml"))
LOCATED = re.compile(r"^.+:\d+:\d+: error: \S")

# Replacement material: names the specs use, names the generated code uses, and
# values at the edges of what a spec may hold.
NAMES = [
    "m", "n", "k", "b", "d", "h", "sq", "skv", "t", "pages", "x", "out", "q", "v", "acc", "l", "p", "s",
    "tuple", "sum", "range", "values", "keys", "lambda", "jax", "jnp", "pl", "kernel", "slot", "page",
    "x_ref", "out_ref", "x_t", "block_m", "num_m_tiles", "m_n", "kvh_g", "interpret", "grid",
    "Q", "_x", "x1", "a" * 80, "é", "k\\n",
]
NUMBERS = [
    "0", "1", "-1", "7", "8", "16", "100", "128", "128.0", "8.5", "064", "0x80", "0b1", "1:30", "1_000",
    "1e-3", "1e400", "-.inf", ".inf", ".nan", "9" * 40, "9" * 400, "2.0", "-0.0", "true", "null", "~",
    "'8'", "[8]", "{}",
]
DTYPES = ["float32", "bfloat16", "float16", "int32", "int16", "int8", "float64", "bool", "uint8"]
FUNCTIONS = ["exp", "log", "sqrt", "rsqrt", "tanh", "sigmoid", "abs", "maximum", "minimum", "sum", "max",
             "min", "dot", "cast", "extent", "relu", "fast_gelu", "activation", "print", "__import__"]
NOISE = ["", " ", ":", ": ", "-", "- ", "[", "]", "{", "}", ",", "'", '"', "#", "&a", "*a", "!!python/none",
         "|", ">", "\t", "\\", "\x00", "\ud800", "\u2028", "\n", "\n  ", "?", "%", "@", "`", "*", "+1", "**",
         "(", ")", "=", "over=", ".", "..", "\ufeff"]
DEFINES = ["alpha=0.5", "qk_scale=2", "activation=silu", "activation=nope", "x=1", "qk_scale=.nan",
           "qk_scale=" + "9" * 300, "qk_scale=1e-3", "activation=1", "a b=1", "=1", "qk_scale=", "qk_scale=1:30"]


def _lines(text):
    return text.split("\n")


def replace_word(rng, text):
    words = list(re.finditer(r"[A-Za-z_][A-Za-z0-9_]*", text))
    if not words:
        return text
    w = rng.choice(words)
    pool = rng.choice([NAMES, DTYPES, FUNCTIONS, [m.group() for m in words]])
    return text[: w.start()] + rng.choice(pool) + text[w.end():]


def replace_number(rng, text):
    numbers = list(re.finditer(r"(?<![A-Za-z_])-?\.?[0-9][0-9.]*", text))
    if not numbers:
        return replace_word(rng, text)
    n = rng.choice(numbers)
    return text[: n.start()] + rng.choice(NUMBERS) + text[n.end():]


def insert_noise(rng, text):
    i = rng.randrange(len(text) + 1)
    return text[:i] + rng.choice(NOISE) + text[i:]


def delete_span(rng, text):
    i = rng.randrange(len(text) + 1)
    return text[:i] + text[i + rng.randint(1, 12):]


def delete_line(rng, text):
    lines = _lines(text)
    del lines[rng.randrange(len(lines))]
    return "\n".join(lines)


def duplicate_line(rng, text):
    lines = _lines(text)
    i = rng.randrange(len(lines))
    lines.insert(rng.randrange(len(lines) + 1), lines[i])
    return "\n".join(lines)


def swap_lines(rng, text):
    lines = _lines(text)
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    return "\n".join(lines)


def reindent(rng, text):
    lines = _lines(text)
    i = rng.randrange(len(lines))
    lines[i] = rng.choice(["", " ", "  ", "    ", "\t"]) + lines[i].lstrip()
    return "\n".join(lines)


def change_operator(rng, text):
    ops = list(re.finditer(r" [-+*/] ", text))
    if not ops:
        return insert_noise(rng, text)
    o = rng.choice(ops)
    return text[: o.start()] + rng.choice([" + ", " - ", " * ", " / ", " ** ", " % ", " @ ", " , ", " < ", "."]) + text[o.end():]


def deepen_expression(rng, text):
    lines = _lines(text)
    compute = [i for i, line in enumerate(lines) if re.match(r"  \w+: ", line) and "(" in line or " * " in line]
    if not compute:
        return insert_noise(rng, text)
    i = rng.choice(compute)
    name, _, expr = lines[i].partition(": ")
    depth = rng.choice([2, 30, 63, 70, 200, 400])
    wrapped = rng.choice([
        "exp(" * depth + expr + ")" * depth,
        " + ".join([expr] * depth),
        "-" * depth + "(" + expr + ")",
    ])
    lines[i] = f"{name}: {wrapped}"
    return "\n".join(lines)


def add_alias(rng, text):
    lines = _lines(text)
    i = rng.randrange(len(lines))
    if ": " in lines[i]:
        key, _, value = lines[i].partition(": ")
        lines[i] = f"{key}: &a {value}" if rng.random() < 0.5 else f"{key}: *a"
    return "\n".join(lines)


def truncate(rng, text):
    return text[: rng.randrange(len(text) + 1)]


def splice(rng, text):
    other = rng.choice(SPECS).read_text()
    a, b = _lines(text), _lines(other)
    i, j = rng.randrange(len(a) + 1), rng.randrange(len(b))
    return "\n".join(a[:i] + b[j: j + rng.randint(1, 4)] + a[i:])


MUTATIONS = [replace_word, replace_word, replace_number, replace_number, insert_noise, delete_span,
             delete_line, duplicate_line, swap_lines, reindent, change_operator, deepen_expression,
             add_alias, truncate, splice]


@dataclass
class Mutant:
    index: int
    spec: str
    text: str
    defines: list[str] = field(default_factory=list)
    mutations: list[str] = field(default_factory=list)


def make_mutant(seed: int, index: int) -> Mutant:
    rng = random.Random(f"{seed}/{index}")
    source = rng.choice(SPECS)
    text = source.read_text(encoding="utf-8")
    mutant = Mutant(index, source.name, text)
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 5])):
        mutation = rng.choice(MUTATIONS)
        mutant.text = mutation(rng, mutant.text)
        mutant.mutations.append(mutation.__name__)
    if rng.random() < 0.1:
        mutant.defines = ["-D", rng.choice(DEFINES)]
    return mutant


@dataclass
class Outcome:
    index: int
    kind: str  # "built", "refused", "unlocated", "bug", "crash"
    detail: str = ""


def run_mutant(seed: int, index: int) -> Outcome:
    mutant = make_mutant(seed, index)
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / mutant.spec
        spec.write_text(mutant.text, encoding="utf-8", errors="surrogatepass")
        out = Path(tmp) / "out"
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                rc = main(["check", str(spec), "-o", str(out), *mutant.defines])
            except SystemExit as exit:  # argparse
                rc = exit.code
            except BaseException:  # noqa: BLE001 - every escape is the finding
                return Outcome(index, "crash", traceback.format_exc(limit=-3))
        message = err.getvalue()
        if out.exists():
            return Outcome(index, "crash", "check wrote files")
    if rc in (0, 1):
        return Outcome(index, "built")
    if rc == 3:
        return Outcome(index, "bug", message.strip())
    if rc == 2 and LOCATED.match(message) and "Traceback" not in message:
        return Outcome(index, "refused")
    return Outcome(index, "unlocated", f"exit {rc}: {message.strip()[:300]}")


def _run(args):
    return run_mutant(*args)


def fuzz(count: int, seed: int = 0, jobs: int = 1) -> dict[str, list[Outcome]]:
    """Run mutants 0..count-1; returns the outcomes grouped by kind."""
    work = [(seed, i) for i in range(count)]
    if jobs > 1:
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            outcomes = pool.map(_run, work, chunksize=16)
    else:
        outcomes = [_run(w) for w in work]
    grouped: dict[str, list[Outcome]] = {k: [] for k in ("built", "refused", "unlocated", "bug", "crash")}
    for o in outcomes:
        grouped[o.kind].append(o)
    return grouped


def main_(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="number of mutants (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--show", type=int, metavar="N", help="print mutant N's spec and options, and exit")
    args = parser.parse_args(argv)
    if args.show is not None:
        m = make_mutant(args.seed, args.show)
        print(f"# mutant {m.index} of {m.spec} by {', '.join(m.mutations)}; options: {' '.join(m.defines) or '-'}")
        sys.stdout.write(m.text + "\n")
        return 0
    started = time.perf_counter()
    grouped = fuzz(args.count, args.seed, args.jobs)
    for kind in ("crash", "bug", "unlocated"):
        for o in grouped[kind][:20]:
            print(f"--- mutant {o.index}: {kind}\n{o.detail}")
    counts = ", ".join(f"{len(v)} {k}" for k, v in grouped.items())
    print(f"{args.count} mutants (seed {args.seed}) in {time.perf_counter() - started:.0f}s: {counts}")
    return 1 if grouped["crash"] or grouped["bug"] or grouped["unlocated"] else 0


if __name__ == "__main__":
    sys.exit(main_())
