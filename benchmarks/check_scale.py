"""`cnndsl check` on a large valid program: time and peak memory, and how they grow with its size.

    python benchmarks/check_scale.py                  # 90,000 statements, and the growth from 22,500
    python benchmarks/check_scale.py --statements N   # another size
    python benchmarks/check_scale.py --write big.cnn  # only write the program
    python benchmarks/check_scale.py --numbered       # each line ends in a comment with its number

The program is a ResNet-like stack of valid statements at one width: block definitions (a basic
unit, a bottleneck with a projected shortcut, an inception-style concat), then lines of plain layers,
residuals with their bodies, and calls of the blocks, until it holds the asked number of statements
(every layer, call, residual and branch statement counts, inside blocks too). Each size is checked
in a fresh `cnndsl check` process (one thread), timed by wall clock and measured by its peak
resident memory (`resource.getrusage(RUSAGE_CHILDREN)`, Linux: kilobytes).

The parser reuses what a statement's text, or a whole line, made where it was read before (see
`cnndsl.parser`). `--numbered` makes every line of the body distinct (a comment with its number at
its end), so that no whole line is read twice: the statements in them still are.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

BLOCKS = """\
block unit(c) {
  residual { conv 3x3 pad1 -> c nobias; bn; relu; conv 3x3 pad1 -> c nobias; bn }
  relu
}
block bottleneck(c, mid=c/4) {
  residual {
    conv 1x1 -> mid nobias; bn; relu
    conv 3x3 pad1 -> mid nobias; bn; relu
    conv 1x1 -> c nobias; bn
  } shortcut always { conv 1x1 -> c nobias; bn }
  relu
}
block mixed(c) {
  concat {
    branch { conv 1x1 -> c/2 nobias; bn; relu }
    branch { conv 3x3 pad1 -> c/4 nobias; bn; relu }
    branch { pool max 3x3/1 pad1; conv 1x1 -> c/4 }
  }
}
"""
BLOCK_STATEMENTS = 40  # statements in BLOCKS, as counted below
WIDTH = 32

# (text, statements it holds, nodes it expands to): the lines the body is made of. The node limit
# (100,000) bounds a 90,000-statement program to about one node per statement, so most lines are
# plain layers and residuals written out, and each block is called once every 16 rounds of them.
_ROUND = (
    (f"conv 3x3 pad1 -> {WIDTH} nobias; bn; relu", 3, 3),
    (f"residual {{ conv 3x3 pad1 -> {WIDTH} nobias; bn; relu; conv 3x3 pad1 -> {WIDTH} nobias; bn }}; relu", 7, 7),
    (f"conv 1x1 -> {WIDTH}; bn  # a comment", 2, 2),
    (f"dropout .1; conv 3x3 pad1 -> {WIDTH} nobias; bn; relu", 4, 4),
    ("", 0, 0),
    (f"conv 3x3 pad1 -> {WIDTH} nobias; bn; relu", 3, 3),
    (f"residual {{\n  conv 3x3 pad1 -> {WIDTH} nobias; bn; relu\n  conv 3x3 pad1 -> {WIDTH} nobias; bn\n}}\n"
     "relu", 7, 7),
)
_CALLS = ((f"unit({WIDTH})", 1, 8), (f"bottleneck({WIDTH})", 1, 13), (f"mixed({WIDTH})", 1, 10))
LINES = _ROUND * 16 + _CALLS


def program(statements: int, numbered: bool = False) -> str:
    """A valid program of about `statements` statements (never fewer); `numbered`: each line of the
    body ends in a comment with its number."""
    out = ["network scale", f"input {WIDTH}x32x32", BLOCKS.rstrip("\n")]
    count = BLOCK_STATEMENTS
    index = 0
    while count < statements:
        text, held, _nodes = LINES[index % len(LINES)]
        if numbered:
            text = "\n".join(f"{line}  # {index}.{part}" for part, line in enumerate(text.split("\n")))
        out.append(text)
        count += held
        index += 1
    out += ["pool avg global", "flatten", "fc -> 10"]
    return "\n".join(out) + "\n"


def measure(path: str) -> tuple[float, int]:
    """(seconds, peak RSS in MB) of `cnndsl check path` in a fresh process."""
    # With byte code cached, as a pip install has it: this machine sets PYTHONDONTWRITEBYTECODE, and
    # without a .pyc every start compiles the generated parser module again (0.26 s). The warm-up run
    # in main() writes them.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    script = ("import resource, sys, time; from cnndsl.cli import run; sys.argv = ['cnndsl', 'check', sys.argv[1]]\n"
              "start = time.perf_counter()\n"
              "try:\n    run()\nexcept SystemExit as exit:\n    code = exit.code\nelse:\n    code = 0\n"
              "print('SECONDS', time.perf_counter() - start, 'KB',"
              " resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, 'CODE', code, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, env=env, check=False)
    fields = proc.stderr.split("SECONDS")[-1].split()
    if "CODE" not in fields or fields[fields.index("CODE") + 1] not in ("0", "None"):
        raise SystemExit(f"check failed:\n{proc.stdout}{proc.stderr}")
    return float(fields[0]), int(fields[2]) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--statements", type=int, default=90_000)
    parser.add_argument("--write", metavar="PATH", help="only write the program to PATH")
    parser.add_argument("--numbered", action="store_true", help="end each line in a comment with its number")
    args = parser.parse_args()
    if args.write:
        with open(args.write, "w", encoding="utf-8") as file:
            file.write(program(args.statements, args.numbered))
        return
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        warm = os.path.join(folder, "warm.cnn")
        with open(warm, "w", encoding="utf-8") as file:
            file.write(program(100))
        measure(warm)  # writes the byte code of every module check imports
        for size in (args.statements // 4, args.statements // 2, args.statements):
            path = os.path.join(folder, f"scale{size}.cnn")
            text = program(size, args.numbered)
            with open(path, "w", encoding="utf-8") as file:
                file.write(text)
            seconds, megabytes = measure(path)
            rows.append((size, text.count("\n"), seconds, megabytes))
            print(f"{size:>7,} statements ({rows[-1][1]:,} lines): check {seconds:5.2f} s, peak RSS {megabytes} MB")
    (small, _, t_small, _), (big, _, t_big, _) = rows[0], rows[-1]
    print(f"time x{t_big / t_small:.2f} for x{big / small:.0f} statements (linear: x{big / small:.0f})")


if __name__ == "__main__":
    main()
