"""Regenerate every table of experiments/RESULTS.md from a clean checkout.

    python experiments/reproduce.py            # CPU-sized runs (about two hours on 2 cores)
    python experiments/reproduce.py --gpu      # the full sizes (paper schedule, 5 seeds): for a GPU

Each step writes its own markdown file under experiments/results/; RESULTS.md quotes them with
the date and machine each one records.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
OUT = HERE / "results"


def run(args, **kw):
    print("$", " ".join(map(str, args)), flush=True)
    subprocess.run([str(a) for a in args], check=True, **kw)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpu", action="store_true")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    py = sys.executable
    bench = HERE / "bench"
    run([py, "-m", "zerohsi_jax.cli", "demo", "--out", OUT / "demo", "--no-resume"]
        + (["--paper-schedule", "--frames", "51", "--size", "256"] if args.gpu else []))
    sizes = ["128^2", "256^2", "512^2"] + (["720p"] if args.gpu else [])
    counts = ["1000", "10000", "100000"] + (["1000000"] if args.gpu else [])
    run([py, bench / "bench_rasterizer.py", "--counts", *counts, "--sizes", *sizes, "--out",
         OUT / "rasterizer.md"], cwd=bench)
    run([py, bench / "bench_kernel_backward.py", "--out", OUT / "kernel.md"], cwd=bench)
    run([py, bench / "bench_smplx.py", "--out", OUT / "smplx.md"], cwd=bench)
    run([py, bench / "bench_avatar.py", "--out", OUT / "avatar.md"], cwd=bench)
    run([py, bench / "bench_pipeline.py", "--size", "256" if args.gpu else "64", "--measure-frames",
         "4" if args.gpu else "1", "--out", OUT / "pipeline.md"], cwd=bench)
    run([py, HERE / "frame_parallel.py", "--out", OUT / "frame_parallel.md"])
    run([py, "-m", "zerohsi_jax.cli", "bench-suite", "--size", "full" if args.gpu else "small", "--out",
         OUT / "bench_suite"])
    print(f"tables in {OUT}; copy their figures into experiments/RESULTS.md with the date and machine")


if __name__ == "__main__":
    main()
