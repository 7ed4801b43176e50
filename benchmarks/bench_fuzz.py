"""Benchmark: a seeded fuzzer of the artifact loader (issue 14, part 7).

    ./run python benchmarks/bench_fuzz.py --cases 5000 --seed 0 --workers 2 [--json PATH]
    ./run python benchmarks/bench_fuzz.py --seed 0 --reproduce 123 [--keep /tmp/case.onnx]

Mutates five small base artifacts (benchmarks/artifact_fuzz.py: dense, conv, residual,
recurrent, potential readout) `--cases` times, case i being (base i mod 5, seed, i), and
classifies what `export.artifact.load_artifact` makes of each mutant: clean (a one-line
StbpError naming the file), loaded (and faithful: re-serialized, it is the file's network;
the emulator runs it), different, traceback, hang (past --timeout seconds), crash (the
worker process died). Each case runs in one of --workers worker processes, each limited to
--memory-gib GiB of address space (RLIMIT_AS), so that a resource bomb ends as a
MemoryError (a traceback) instead of swapping the machine, and a segfault or an OOM kill is
told apart from an exception.

Prints the counts per class, per base and per operator, the distinct causes of every class
other than clean and loaded (an error's first line with numbers and the temporary folder
masked) with one reproduction each, the first few examples of each such class and the
time taken; --json writes every case. --reproduce writes one mutant and loads it
in-process, printing the full traceback.
"""
from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")  # one case per core: no BLAS threads on top

import argparse  # noqa: E402 -- after the thread settings, which numpy reads on import
import json  # noqa: E402
import multiprocessing  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections import Counter, deque  # noqa: E402
from pathlib import Path  # noqa: E402

import artifact_fuzz as fuzz  # noqa: E402 -- benchmarks/ is sys.path[0] when run as a script

from netgraph.provenance import package_versions  # noqa: E402

# Beyond the worker's own alarm (which cannot interrupt one long C call), the parent kills a
# worker this many seconds after its case's timeout.
KILL_GRACE_S = 10
EXAMPLES_PER_CLASS = 5
FINDINGS = ("different", "traceback", "hang", "crash")


# --------------------------------------------------------------------------- worker processes


def _serve(connection, models, directory: Path, timeout_s: float, memory_bytes: int) -> None:
    """A worker: runs (seed, index) cases received on `connection` until it receives None."""
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, hard))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        task = connection.recv()
        if task is None:
            return
        seed, index = task
        try:
            connection.send(fuzz.run_case(models, seed, index, directory, timeout_s).as_dict())
        except Exception:  # noqa: BLE001 -- a bug of the fuzzer itself (the classifier catches the loader's)
            connection.send({"fuzzer_error": traceback.format_exc()})


class _Worker:
    """One worker process and the case it is running (None when idle)."""

    def __init__(self, context, arguments: tuple):
        self.connection, child_end = context.Pipe()
        self.process = context.Process(target=_serve, args=(child_end, *arguments), daemon=True)
        self.process.start()
        child_end.close()
        self.task, self.started, self.deadline = None, 0.0, 0.0

    def assign(self, task: tuple[int, int], timeout_s: float) -> None:
        self.task, self.started = task, time.monotonic()
        self.deadline = self.started + timeout_s + KILL_GRACE_S
        self.connection.send(task)

    def collect(self) -> dict | str | None:
        """The finished case's result, 'crash: why' / 'hang: why' for a lost case, None while running."""
        if self.connection.poll():
            try:
                return self.connection.recv()
            except (EOFError, OSError):
                pass  # died while sending: a crash
        if not self.process.is_alive():
            self.process.join(1)
            code = self.process.exitcode
            how = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
            return f"crash: the worker process died ({how})"
        if time.monotonic() > self.deadline:
            self.stop()
            return f"hang: the worker ran {time.monotonic() - self.started:.0f} s without answering; killed"
        return None

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.connection.close()


def _lost_case(models, seed: int, index: int, outcome: str, seconds: float) -> dict:
    """The result of a case whose worker died or stopped answering (described by the parent)."""
    base = fuzz.base_for_index(index)
    mutant = fuzz.make_mutant(base, models[base], seed, index)
    kind, detail = outcome.split(": ", 1)
    return fuzz.CaseResult(base, seed, index, mutant.operator, mutant.description, kind, "worker", detail,
                           round(seconds, 4)).as_dict()


def run_cases(seed: int, cases: int, workers: int, timeout_s: float, memory_bytes: int,
              directory: Path) -> list[dict]:
    """Every case's result (CaseResult as a dict), in index order."""
    models = fuzz.base_models()
    context = multiprocessing.get_context("fork")  # workers inherit the built bases
    arguments = (models, directory, timeout_s, memory_bytes)
    pool = [_Worker(context, arguments) for _ in range(workers)]
    pending, results, reported = deque((seed, i) for i in range(cases)), [], time.monotonic()
    try:
        while pending or any(w.task for w in pool):
            for worker in pool:
                if worker.task is None and pending:
                    worker.assign(pending.popleft(), timeout_s)
            busy = [w for w in pool if w.task]
            wait_s = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            multiprocessing.connection.wait([w.connection for w in busy] + [w.process.sentinel for w in busy], wait_s)
            for position, worker in enumerate(pool):
                outcome = worker.collect() if worker.task else None
                if outcome is None:
                    continue
                if isinstance(outcome, str):
                    results.append(_lost_case(models, *worker.task, outcome, time.monotonic() - worker.started))
                    worker.stop()
                    pool[position] = worker = _Worker(context, arguments)
                elif "fuzzer_error" in outcome:
                    raise RuntimeError(f"case {worker.task} failed inside the fuzzer:\n{outcome['fuzzer_error']}")
                else:
                    results.append(outcome)
                worker.task = None
            if time.monotonic() - reported > 15:
                reported = time.monotonic()
                print(f"  {len(results)} of {cases} cases", file=sys.stderr, flush=True)
    finally:
        for worker in pool:
            worker.stop()
    return sorted(results, key=lambda r: r["index"])


