"""The static scene bound once per frame: time per fitting iteration (forward + backward w.r.t.
the dynamic Gaussians, jitted) of the full render of scene + dynamic against `render_bound` on a
scene bound by `bind_static`, over scene sizes at a fixed dynamic set, and the one-off bind cost.

    python experiments/bench/bench_bound_scene.py                          # 10k, 100k, 1M at 320x180
    python experiments/bench/bench_bound_scene.py --scenes 10000 100000 --size 1280x720
    python experiments/bench/bench_bound_scene.py --out experiments/bench/results_bound_scene.md

The scene: random Gaussians in a 4 m x 2 m x 2 m room volume 2-6 m in front of the camera, their
size shrinking as N grows (N^(-1/3)) so that the coverage per pixel stays comparable. The dynamic
set: a person-sized cluster (0.5 m x 1.6 m x 0.3 m) 3 m away, among the scene's Gaussians. Each
timing is the median of `--repeats` runs after a warm-up; the two paths alternate run by run so
that a busy machine slows both alike. Memory is XLA's temporary buffers of the compiled step.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from machine_info import machine  # noqa: E402

from zerohsi_jax.splat import (
    Camera,
    Gaussians,
    RasterConfig,
    bind_static,
    fit_bound_capacity,
    fit_capacity,
    random_gaussians,
    render,
    render_bound,
)


def scene_gaussians(n: int) -> Gaussians:
    edge = 0.15 * (1000 / n) ** (1 / 3)
    g = random_gaussians(jax.random.PRNGKey(0), n, center=(0.0, 0.0, 4.0), spread=1.0,
                         scale_range=(np.log(edge * 0.3), np.log(edge)))
    # A room wider than deep: stretch x.
    return eqx.tree_at(lambda g: g.means, g, g.means * jnp.asarray([2.0, 1.0, 1.0]))


def dynamic_gaussians(n: int) -> Gaussians:
    g = random_gaussians(jax.random.PRNGKey(1), n, center=(0.0, 0.0, 3.0), spread=1.0,
                         scale_range=(np.log(0.004), np.log(0.015)), sh_degree=1)
    centre = jnp.asarray([0.0, 0.0, 3.0])
    return eqx.tree_at(lambda g: g.means, g, (g.means - centre) * jnp.asarray([0.25, 0.8, 0.15]) + centre)


def compiled(fn, *args):
    c = jax.jit(fn).lower(*args).compile()
    mem = c.memory_analysis()
    temp = getattr(mem, "temp_size_in_bytes", None) if mem is not None else None
    return c, temp


def timed(fn, *args) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - t


def run_one(n_scene: int, n_dyn: int, width: int, height: int, repeats: int, backward: str) -> dict:
    scene = scene_gaussians(n_scene)
    dyn = dynamic_gaussians(n_dyn)
    cam = Camera.look_at((0, 0, 0), (0, 0, 3), fov_y_deg=60, width=width, height=height)
    base = RasterConfig(backward=backward)
    full_cfg = fit_capacity(Gaussians.concatenate([scene, dyn]), cam, base, headroom=1.25)
    # The scene's own pair buffer is measured at bind (a one-off); the render's holds the dynamic pairs.
    bind_cfg = dataclasses.replace(full_cfg, pair_capacity=None)
    bound = bind_static(scene, cam, bind_cfg)
    bound_cfg = fit_bound_capacity(bound, dyn, cam, full_cfg, headroom=1.25)
    weights = jax.random.uniform(jax.random.PRNGKey(2), (height, width, 3))

    # The scene is an argument, not a constant folded into the program.
    def full_step(scene, dyn):
        return jax.grad(lambda d: jnp.sum(render(Gaussians.concatenate([scene, d]), cam, config=full_cfg).rgb
                                          * weights))(dyn)

    def bound_step(bound, dyn):
        return jax.grad(lambda d: jnp.sum(render_bound(bound, d, cam, config=bound_cfg).rgb * weights))(dyn)

    full_c, full_mem = compiled(full_step, scene, dyn)
    bound_c, bound_mem = compiled(bound_step, bound, dyn)
    # Warm-up, then alternate.
    timed(full_c, scene, dyn)
    timed(bound_c, bound, dyn)
    timed(lambda: bind_static(scene, cam, bind_cfg))
    t_full, t_bound, t_bind = [], [], []
    for _ in range(repeats):
        t_full.append(timed(full_c, scene, dyn))
        t_bound.append(timed(bound_c, bound, dyn))
        t_bind.append(timed(lambda: bind_static(scene, cam, bind_cfg)))
    return {
        "scene": n_scene, "dynamic": n_dyn, "size": f"{width}x{height}",
        "tile_cap": full_cfg.tile_capacity, "entries": bound.num_entries,
        "full": float(np.median(t_full)), "bound": float(np.median(t_bound)), "bind": float(np.median(t_bind)),
        "full_mem": full_mem, "bound_mem": bound_mem,
    }  # fmt: skip


def _mb(x):
    return "-" if x is None else f"{x / 1e6:.0f}"


def format_table(rows) -> str:
    cols = ["scene N", "dynamic N", "image", "tile cap", "bound entries", "full ms", "bound ms", "full/bound",
            "bind ms (once)", "full MB", "bound MB"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r['scene']:,}", f"{r['dynamic']:,}", r["size"], str(r["tile_cap"]), f"{r['entries']:,}",
                 f"{1e3 * r['full']:.1f}", f"{1e3 * r['bound']:.1f}", f"{r['full'] / r['bound']:.2f}",
                 f"{1e3 * r['bind']:.1f}", _mb(r["full_mem"]), _mb(r["bound_mem"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dynamic", type=int, default=10_000)
    parser.add_argument("--size", default="320x180", help="WIDTHxHEIGHT (1280x720 on a GPU)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backward", default="auto", help="RasterConfig.backward")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    rows = []
    for n in args.scenes:
        r = run_one(n, args.dynamic, width, height, args.repeats, args.backward)
        rows.append(r)
        print(format_table([r]).splitlines()[-1], flush=True)
    header = (f"## Static scene bound once per frame, {datetime.date.today().isoformat()}\n\n"
              f"Machine: {machine()}\n\nPer-iteration forward+backward w.r.t. the dynamic Gaussians "
              f"(medians of {args.repeats} after a warm-up, backward={args.backward!r}); 'bind' is the "
              "one-off bind_static per frame. MB: XLA's temporary buffers of the compiled step.\n\n")
    table = format_table(rows)
    print("\n" + header + table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(header + table + "\n")


if __name__ == "__main__":
    main()
