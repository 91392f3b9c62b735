"""Rasterizer benchmark: forward and forward+backward time and peak memory against the plain
autodiff path in the same run, over Gaussian counts and image sizes.

    python experiments/bench/bench_rasterizer.py                 # the full grid (slow on CPU)
    python experiments/bench/bench_rasterizer.py --quick         # 1k/10k at 128^2/256^2
    python experiments/bench/bench_rasterizer.py --out experiments/bench/results_rasterizer.md

Peak memory is XLA's temporary-buffer size of the compiled program (`memory_analysis()`), the
memory a step needs beyond its inputs and outputs. The scene: random Gaussians in a 2 m cube 3 m
in front of the camera, their size shrinking as N grows (N^(-1/3)), so the screen coverage per
pixel stays comparable across N as it does in real captures.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import time

import jax
import jax.numpy as jnp
import numpy as np
from machine_info import machine  # noqa: E402

from zerohsi_jax.splat import Camera, RasterConfig, fit_capacity, random_gaussians, render

SIZES = {"128^2": (128, 128), "256^2": (256, 256), "512^2": (512, 512), "720p": (1280, 720)}
COUNTS = (1_000, 10_000, 100_000, 1_000_000)



def scene(n: int, width: int, height: int):
    edge = 0.15 * (1000 / n) ** (1 / 3)
    g = random_gaussians(jax.random.PRNGKey(0), n, center=(0.0, 0.0, 3.0), spread=1.0,
                         scale_range=(np.log(edge * 0.3), np.log(edge)))
    cam = Camera.look_at((0, 0, 0), (0, 0, 3), fov_y_deg=55, width=width, height=height)
    return g, cam


def measure(fn, args, repeats: int):
    compiled = jax.jit(fn).lower(*args).compile()
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return float(np.median(times)), temp


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--counts", type=int, nargs="*")
    parser.add_argument("--sizes", nargs="*", choices=list(SIZES))
    parser.add_argument("--backwards", nargs="*", default=["jax", "kernel", "autodiff"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-autodiff-gb", type=float, default=8.0,
                        help="skip the autodiff path where its estimated memory exceeds this")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    counts = args.counts or ((1_000, 10_000) if args.quick else COUNTS)
    sizes = args.sizes or (["128^2", "256^2"] if args.quick else list(SIZES))

    from zerohsi_jax.splat import kernel_backward

    backwards = [b for b in args.backwards if b != "kernel" or kernel_backward.load_kernel("cpu")]
    rows = []
    for n in counts:
        for size_name in sizes:
            width, height = SIZES[size_name]
            g, cam = scene(n, width, height)
            base = fit_capacity(g, cam, RasterConfig(), headroom=1.2)
            result = {"N": n, "size": size_name, "tile_capacity": base.tile_capacity}
            for bw in backwards:
                cfg = dataclasses.replace(base, backward=bw)
                # Autodiff stores every chunk of every tile: estimate before trying.
                est = width * height * base.tile_capacity * 4 * 6 / 1e9
                if bw == "autodiff" and est > args.max_autodiff_gb:
                    result[bw] = None
                    continue
                fwd = lambda g, cfg=cfg, cam=cam: render(g, cam, config=cfg).rgb  # noqa: E731
                loss = lambda g, cfg=cfg, cam=cam: jnp.sum(render(g, cam, config=cfg).rgb)  # noqa: E731
                t_fwd, m_fwd = measure(fwd, (g,), args.repeats)
                t_bwd, m_bwd = measure(jax.grad(loss), (g,), args.repeats)
                result[bw] = (t_fwd, t_bwd, m_fwd, m_bwd)
            rows.append(result)
            print(format_row(result, backwards), flush=True)

    table = format_table(rows, backwards)
    header = (f"## Rasterizer, {datetime.date.today().isoformat()}\n\nMachine: {machine()}\n\n"
              "Times are medians in ms; memory is XLA's temporary buffers of the step in MB. "
              "Ratios are autodiff / jax (higher is better for the custom backward).\n\n")
    print("\n" + header + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(header + table + "\n")


def _fmt_ms(x):
    return "-" if x is None else f"{1e3 * x:.1f}"


def _fmt_mb(x):
    return "-" if x is None else f"{x / 1e6:.0f}"


def format_row(r, backwards):
    parts = [f"N={r['N']:>8} {r['size']:>6} cap={r['tile_capacity']:>5}"]
    for bw in backwards:
        v = r.get(bw)
        parts.append(f"{bw}: " + ("skipped" if v is None else
                                  f"fwd {_fmt_ms(v[0])} ms, fwd+bwd {_fmt_ms(v[1])} ms, mem {_fmt_mb(v[3])} MB"))
    return " | ".join(parts)


def format_table(rows, backwards):
    cols = ["N", "image", "tile cap"]
    for bw in backwards:
        cols += [f"{bw} fwd", f"{bw} fwd+bwd", f"{bw} mem"]
    if "autodiff" in backwards and "jax" in backwards:
        cols += ["time autodiff/jax", "mem autodiff/jax"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r['N']:,}", r["size"], str(r["tile_capacity"])]
        for bw in backwards:
            v = r.get(bw)
            cells += ["skipped", "skipped", "skipped"] if v is None else [_fmt_ms(v[0]), _fmt_ms(v[1]), _fmt_mb(v[3])]
        if "autodiff" in backwards and "jax" in backwards:
            a, j = r.get("autodiff"), r.get("jax")
            if a is None or j is None:
                cells += ["-", "-"]
            else:
                cells += [f"{a[1] / j[1]:.2f}", "-" if not (a[3] and j[3]) else f"{a[3] / j[3]:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
