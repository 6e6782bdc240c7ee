"""Synthetic experiment: wall time of the default `bdpo synthetic` grid, and how it scales.

    python -m bench.synthetic_grid [--steps 200] [--seeds 5,10,20] [--sizes 10,20,40] [--skip-default]

1. The default grid, exactly as a user runs it: `bdpo synthetic --no-progress --out <tmp>` in a
   subprocess (imports, training, report and plots included). Target: < 60 s on 2 cores.
   Reported with the CPU seconds it used (user + system), which a busy machine does not inflate.
2. Scaling, in one fresh process, calling `trainers.synthetic.run_synthetic` with the default
   config changed in one field at a time (and `--steps` steps, since time is linear in steps):
   number of seeds, and grid size (prompts = responses = n). The exponent k of time ~ x^k is the
   log-log slope between the smallest and largest setting.
"""

from __future__ import annotations

import argparse
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import REPO, report, run_isolated


def run_default() -> dict[str, Any]:
    """`bdpo synthetic` with the default config in a subprocess: wall and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "harness.cli", "synthetic", "--no-progress", "--out", out],
                       cwd=REPO, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "cpu_s": cpu}


def scaling(steps: int, seeds: list[int], sizes: list[int]) -> dict[str, Any]:
    """Worker (fresh process): run_synthetic's wall and CPU seconds per setting."""
    import dataclasses

    from harness.config import SyntheticConfig
    from trainers.synthetic import run_synthetic

    def timed(**changes: Any) -> dict[str, float]:
        cfg = dataclasses.replace(SyntheticConfig(), steps=steps, **changes)
        with tempfile.TemporaryDirectory() as out:
            wall, cpu = time.perf_counter(), time.process_time()
            run_synthetic(cfg, Path(out), progress=False)
            return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}

    timed(n_seeds=1)  # warm-up: first-call costs (lazy imports, allocator) are not the grid's
    return {"seeds": {str(s): timed(n_seeds=s) for s in seeds},
            "grid": {str(n): timed(n_prompts=n, n_responses=n) for n in sizes}}


def slope(points: dict[str, dict[str, float]], key: str) -> float:
    xs = sorted(points, key=float)
    lo, hi = xs[0], xs[-1]
    return math.log(points[hi][key] / points[lo][key]) / math.log(float(hi) / float(lo))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps in the scaling runs")
    parser.add_argument("--seeds", default="5,10,20")
    parser.add_argument("--sizes", default="10,20,40")
    parser.add_argument("--skip-default", action="store_true", help="skip the full default grid")
    parser.add_argument("--threads", type=int, default=None, help="threads of the scaling process (default: all)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    results: dict[str, Any] = {}
    ratios = []
    if not args.skip_default:
        results["default_grid"] = run_default()
        for kind in ("wall_s", "cpu_s"):
            t = results["default_grid"][kind]
            ratios.append((f"default_grid_{kind.removesuffix('_s')}_seconds/60", t / 60, "< 1", t < 60))
    results["scaling"] = scaling_results = run_isolated(
        "bench.synthetic_grid:scaling", threads=args.threads, steps=args.steps,
        seeds=[int(s) for s in args.seeds.split(",")], sizes=[int(n) for n in args.sizes.split(",")])
    scaling_results.pop("peak_rss_mb", None)
    for group, label in (("seeds", "seeds"), ("grid", "grid side n")):
        k = slope(scaling_results[group], "cpu_s")
        ratios.append((f"cpu time exponent in {label}", k, "(time ~ x^k)", None))
    report("Synthetic grid: default wall time and scaling", results, ratios, args.json)
    return {"results": results, "ratios": ratios}


if __name__ == "__main__":
    main()