# --------------------------------------------------------------------------- report


def _table(title: str, rows: dict[str, Counter]) -> None:
    width = max([len(title), *map(len, rows)])
    print(f"\n{title:<{width}}  " + "  ".join(f"{c:>9}" for c in fuzz.CLASSES))
    for name, counts in rows.items():
        print(f"{name:<{width}}  " + "  ".join(f"{counts.get(c, 0):>9}" for c in fuzz.CLASSES))


def cause_of(result: dict, directory: Path) -> str:
    """A finding's cause: class, phase and the detail with the file and the numbers masked."""
    detail = result["detail"].replace(str(directory), "<dir>")
    detail = re.sub(r"<dir>/[\w.-]+\.onnx", "<file>", detail)
    detail = re.sub(r"\d+", "N", detail)
    return f"{result['kind']} ({result['phase']}): {detail[:200]}"


def _reproduction(result: dict) -> str:
    return (f"base={result['base']} seed={result['seed']} index={result['index']} [{result['operator']}] "
            f"{result['description']}")


def print_report(results: list[dict], directory: Path, seconds: float) -> None:
    counts = Counter(r["kind"] for r in results)
    print(f"{len(results)} cases in {seconds:.1f} s ({len(results) / max(seconds, 1e-9):.0f} cases/s)")
    print("classes: " + ", ".join(f"{c} {counts.get(c, 0)}" for c in fuzz.CLASSES))
    notes = [r for r in results if r["kind"] == "loaded" and r["detail"]]
    print(f"loaded mutants the emulator refused (a StbpError) or warned about (RuntimeWarning): {len(notes)}")
    for result in notes[:EXAMPLES_PER_CLASS]:
        print(f"  {_reproduction(result)}\n    {result['detail'][:300]}")
    _table("base", {b: Counter(r["kind"] for r in results if r["base"] == b) for b in fuzz.BASE_NAMES})
    _table("operator", {o: Counter(r["kind"] for r in results if r["operator"] == o) for o in sorted(fuzz.OPERATORS)})
    causes: dict[str, list[dict]] = {}
    for result in results:
        if result["kind"] in FINDINGS:
            causes.setdefault(cause_of(result, directory), []).append(result)
    print(f"\n{len(causes)} distinct causes of findings:")
    for cause, members in sorted(causes.items(), key=lambda item: -len(item[1])):
        print(f"  {len(members):>5}  {cause}\n         e.g. {_reproduction(members[0])}")
    for kind in FINDINGS:
        examples = [r for r in results if r["kind"] == kind][:EXAMPLES_PER_CLASS]
        if examples:
            print(f"\nfirst {len(examples)} {kind}:")
            for result in examples:
                detail = result["detail"].replace(str(directory), "<dir>")
                print(f"  {_reproduction(result)}\n    {result['phase']}: {detail[:400]}")
    slowest = sorted(results, key=lambda r: -r["seconds"])[:3]
    print("\nslowest cases: " + "; ".join(f"{r['seconds']:.2f} s {_reproduction(r)[:90]}" for r in slowest))


# --------------------------------------------------------------------------- main


def reproduce(seed: int, index: int, keep: str | None, timeout_s: float) -> None:
    """Writes one mutant, loads it in-process with its full traceback, then classifies it."""
    base = fuzz.base_for_index(index)
    mutant = fuzz.make_mutant(base, fuzz.base_models()[base], seed, index)
    path = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="stbp-fuzz-")) / f"{base}-s{seed}-i{index}.onnx"
    path.write_bytes(mutant.data)
    print(f"base={base} seed={seed} index={index} [{mutant.operator}] {mutant.description}\nwritten to {path}")
    try:
        fuzz.load_artifact(path)
        print("load_artifact returned a network")
    except Exception:  # noqa: BLE001 -- shown in full: this is what a developer reads
        traceback.print_exc()
    kind, phase, detail = fuzz.classify_file(path, timeout_s, seed=index)
    print(f"class: {kind} ({phase}) {detail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per case (load, compare, emulate)")
    parser.add_argument("--memory-gib", type=float, default=4.0, help="address-space limit of each worker")
    parser.add_argument("--json", help="write every case's result to this file")
    parser.add_argument("--reproduce", type=int, metavar="INDEX", help="run case INDEX of --seed in-process")
    parser.add_argument("--keep", help="with --reproduce: write the mutant to this path")
    args = parser.parse_args()
    if args.reproduce is not None:
        reproduce(args.seed, args.reproduce, args.keep, args.timeout)
        return
    directory = Path(tempfile.mkdtemp(prefix="stbp-fuzz-"))
    started = time.monotonic()
    try:
        results = run_cases(args.seed, args.cases, args.workers, args.timeout, int(args.memory_gib * (1 << 30)),
                            directory)
        seconds = time.monotonic() - started
        print_report(results, directory, seconds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if args.json:
        summary = {"seed": args.seed, "cases": args.cases, "workers": args.workers, "timeout_s": args.timeout,
                   "memory_gib": args.memory_gib, "seconds": round(seconds, 1),
                   "counts": Counter(r["kind"] for r in results), "versions": package_versions(), "results": results}
        Path(args.json).write_text(json.dumps(summary, indent=1))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
