"""Mutation check of the test suite: plant small bugs one at a time and see whether the tests notice.

Usage (from the repository root; not part of `make test`):

    nice -n 10 .venv/bin/python tests/mutation/run_mutations.py              # all mutations
    nice -n 10 .venv/bin/python tests/mutation/run_mutations.py --only predict-inverted last-token-early
    nice -n 10 .venv/bin/python tests/mutation/run_mutations.py --without 'tests/test_method_*.py'  # older tests only
    .venv/bin/python tests/mutation/run_mutations.py --check                 # which anchors are stale, no tests run

What it does:

1. Copies src/, tests/, conf/, the top-level *.py files and pyproject.toml into a temporary folder (from the
   working tree, or with `--ref REV` from a git revision plus the untracked test files of the working tree).
   `--without GLOB` leaves matching test files out of the copy (e.g. to measure the suite before new tests).
2. Checks that Python started there imports the copy (PYTHONPATH=<copy>/src comes before the editable install
   of .venv), both directly and inside pytest: a canary `raise` planted in the copy's gpt.py must break
   collection. No mutation is run otherwise.
3. For each mutation of `mutations.py`: replaces its exact anchor in the copy (an anchor found 0 or 2+ times is
   reported `stale` and skipped), runs `pytest -x -q -m 'not slow'` on the mutation's tests with a timeout
   (PYTHONDONTWRITEBYTECODE=1: no stale bytecode between mutations), and restores the file. A failing test
   kills the mutation; all passing means it survived; no selected test at all (all left out by --without)
   counts as survived too.
4. Re-runs every test that killed a mutation on the unmutated copy: a test that fails there too would be a
   false kill, and its mutations are reported `invalid`.
5. Prints a table (kind "issue": a bug listed in the issue; "item5": covered by item 5's tests), the score per
   mutated module and the score over all, killed / (killed + survived); stale and invalid mutations are left out of
   the score (and counted).

The repository itself is never modified. Runs one pytest at a time (2 shared cores: keep the `nice`).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from mutations import MUTATIONS, Mutation

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SPAM_LIGHTNING_SHARED", REPO.parent / "shared"))
COPIED_DIRS = ("src", "tests", "conf")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
CANARY_FILE = "src/spam_lightning/model/gpt.py"


@dataclass
class Result:
    mutation: Mutation
    status: str  # killed | survived | stale | timeout | error | invalid
    seconds: float = 0.0
    killer: str = ""  # the first failing test (or the reason for stale/error)


# --------------------------------------------------------------------------------------------------
# The throwaway copy
# --------------------------------------------------------------------------------------------------


def make_copy(dest: Path, ref: str | None, without: list[str]) -> None:
    if ref is None:
        for name in COPIED_DIRS:
            shutil.copytree(REPO / name, dest / name, ignore=IGNORED)
        for path in [*REPO.glob("*.py"), REPO / "pyproject.toml"]:
            shutil.copy2(path, dest / path.name)
    else:
        paths = [*COPIED_DIRS, "pyproject.toml", *(p.name for p in REPO.glob("*.py"))]
        tracked = git("ls-tree", "--name-only", ref, "--", *paths).split()
        archive = subprocess.run(["git", "archive", ref, "--", *tracked], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        for name in git("ls-files", "--others", "--exclude-standard", "--", "tests").split():  # new test files
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    for path in sorted((dest / "tests").rglob("test_*.py")):
        relative = path.relative_to(dest).as_posix()
        if any(fnmatch.fnmatch(relative, pattern) for pattern in without):
            path.unlink()


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout


def environment(copy: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(copy / "src"), "PYTHONDONTWRITEBYTECODE": "1"}
    env["SPAM_LIGHTNING_SHARED"] = str(SHARED)  # conftest looks beside the repository otherwise
    return env


def check_imports(copy: Path, env: dict[str, str]) -> None:
    """The copy's package is what Python and pytest import there, not the editable install in .venv."""
    code = (
        "import spam_lightning, hydra_plugins.spam_lightning_optuna as plugin; "
        "print(spam_lightning.__file__); print(plugin.__file__)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True)
    files = done.stdout.split()
    if done.returncode != 0 or len(files) != 2 or not all(Path(f).is_relative_to(copy) for f in files):
        raise SystemExit(f"the copy is not what gets imported: {done.stdout} {done.stderr}")
    canary = copy / CANARY_FILE
    original = canary.read_text()
    canary.write_text(original + '\nraise RuntimeError("mutation-canary")\n')
    try:
        done = run_pytest(copy, env, ["--collect-only", "tests/training/test_classifier.py"], timeout=300)
    finally:
        canary.write_text(original)
    if "mutation-canary" not in done[1]:
        raise SystemExit("pytest in the copy did not import the copy's src (the canary did not fire)")
    print(f"imports checked: {files[0]}", flush=True)


# --------------------------------------------------------------------------------------------------
# Running pytest
# --------------------------------------------------------------------------------------------------


def pytest_args(selections: tuple[str, ...], without: list[str]) -> list[str]:
    """One pytest call for the selections ("FILE", "FILE::TEST", "FILE -k EXPR"); [] if none is left.

    pytest has one -k for the whole call, so each selection becomes a clause of it, matched on the test
    module's file name (a keyword of every test in it).
    """
    targets: list[str] = []
    clauses: list[str] = []
    use_k = False
    for selection in selections:
        target, _, expr = selection.partition(" -k ")
        file, _, test = target.partition("::")
        if any(fnmatch.fnmatch(file, pattern) for pattern in without):
            continue
        targets.append(target)
        clause = Path(file).name + (f" and {test}" if test else "")
        if expr:
            clause += f" and ({expr})"
            use_k = True
        clauses.append(f"({clause})")
    files = {t for t in targets if "::" not in t}
    targets = [t for t in dict.fromkeys(targets) if t.partition("::")[0] not in files or "::" not in t]
    if not targets:
        return []
    return [*targets, *(["-k", " or ".join(clauses)] if use_k else [])]


def run_pytest(
    copy: Path, env: dict[str, str], args: list[str], timeout: float, stop_first: bool = True
) -> tuple[int | None, str]:
    """(exit status or None on timeout, output) of `nice pytest [-x] -q -m 'not slow' args` in the copy."""
    command = [
        *(["nice", "-n", "10"] if shutil.which("nice") else []),
        sys.executable, "-m", "pytest", *(["-x"] if stop_first else []), "-q", "-m", "not slow",
        "-p", "no:cacheprovider", "-rfE", "-W", "ignore", *args,
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
        return process.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # pytest and what it started (DDP workers, scripts)
        output, _ = process.communicate()
        return None, output


FAILURE = re.compile(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", re.MULTILINE)  # pytest's -rfE summary lines


def first_failure(output: str) -> str:
    match = FAILURE.search(output)
    if match:
        return match.group(1)
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1][:120] if lines else ""


def run_mutation(copy: Path, env: dict[str, str], mutation: Mutation, without: list[str], timeout: float) -> Result:
    path = copy / mutation.file
    if not path.is_file():
        return Result(mutation, "stale", killer=f"{mutation.file} is missing")
    original = path.read_text()
    count = original.count(mutation.original)
    if count != 1:
        return Result(mutation, "stale", killer=f"anchor found {count} times")
    args = pytest_args(mutation.tests, without)
    if not args:
        return Result(mutation, "survived", killer="no test selected")
    path.write_text(original.replace(mutation.original, mutation.replacement))
    start = time.perf_counter()
    try:
        status, output = run_pytest(copy, env, args, timeout)
    finally:
        path.write_text(original)
    seconds = time.perf_counter() - start
    if status is None:
        return Result(mutation, "timeout", seconds, f"over {timeout:.0f} s")
    if status == 0:
        return Result(mutation, "survived", seconds)
    if status in (1, 2):  # tests failed / collection or import broke
        return Result(mutation, "killed", seconds, first_failure(output))
    return Result(mutation, "error", seconds, f"pytest exit status {status}: {first_failure(output)}")


def check_killers(copy: Path, env: dict[str, str], results: list[Result], timeout: float) -> None:
    """Killing tests must pass on the unmutated copy; otherwise their kills were not the mutation's doing."""
    killers = sorted({r.killer for r in results if r.status == "killed" and "::" in r.killer})
    if not killers:
        return
    print(f"re-running the {len(killers)} killing tests on the unmutated copy...", flush=True)
    status, output = run_pytest(copy, env, ["--continue-on-collection-errors", *killers], timeout, stop_first=False)
    failing = set(FAILURE.findall(output))
    if status is None:
        print("warning: the unmutated re-run timed out; kills are unchecked", flush=True)
    for result in results:
        if result.status == "killed" and result.killer in failing:
            result.status = "invalid"
            result.killer += " (fails unmutated too)"


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def module_scores(results: list[Result]) -> dict[str, dict[str, int]]:
    """Per mutated file (its path under src/spam_lightning or conf): killed, scored (killed + survived), stale."""
    scores: dict[str, dict[str, int]] = {}
    for r in results:
        module = r.mutation.file.removeprefix("src/spam_lightning/")
        entry = scores.setdefault(module, {"killed": 0, "scored": 0, "stale": 0})
        killed = r.status in ("killed", "timeout")
        entry["killed"] += killed
        entry["scored"] += killed or r.status == "survived"
        entry["stale"] += r.status == "stale"
    return scores


def report(results: list[Result], total_seconds: float) -> str:
    rows = [("id", "kind", "status", "time", "caught by / note", "mutation")]
    for r in results:
        m = r.mutation
        rows.append(
            (m.id, m.kind, r.status, f"{r.seconds:.0f}s", r.killer, f"{m.file.split('/')[-1]}: {m.description}")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:5], widths, strict=True)) + "  " + row[5] for row in rows]
    killed = sum(r.status in ("killed", "timeout") for r in results)
    survived = sum(r.status == "survived" for r in results)
    counts = {s: sum(r.status == s for r in results) for s in ("stale", "invalid", "error", "timeout")}
    scored = killed + survived
    score = f"{killed}/{scored} = {killed / scored:.0%}" if scored else "n/a"
    issue = [r for r in results if r.mutation.kind == "issue"]
    issue_killed = sum(r.status in ("killed", "timeout") for r in issue)
    lines += ["", "per module (killed / scored; stale and invalid left out):"]
    for module, scores in sorted(module_scores(results).items()):
        lines.append(
            f"  {module:<32} {scores['killed']}/{scores['scored']}"
            + (f"  ({scores['stale']} stale)" if scores["stale"] else "")
        )
    lines += [
        "",
        f"score: {score} killed (timeouts count as killed); "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + f"; issue bugs killed: {issue_killed}/{len(issue)}; {total_seconds / 60:.1f} min",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutations")
    parser.add_argument("--without", nargs="+", default=[], metavar="GLOB", help="test files left out of the copy")
    parser.add_argument("--ref", help="copy src/, conf/, ... from this git revision (plus untracked test files)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mutation (default 300)")
    parser.add_argument("--check", action="store_true", help="only report stale anchors; run no tests")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    mutations = [m for m in MUTATIONS if args.only is None or m.id in args.only]
    unknown = set(args.only or ()) - {m.id for m in mutations}
    if unknown:
        parser.error(f"unknown mutation ids: {sorted(unknown)}")
    if len({m.id for m in MUTATIONS}) != len(MUTATIONS):
        parser.error("mutation ids must be unique")

    start = time.perf_counter()
    copy = Path(tempfile.mkdtemp(prefix="spam-mutations-"))
    try:
        make_copy(copy, args.ref, args.without)
        env = environment(copy)
        if args.check:
            for m in mutations:
                text = (copy / m.file).read_text() if (copy / m.file).is_file() else ""
                count = text.count(m.original)
                print(f"{m.id:<28} {'ok' if count == 1 else f'stale ({count} matches)'}")
            return 0
        check_imports(copy, env)
        results = []
        for i, mutation in enumerate(mutations, start=1):
            result = run_mutation(copy, env, mutation, args.without, args.timeout)
            results.append(result)
            print(
                f"[{i}/{len(mutations)}] {mutation.id}: {result.status} ({result.seconds:.0f}s) {result.killer}",
                flush=True,
            )
        check_killers(copy, env, results, max(args.timeout, 600))
        print()
        print(report(results, time.perf_counter() - start))
        if args.json:
            args.json.write_text(
                json.dumps(
                    {"mutations": [{"id": r.mutation.id, "kind": r.mutation.kind, "file": r.mutation.file,
                      "status": r.status, "seconds": round(r.seconds, 1), "killer": r.killer} for r in results],
                     "modules": module_scores(results)},
                    indent=2,
                )
            )  # fmt: skip
        return 0
    finally:
        if args.keep:
            print(f"copy kept in {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
