"""Our rasterizer against gsplat's CUDA rasterizer, same scenes, same run, on the GPU.

Random Gaussians in a 2 m cube 3 m in front of a 1280 x 720 camera (as bench_rasterizer.py), at
100k and 1M. Per scene: forward, and forward + backward (gradient of a weighted image sum
w.r.t. means, quaternions, scales, opacities and colours), median of interleaved repeats after a
warm-up, for ours (`render`, backward 'kernel' and 'jax') and for `gsplat.rasterization` (1.5.3,
its CUDA kernels). Ratios are gsplat time / ours (higher: ours faster).

gsplat needs CUDA (on a CPU machine its row says so and only ours is timed; that is a check of
the script, not a comparison). Its kernels compile on first use where the wheel has none.

    python experiments/bench/bench_gsplat.py [--counts 100000 1000000] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from machine_info import machine  # noqa: E402

from zerohsi_jax.splat import Camera, Gaussians, RasterConfig, fit_capacity, render


def scene(n: int, width: int, height: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.uniform(-1, 1, (n, 3)).astype(np.float32) + np.array([0, 0, 3], np.float32)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    scales = np.full((n, 3), 0.02 * (1e5 / n) ** (1 / 3), np.float32) * rng.uniform(0.5, 1.5, (n, 3)).astype(np.float32)
    opacity = rng.uniform(0.2, 0.9, n).astype(np.float32)
    colors = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    f = 0.5 * height / np.tan(np.deg2rad(55) / 2)
    return means, quats, scales, opacity, colors, f


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def ours(means, quats, scales, opacity, colors, f, width, height, backward: str):
    from zerohsi_jax.splat.gaussians import rgb_to_sh0

    g = Gaussians(means=jnp.asarray(means), quats=jnp.asarray(quats), log_scales=jnp.log(jnp.asarray(scales)),
                  opacity_logits=jnp.log(jnp.asarray(opacity) / (1 - jnp.asarray(opacity))),
                  sh=rgb_to_sh0(jnp.asarray(colors))[:, None, :])
    camera = Camera(jnp.eye(4), f, f, width / 2, height / 2, width, height, near=0.01, far=100.0)
    cfg = fit_capacity(g, camera, RasterConfig(backward=backward))
    weights = jnp.asarray(np.random.default_rng(1).uniform(size=(height, width, 3)), jnp.float32)
    fwd = jax.jit(lambda g: render(g, camera, config=cfg).rgb)
    step = jax.jit(jax.grad(lambda g: jnp.sum(render(g, camera, config=cfg).rgb * weights), allow_int=True))
    return (lambda: jax.block_until_ready(fwd(g))), (lambda: jax.block_until_ready(step(g)))


def gsplat_fns(means, quats, scales, opacity, colors, f, width, height):
    import torch
    from gsplat import rasterization

    dev = "cuda"
    t = lambda a: torch.tensor(a, device=dev)  # noqa: E731
    params = [t(means), t(quats), t(scales), t(opacity), t(colors)]
    for p in params:
        p.requires_grad_(True)
    viewmat = torch.eye(4, device=dev)[None]
    k = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], device=dev, dtype=torch.float32)[None]
    weights = torch.rand((1, height, width, 3), device=dev)

    def forward():
        with torch.no_grad():
            img, _, _ = rasterization(*params, viewmat, k, width, height, packed=False)
        torch.cuda.synchronize()
        return img

    def step():
        img, _, _ = rasterization(*params, viewmat, k, width, height, packed=False)
        (img * weights).sum().backward()
        torch.cuda.synchronize()

    return forward, step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    try:
        import torch

        have_gsplat = torch.cuda.is_available()
        reason = "" if have_gsplat else "torch sees no CUDA device"
    except ImportError as err:
        have_gsplat, reason = False, f"torch missing ({err})"
    rows = []
    for n in args.counts:
        data = scene(n, args.width, args.height)
        row = {"n": n}
        for backward in ("kernel", "jax"):
            fwd, step = ours(*data, args.width, args.height, backward)
            row[f"ours_{backward}"] = (timed(fwd, args.repeats), timed(step, args.repeats))
        if have_gsplat:
            try:
                fwd, step = gsplat_fns(*data, args.width, args.height)
                row["gsplat"] = (timed(fwd, args.repeats), timed(step, args.repeats))
            except Exception as err:  # noqa: BLE001 - the table says why gsplat did not run
                row["gsplat"] = None
                reason = f"gsplat failed: {type(err).__name__}: {err}"[:200]
        rows.append(row)
        print(row, flush=True)
    ms = lambda x: f"{x * 1e3:.2f}"  # noqa: E731
    lines = [
        f"## Rasterizer against gsplat (CUDA), {datetime.date.today().isoformat()}",
        "",
        f"{machine()}; {args.width}x{args.height}; `python experiments/bench/bench_gsplat.py`. Median ms of "
        f"{args.repeats}; ratio = gsplat / ours (kernel backward)."
        + ("" if have_gsplat else f" gsplat not run: {reason}."),
        "",
        "| N | ours fwd | ours fwd+bwd (kernel) | ours fwd+bwd (jax) | gsplat fwd | gsplat fwd+bwd | fwd ratio | "
        "fwd+bwd ratio |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        k, j, gs = r["ours_kernel"], r["ours_jax"], r.get("gsplat")
        g_cells = f"{ms(gs[0])} | {ms(gs[1])} | {gs[0] / k[0]:.2f} | {gs[1] / k[1]:.2f}" if gs else "- | - | - | -"
        lines.append(f"| {r['n']:,} | {ms(k[0])} | {ms(k[1])} | {ms(j[1])} | {g_cells} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
