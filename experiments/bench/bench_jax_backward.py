"""The pure-JAX compositing backward beside splax 0.2.3 and our compiled kernel, same scenes, same run.

    python experiments/bench/bench_jax_backward.py --counts 10000 100000 --sizes 256^2 512^2 \
        --out experiments/bench/results_jax_backward.md

Per scene (the random Gaussians of bench_rasterizer.py), three renderers:
  jax     ours, RasterConfig(backward="jax"): the pure-JAX recomputing backward (`composite_backward`)
  kernel  ours, RasterConfig(backward="kernel"): the compiled C++ backward, for reference
  jax-keep  ours as `jax` but with RasterConfig(projection_backward_chunks=0): the projection's
          intermediates kept from the forward (plain autodiff, the default before 2026-12-03);
          only when named in --renderers
  splax   splax 0.2.3 (`pip install splax==0.2.3`), when importable
each timed on the forward (the image) and on forward+backward (jax.grad of a weighted image sum
w.r.t. means, log-scales, quaternions, opacity logits and SH colours); the median of interleaved
repeats (one call of each renderer per round, so that load from other processes on the machine
falls on all of them alike). Memory is XLA's temporary buffers of the compiled step
(`memory_analysis().temp_size_in_bytes`).

About splax on the CPU. splax 0.2.3 is not pure JAX: its projection and rasterization are NVIDIA
Warp kernels called through `warp.jax_callable`. Two settings are needed to run it on the CPU:
  - its projection callable asks for `JaxCallableGraphMode.WARP`, which JAX's CPU FFI refuses:
    every callable is created with graph mode NONE here (patched before splax is imported);
  - its rasterizer is a cooperative 256-thread block per 16x16 tile. Warp's CPU backend runs every
    block with ONE thread unless `warp.config.enable_cpu_blocks` is set, and then only pixel (0, 0)
    of each tile is composited and the other 255 are left uninitialised (garbage, NaNs): a
    measurement in that mode times 1/256 of the work. It is set here (cooperative CPU fibers), and
    the image comparison below checks that splax's image is the same scene as ours.
Warp allocates its sort buffers (tile-Gaussian pairs, per-tile ranges) outside XLA, so XLA's
temporary buffers miss them: the table gives them separately ("splax scratch").
Our render composites 5 channels (RGB, depth, alpha) where splax composites 3 (RGB; alpha from T).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_rasterizer import SIZES, scene  # noqa: E402
from machine_info import machine  # noqa: E402

from zerohsi_jax.splat import RasterConfig, fit_capacity, render  # noqa: E402


def import_splax():
    """splax with every Warp callable in graph mode NONE and CPU blocks on (see the docstring);
    None when it is not installed."""
    try:
        import warp
    except ImportError:
        return None
    warp.config.enable_cpu_blocks = True
    warp.config.quiet = True
    original = warp.jax_callable
    warp.jax_callable = lambda *a, **k: original(*a, **{**k, "graph_mode": warp.JaxCallableGraphMode.NONE})
    try:
        import splax
    except ImportError:
        return None
    finally:
        warp.jax_callable = original
    return splax


def splax_scratch_bytes(splax) -> int:
    """Bytes of the sort buffers Warp holds for splax (outside XLA's accounting)."""
    from splax import _cache

    total = 0
    for entry in _cache._scratch_cache.values():
        for name in ("isect_ids", "gaussian_ids", "tile_bins", "depth_mm"):
            a = entry.get(name)
            if a is not None:
                total += a.capacity if hasattr(a, "capacity") else a.size * a.dtype._length_ * 4
    return total


def params_of(g):
    return (g.means, g.log_scales, g.quats, g.opacity_logits, g.sh)


def ours_fns(g, cam, cfg, weights):
    def image(means, log_scales, quats, logits, sh):
        g2 = dataclasses.replace(g, means=means, log_scales=log_scales, quats=quats, opacity_logits=logits, sh=sh)
        return render(g2, cam, config=cfg).rgb

    def loss(*p):
        return jnp.sum(image(*p) * weights)

    return image, jax.grad(loss, argnums=(0, 1, 2, 3, 4))


def splax_fns(splax, cam, weights):
    kw = dict(
        viewmat=cam.viewmat,
        background=jnp.zeros(3, jnp.float32),
        img_shape=(cam.height, cam.width),
        f=(float(cam.fx), float(cam.fy)),
        c=(float(cam.cx), float(cam.cy)),
    )

    def image(means, log_scales, quats, logits, sh):
        return splax.render(means, log_scales, quats, sh, logits, **kw)[0]

    def loss(*p):
        return jnp.sum(image(*p) * weights)

    return image, jax.grad(loss, argnums=(0, 1, 2, 3, 4))


def renderer_config(base, renderer):
    """Our renderers by name: 'jax', 'kernel', or 'jax-keep' (the pure-JAX backward with the
    projection's intermediates kept rather than recomputed in the backward)."""
    if renderer == "jax-keep":
        return dataclasses.replace(base, backward="jax", projection_backward_chunks=0)
    return dataclasses.replace(base, backward=renderer)


def compile_fn(fn, args):
    compiled = jax.jit(fn).lower(*args).compile()
    mem = compiled.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
    jax.block_until_ready(compiled(*args))  # warm-up (and splax's Warp module load)
    return compiled, temp


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--sizes", nargs="*", choices=list(SIZES), default=["256^2", "512^2"])
    parser.add_argument("--renderers", nargs="*", default=["jax", "kernel", "splax"],
                        help="of jax, kernel, jax-keep, splax")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--chunk-size", type=int, default=None, help="RasterConfig.chunk_size (default: its default)")
    parser.add_argument("--label", default="", help="a word for the table's heading (before/after)")
    parser.add_argument("--out", default=None, help="append the markdown table to this file")
    args = parser.parse_args()

    splax = import_splax() if "splax" in args.renderers else None
    renderers = [r for r in args.renderers if r != "splax" or splax is not None]
    if "kernel" in renderers:
        from zerohsi_jax.splat import kernel_backward

        if not kernel_backward.load_kernel("cpu"):
            renderers.remove("kernel")

    rows = []
    for n in args.counts:
        for size_name in args.sizes:
            width, height = SIZES[size_name]
            g, cam = scene(n, width, height)
            base = fit_capacity(g, cam, RasterConfig(), headroom=1.2)
            if args.chunk_size:
                base = dataclasses.replace(base, chunk_size=args.chunk_size)
                base = base.with_capacity(tile_capacity=-(-base.tile_capacity // args.chunk_size) * args.chunk_size)
            weights = jax.random.uniform(jax.random.PRNGKey(1), (height, width, 3), jnp.float32)
            p = params_of(g)
            row = {"N": n, "size": size_name, "cap": base.tile_capacity}
            fns, images = {}, {}
            for r in renderers:
                if r == "splax":
                    image, grad = splax_fns(splax, cam, weights)
                else:
                    image, grad = ours_fns(g, cam, renderer_config(base, r), weights)
                fwd, m_fwd = compile_fn(image, p)
                bwd, m_bwd = compile_fn(grad, p)
                images[r] = np.asarray(fwd(*p))
                fns[r] = (fwd, bwd)
                row[r] = {"mem_fwd": m_fwd, "mem_bwd": m_bwd, "t_fwd": [], "t_bwd": []}
                if r == "splax":
                    row[r]["scratch"] = splax_scratch_bytes(splax)
            for _ in range(args.repeats):  # interleaved: each renderer once per round
                for r in renderers:
                    for kind, fn in zip(("t_fwd", "t_bwd"), fns[r], strict=True):
                        t = time.perf_counter()
                        jax.block_until_ready(fn(*p))
                        row[r][kind].append(time.perf_counter() - t)
            for r in renderers:
                row[r]["t_fwd"] = float(np.median(row[r]["t_fwd"]))
                row[r]["t_bwd"] = float(np.median(row[r]["t_bwd"]))
            if "splax" in images:
                ref = images[renderers[0]]
                row["img_diff"] = float(np.mean(np.abs(images["splax"] - ref)))
                row["img_mean"] = float(np.mean(np.abs(ref)))
            rows.append(row)
            print(format_row(row, renderers), flush=True)

    table = format_table(rows, renderers)
    header = (
        f"## Pure-JAX backward beside splax 0.2.3{' (' + args.label + ')' if args.label else ''}, "
        f"{datetime.date.today().isoformat()}\n\nMachine: {machine()}\n\n"
        "Times are medians of interleaved repeats in ms; memory is XLA's temporary buffers of the "
        "compiled step in MB (splax's Warp sort buffers, outside XLA, in 'splax scratch'). Ratios are "
        "splax / ours (above 1: ours is faster or smaller). 'img diff' is the mean absolute difference "
        "of the two renderers' images over the mean pixel value (the same scene check).\n\n"
    )
    print("\n" + header + table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(header + table + "\n\n")


def _ms(x):
    return "-" if x is None else f"{1e3 * x:.0f}" if x >= 0.1 else f"{1e3 * x:.1f}"


def _mb(x):
    return "-" if x is None else f"{x / 1e6:.0f}" if x >= 1e7 else f"{x / 1e6:.1f}"


def format_row(r, renderers):
    parts = [f"N={r['N']:>7} {r['size']:>6} cap={r['cap']:>5}"]
    for name in renderers:
        v = r[name]
        parts.append(f"{name}: fwd {_ms(v['t_fwd'])} ms, f+b {_ms(v['t_bwd'])} ms, mem {_mb(v['mem_bwd'])} MB")
    if "img_diff" in r:
        parts.append(f"img diff {r['img_diff'] / r['img_mean']:.3f}")
    return " | ".join(parts)


def format_table(rows, renderers):
    cols = ["N", "image", "tile cap"]
    for name in renderers:
        cols += [f"{name} fwd", f"{name} fwd+bwd", f"{name} mem fwd+bwd"]
    if "splax" in renderers:
        cols += ["splax scratch"]
        for name in ("jax", "kernel"):
            if name in renderers:
                cols += [f"splax/{name} fwd", f"splax/{name} fwd+bwd"]
        if "jax" in renderers:
            cols += ["splax/jax mem (splax incl. scratch)"]
        cols += ["img diff"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r['N']:,}", r["size"], str(r["cap"])]
        for name in renderers:
            v = r[name]
            cells += [_ms(v["t_fwd"]), _ms(v["t_bwd"]), _mb(v["mem_bwd"])]
        if "splax" in renderers:
            s = r["splax"]
            cells.append(_mb(s.get("scratch")))
            for name in ("jax", "kernel"):
                if name in renderers:
                    cells += [f"{s['t_fwd'] / r[name]['t_fwd']:.2f}", f"{s['t_bwd'] / r[name]['t_bwd']:.2f}"]
            if "jax" in renderers:
                j = r["jax"]["mem_bwd"]
                splax_total = (s["mem_bwd"] or 0) + (s.get("scratch") or 0)
                cells.append("-" if not (j and splax_total) else f"{splax_total / j:.2f}")
            cells.append(f"{r['img_diff'] / r['img_mean']:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
