"""What the fresh temporary buffer of every compiled step costs in page faults, and what the C
library's allocator settings change (Linux, glibc).

XLA:CPU allocates one temporary buffer per execution of a compiled program (the RCIG step's is
hundreds of MiB, ``compiled.memory_analysis().temp_size_in_bytes``) and frees it afterwards.
glibc serves an allocation that large with its own ``mmap`` and returns it with ``munmap``, so
every step touches the whole buffer as new memory: one minor page fault per 4 KiB page, each
zeroed by the kernel. This benchmark runs the default RCIG step (1 ipc, width 32, target batch
1024, n_inner = n_H = 20, pool 30) in a fresh process per allocator setting (glibc reads them at
start), the settings alternated round by round, and reports per step: wall-clock seconds, minor
page faults, user and system CPU seconds (``getrusage``), next to the buffer's size. A case
``evaluate-NAME:WIDTH`` times one whole evaluation instead (``--steps`` × 100 training steps of
one ConvNet on one image per class, then the test split; "per step" is then per evaluation, and
the Σ|support| column holds its accuracy).

Settings (environment of the child process):

* ``default``: none.
* ``hugetlb``: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc ≥ 2.35): ``malloc`` asks for
  transparent huge pages on its ``mmap`` chunks (``madvise``), one fault per 2 MiB.
* ``arena1``: ``MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=10**11``: every
  thread allocates from the main heap, which is never returned, so the buffer is reused.
* ``reuse``: the child first calls glibc's ``mallopt(M_MMAP_MAX, 0)`` and
  ``mallopt(M_TRIM_THRESHOLD, -1)`` (no block by its own ``mmap``, the main heap never
  trimmed), keeping one arena per thread. Measured 2026-12-05: no effect, because the buffer is
  allocated on one of XLA's worker threads, and glibc serves a block too large for a thread's
  arena with ``mmap`` whatever ``M_MMAP_MAX`` says (``benchmarks/malloc_threads.py``).
* ``sync``: ``jax_cpu_enable_async_dispatch = False`` alone (programs run on the calling thread).
* ``keep``: :func:`distillation.reuse_host_memory`, what ``rcig`` does since 2026-12-05: the
  ``reuse`` settings *and* ``sync``, so that the buffer is allocated on the main thread, whose
  heap the ``mallopt`` settings keep.

Run alone on the CPU::

    python benchmarks/page_faults.py --cases cifar10:32,mnist:32 \\
        --settings default,hugetlb,arena1 --steps 8 --rounds 3

Writes ``benchmarks/results/page_faults.json`` and ``docs/benchmarks/page_faults.md`` (``--out
NAME``: ``NAME.json``, ``NAME.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {
    "default": {},
    "hugetlb": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "arena1": {
        "MALLOC_ARENA_MAX": "1",
        "MALLOC_MMAP_MAX_": "0",
        "MALLOC_TRIM_THRESHOLD_": str(10**11),
    },
    "reuse": {"PAGE_FAULTS_REUSE": "1"},
    "sync": {"PAGE_FAULTS_SYNC": "1"},
    "keep": {"PAGE_FAULTS_KEEP": "1"},
}
PAGE = os.sysconf("SC_PAGE_SIZE")


def child(case: str, steps: int) -> dict:
    if os.environ.get("PAGE_FAULTS_REUSE"):
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        assert libc.mallopt(-4, 0) == 1 and libc.mallopt(-1, -1) == 1  # M_MMAP_MAX, M_TRIM_...
    import resource
    import time

    import jax

    if os.environ.get("PAGE_FAULTS_SYNC"):
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    if os.environ.get("PAGE_FAULTS_KEEP"):
        from distillation._host_memory import reuse_host_memory

        assert reuse_host_memory({})
    import numpy as np
    from flops_memory import _setup
    from iteration_time import DATA

    from distillation._algorithms import rcig
    from distillation.data._datasets import load_dataset

    name, width = case.split(":")
    if name.startswith("evaluate-"):
        return _child_evaluate(name.removeprefix("evaluate-"), int(width), steps)
    dataset = load_dataset(str(DATA[name]))
    step, state, x, y = _setup(dataset, int(width), 1, rcig())
    compiled = step.lower(state, x, y).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    for _ in range(2):
        state, _ = jax.block_until_ready(compiled(state, x, y))
    times = []
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    for _ in range(steps):
        t = time.perf_counter()
        state, losses = jax.block_until_ready(compiled(state, x, y))
        times.append(time.perf_counter() - t)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "case": case,
        "s_per_step": float(np.mean(times)),
        "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
        "user_s_per_step": (r1.ru_utime - r0.ru_utime) / steps,
        "sys_s_per_step": (r1.ru_stime - r0.ru_stime) / steps,
        "temp_mib": temp / 2**20,
        "max_rss_mib": r1.ru_maxrss / 2**10,
        "temp_pages": temp / PAGE,
        "support_abs_sum": float(np.abs(np.asarray(state.support.images)).sum()),
    }


def _child_evaluate(name: str, width: int, steps: int) -> dict:
    """``evaluate-NAME:WIDTH``: one evaluation (``steps`` × 100 training steps of one ConvNet
    of ``width`` on 10 training images, then the test split), the whole call timed."""
    import resource
    import time

    import jax
    import numpy as np
    from iteration_time import DATA

    from distillation.data._datasets import load_dataset
    from distillation.evaluation._evaluate import EvalConfig, evaluate_support

    dataset = load_dataset(str(DATA[name]))
    k = dataset.num_classes
    pick = np.concatenate([np.flatnonzero(np.asarray(dataset.y_train) == c)[:1] for c in range(k)])
    images = np.asarray(dataset.x_train[pick])
    labels = np.asarray(dataset.y_train)[pick]
    config = EvalConfig(models=1, width=width, steps=100 * steps)
    run = lambda: evaluate_support(  # noqa: E731
        images, labels, dataset.x_test, dataset.y_test, config, key=jax.random.key(0)
    )
    run()  # compiles
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "case": f"evaluate-{name}:{width}",
        "s_per_step": seconds,  # one whole evaluation
        "faults_per_step": r1.ru_minflt - r0.ru_minflt,
        "user_s_per_step": r1.ru_utime - r0.ru_utime,
        "sys_s_per_step": r1.ru_stime - r0.ru_stime,
        "temp_mib": float("nan"),
        "max_rss_mib": r1.ru_maxrss / 2**10,
        "temp_pages": float("nan"),
        "support_abs_sum": result.mean,  # the accuracy, for equality
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="cifar10:32,mnist:32")
    parser.add_argument("--settings", default="default,hugetlb,arena1")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--out",
        default="page_faults",
        help="name of the outputs: benchmarks/results/NAME.json and docs/benchmarks/NAME.md",
    )
    parser.add_argument(
        "--from-json",
        action="store_true",
        help="write the report from benchmarks/results/NAME.json again, running nothing",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.steps)), flush=True)
        return
    settings = args.settings.split(",")
    results = ROOT / "benchmarks" / "results" / f"{args.out}.json"
    rows = json.loads(results.read_text()) if args.from_json else []
    for case in [] if args.from_json else args.cases.split(","):
        for r in range(args.rounds):
            for setting in settings if r % 2 == 0 else settings[::-1]:
                env = dict(os.environ, **SETTINGS[setting])
                out = subprocess.run(
                    [sys.executable, __file__, "--child", case, "--steps", str(args.steps)],
                    env=env,
                    capture_output=True,
                    text=True,
                    cwd=Path(__file__).parent,
                    check=True,
                ).stdout
                line = next(x for x in out.splitlines() if x.startswith("RESULT "))
                row = {"round": r, "setting": setting, **json.loads(line[len("RESULT ") :])}
                row["load"] = os.getloadavg()[0]
                rows.append(row)
                print(json.dumps(row), flush=True)
    if not args.from_json:
        results.write_text(json.dumps(rows, indent=1))
    cmd = (
        f"python benchmarks/page_faults.py --cases {args.cases} --settings {args.settings} "
        f"--steps {args.steps} --rounds {args.rounds}"
        + ("" if args.out == "page_faults" else f" --out {args.out}")
    )
    lines = [
        "# Page faults of the step's temporary buffer, and the allocator's settings",
        "",
        f"Command: `{cmd}`",
        "",
        "Each setting in a fresh process per round, the order reversed every other round; "
        f"{args.steps} timed steps after 2 warm-up steps (an `evaluate-` case: one whole "
        f'evaluation of {100 * args.steps} training steps after one that compiles, and "per '
        'step" is per evaluation; its buffer size is not measured); means over the rounds, '
        f"per round below and in `benchmarks/results/{args.out}.json`. CPU seconds are summed "
        "over the two cores.",
        "",
        "| case | setting | temp buffer MiB (4 KiB pages) | s / step | minor faults / step "
        "| user CPU s / step | system CPU s / step | peak resident MiB | s / step vs default |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in args.cases.split(","):
        base = None
        for setting in settings:
            sel = [x for x in rows if x["case"] == case and x["setting"] == setting]

            def mean(key, sel=sel):
                return sum(x.get(key, float("nan")) for x in sel) / len(sel)

            if base is None:
                base = mean("s_per_step")
            temp = (
                "—"
                if case.startswith("evaluate-")
                else f"{mean('temp_mib'):.0f} ({mean('temp_pages'):.0f})"
            )
            lines.append(
                f"| {case} | {setting} | {temp} | "
                f"{mean('s_per_step'):.3f} | {mean('faults_per_step'):.0f} | "
                f"{mean('user_s_per_step'):.3f} | {mean('sys_s_per_step'):.3f} | "
                f"{mean('max_rss_mib'):.0f} | "
                f"{mean('s_per_step') / base:.2f} |"
            )
    lines += [
        "",
        "Per round:",
        "",
        "| case | round | setting | s / step | minor faults / step | system CPU s / step "
        "| peak resident MiB |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for x in rows:
        lines.append(
            f"| {x['case']} | {x['round']} | {x['setting']} | {x['s_per_step']:.3f} | "
            f"{x['faults_per_step']:.0f} | {x['sys_s_per_step']:.3f} | "
            f"{x.get('max_rss_mib', float('nan')):.0f} |"
        )
    out = ROOT / "docs" / "benchmarks" / f"{args.out}.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
