"""Backward of the compositing step: the compiled kernel (kernels/) against the pure-JAX
recomputing backward, in the same run, on the same residuals.

    python experiments/bench/bench_kernel_backward.py                # 10k/100k at 128^2/256^2
    python experiments/bench/bench_kernel_backward.py --quick        # 10k at 128^2/256^2
    python experiments/bench/bench_kernel_backward.py --out experiments/bench/results_kernel.md

Per configuration it reports
  * backward: `composite_backward` (pure JAX) and `kernel_composite_backward` on the residuals of
    one forward (final transmittance, stop indices) and a random cotangent, jitted, median of
    `--repeats` interleaved calls;
  * step: jax.grad of a weighted image sum through `composite` (forward + backward), with
    backward='jax' and backward='kernel';
  * memory: XLA's temporary buffers of the compiled backward (`memory_analysis()`), and for the
    kernel also its own scratch, which XLA does not see (computed from the shapes: per-slot
    gradient rows, the per-Gaussian index, the per-thread tile workspaces).

On a GPU (JAX_PLATFORMS unset, CUDA kernel built) the same comparison runs there; the
comparison with gsplat's CUDA backward is not part of this script yet.

The scene follows bench_rasterizer.py: random Gaussians in a 2 m cube 3 m in front of the camera,
their size shrinking as N^(-1/3), capacities fitted to the scene. Features are RGB, depth and
alpha (C = 5), as `render` composites them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from machine_info import machine  # noqa: E402

from zerohsi_jax.splat import Camera, RasterConfig, bin_gaussians, fit_capacity, project, random_gaussians
from zerohsi_jax.splat import kernel_backward as kb
from zerohsi_jax.splat.composite import _composite_forward, composite, composite_backward
from zerohsi_jax.splat.composite_step import tile_pixel_centers

SIZES = {"128^2": (128, 128), "256^2": (256, 256), "512^2": (512, 512)}



def composite_inputs(n: int, width: int, height: int, chunk_size: int):
    edge = 0.15 * (1000 / n) ** (1 / 3)
    g = random_gaussians(
        jax.random.PRNGKey(0),
        n,
        center=(0.0, 0.0, 3.0),
        spread=1.0,
        scale_range=(np.log(edge * 0.3), np.log(edge)),
    )
    cam = Camera.look_at((0, 0, 0), (0, 0, 3), fov_y_deg=55, width=width, height=height)
    cfg = fit_capacity(g, cam, RasterConfig(chunk_size=chunk_size), headroom=1.1)
    proj = project(g, cam, cfg)
    bins = bin_gaussians(proj, width, height, cfg)
    features = jnp.concatenate([g.colors(cam.position), proj.depths[:, None], jnp.ones((n, 1))], -1)
    opacities = jnp.where(proj.visible, proj.opacities, 0.0)
    inputs = (proj.means2d, proj.conics, opacities, features, jnp.zeros((5,)), bins.ids, bins.counts)
    return inputs, cfg


def timed(compiled, args, repeats):
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t)
    return times


def temp_bytes(compiled):
    mem = compiled.memory_analysis()
    return getattr(mem, "temp_size_in_bytes", None) if mem is not None else None


def kernel_scratch_bytes(ids, counts, n, channels, threads, itemsize=4):
    """The CPU kernel's own allocations (kernels/composite_backward_cpu.cc), from the shapes."""
    capacity = ids.shape[1]
    rows = int(np.minimum(np.asarray(counts), capacity).sum())
    width = 6 + channels
    slot_rows = rows * width * itemsize
    index = (n + 1) * 8 + rows * 8 + (len(counts) + 1) * 8
    workspace = threads * capacity * (11 * itemsize + channels * itemsize + width * 8 * itemsize)
    return slot_rows + index + workspace + len(counts) * channels * itemsize


def bench(n, size, repeats, chunk_size, step):
    width, height = SIZES[size]
    inputs, cfg = composite_inputs(n, width, height, chunk_size)
    pix = tile_pixel_centers(width, height, cfg)
    _, trans, stop = jax.jit(_composite_forward, static_argnums=8)(*inputs, pix, cfg)
    grad_out = jax.random.normal(jax.random.PRNGKey(1), trans.shape + (5,))
    residuals = (*inputs, pix, trans, stop, grad_out)

    jax_bwd = jax.jit(composite_backward, static_argnums=11).lower(*residuals, cfg).compile()
    kernel_bwd = jax.jit(kb.kernel_composite_backward, static_argnums=11).lower(*residuals, cfg).compile()
    times = {"jax": [], "kernel": []}
    jax.block_until_ready(jax_bwd(*residuals))
    jax.block_until_ready(kernel_bwd(*residuals))
    for _ in range(repeats):  # interleaved, so that load from elsewhere hits both alike
        for name, fn in (("jax", jax_bwd), ("kernel", kernel_bwd)):
            times[name].extend(timed(fn, residuals, 1))
    got, expected = kernel_bwd(*residuals), jax_bwd(*residuals)
    rel_err = max(
        float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(b)) + 1e-30))
        for a, b in zip(got, expected, strict=True)
    )
    threads = int(os.environ.get("ZEROHSI_JAX_KERNEL_THREADS", "0")) or os.cpu_count()
    on_cpu = jax.default_backend() == "cpu"
    row = dict(
        n=n,
        size=size,
        capacity=cfg.tile_capacity,
        pairs=int(np.minimum(np.asarray(inputs[6]), cfg.tile_capacity).sum()),
        jax_ms=1e3 * float(np.median(times["jax"])),
        kernel_ms=1e3 * float(np.median(times["kernel"])),
        jax_temp=temp_bytes(jax_bwd),
        kernel_temp=temp_bytes(kernel_bwd),
        kernel_scratch=kernel_scratch_bytes(inputs[5], inputs[6], n, 5, threads) if on_cpu else None,
        rel_err=rel_err,
    )

    if step:
        weights = jax.random.normal(jax.random.PRNGKey(2), (height, width, 5))

        def step_fn(backward):
            c = dataclasses.replace(cfg, backward=backward)

            def loss(means2d, conics, opacities, features):
                img = composite(
                    means2d, conics, opacities, features, inputs[4], inputs[5], inputs[6], width, height, c
                )
                return jnp.sum(img * weights)

            return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3))).lower(*inputs[:4]).compile()

        steps = {name: step_fn(name) for name in ("jax", "kernel")}
        step_times = {"jax": [], "kernel": []}
        for fn in steps.values():
            jax.block_until_ready(fn(*inputs[:4]))
        for _ in range(repeats):
            for name, fn in steps.items():
                step_times[name].extend(timed(fn, inputs[:4], 1))
        row["jax_step_ms"] = 1e3 * float(np.median(step_times["jax"]))
        row["kernel_step_ms"] = 1e3 * float(np.median(step_times["kernel"]))
    return row


def mib(x):
    return "n/a" if x is None else f"{x / 2**20:.1f}"


def table(rows):
    head = (
        "| N | image | tile cap. | pairs | JAX bwd (ms) | kernel bwd (ms) | speed-up | JAX fwd+bwd (ms) "
        "| kernel fwd+bwd (ms) | JAX bwd temp (MiB) | kernel XLA temp + own scratch (MiB) | max rel. diff |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in rows:
        step_j = f"{r['jax_step_ms']:.1f}" if "jax_step_ms" in r else "-"
        step_k = f"{r['kernel_step_ms']:.1f}" if "kernel_step_ms" in r else "-"
        lines.append(
            f"| {r['n']:,} | {r['size']} | {r['capacity']} | {r['pairs']:,} "
            f"| {r['jax_ms']:.1f} | {r['kernel_ms']:.1f} "
            f"| {r['jax_ms'] / r['kernel_ms']:.1f}x | {step_j} | {step_k} | {mib(r['jax_temp'])} "
            f"| {mib(r['kernel_temp'])} + {mib(r['kernel_scratch'])} | {r['rel_err']:.1e} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--counts", type=int, nargs="*")
    parser.add_argument("--sizes", nargs="*", choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=RasterConfig().chunk_size,
        help="chunk of the pure-JAX backward (RasterConfig.chunk_size)",
    )
    parser.add_argument("--no-step", action="store_true", help="skip the forward+backward timing")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    counts = args.counts or ((10_000,) if args.quick else (10_000, 100_000))
    sizes = args.sizes or ["128^2", "256^2"]

    target = "cuda" if jax.default_backend() == "gpu" else "cpu"
    if not kb.load_kernel(target):
        raise SystemExit(f"the {target} kernel is unavailable: {kb.kernel_status(target)}")
    rows = []
    for n in counts:
        for size in sizes:
            row = bench(n, size, args.repeats, args.chunk_size, not args.no_step)
            rows.append(row)
            print(table([row]).splitlines()[-1], flush=True)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    text = "\n".join(
        [
            f"# Compositing backward: compiled kernel vs pure JAX ({target})",
            "",
            f"{datetime.date.today().isoformat()}, {machine()}; kernel threads: "
            f"{os.environ.get('ZEROHSI_JAX_KERNEL_THREADS', 'one per core')}; "
            f"pure-JAX chunk_size {args.chunk_size}; "
            f"median of {args.repeats} interleaved calls"
            + (f"; load average at the end {load[0]:.1f}" if load else "")
            + ".",
            "",
            table(rows),
            "",
        ]
    )
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
