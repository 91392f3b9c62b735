"""Benchmark of the avatar map A(r, phi, Theta; T): forward, and forward + backward, per frame.

Two avatars:
- official: the Animatable Gaussians networks at the official size (3 DualStyleUNets 512 ->
  1024 + view-direction net, 223.6M parameters, random official-style init) on a 1024 x 2048
  canonical map rendered from the synthetic SMPL-X body (one Gaussian per body pixel);
- builtin: the built-in avatar (small networks, 128 px maps, ~12k Gaussians).

Backward = the gradient the fitting needs: w.r.t. the pose (phi, Theta, r) and the colour net's
parameters, of a loss on all Gaussian attributes. Timings are the median of `--repeats` runs
after one warm-up (compilation is reported separately).

    python experiments/bench/bench_avatar.py [--which official builtin] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from machine_info import machine  # noqa: E402

from zerohsi_jax.avatar import AnimatableAvatar, StyleUNetConfig, builtin_avatar
from zerohsi_jax.avatar.builtin import canonical_body, canonical_maps, load_model_arrays
from zerohsi_jax.avatar.layers import ViewDirNet
from zerohsi_jax.avatar.model import OFFICIAL_OPACITY, make_template
from zerohsi_jax.avatar.styleunet import DualStyleUNet
from zerohsi_jax.synthetic import synthetic_smplx_path

RESULTS = Path(__file__).with_name("results_avatar.md")


def official_avatar(seed: int = 0) -> AnimatableAvatar:
    from converters.avatar_to_eqx import knn_mean_sq_dist

    rng = np.random.default_rng(seed)
    verts, faces, weights, joints, parents = canonical_body(
        load_model_arrays(synthetic_smplx_path()), np.zeros(10)
    )
    pts, nml, w, rows, cols, _, _ = canonical_maps(verts, faces, weights, 1024)
    order = np.lexsort((cols, rows))
    pts, nml, w, rows, cols = pts[order], nml[order], w[order], rows[order], cols[order]
    n = len(pts)
    quats = np.zeros((n, 4))
    quats[:, 0] = 1
    template = make_template(
        map_size=1024, map_points=pts, map_normals=nml, map_weights=w, map_rows=rows, map_cols=cols,
        gaussian_means=pts, gaussian_weights=w, gaussian_rows=rows, gaussian_cols=cols,
        base_log_scales=np.repeat(np.log(np.sqrt(knn_mean_sq_dist(pts)))[:, None], 3, 1),
        base_opacity_logits=np.full(n, np.log(OFFICIAL_OPACITY / (1 - OFFICIAL_OPACITY))),
        base_quats=quats, base_colors=np.zeros((n, 3)),
        joints_rest=joints, parents=parents, betas=np.zeros(10),
    )  # fmt: skip
    nets = {name: DualStyleUNet.random(StyleUNetConfig(out_ch=ch), rng) for name, ch in
            (("position_net", 3), ("other_net", 8), ("color_net", 3))}  # fmt: skip
    return AnimatableAvatar(
        **nets, viewdir_net=ViewDirNet.random(128, 64, rng), template=template, color_order="bgr"
    )


def timed(fn, *args, repeats: int):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def bench(avatar: AnimatableAvatar, repeats: int, dtype: str = "float32") -> dict:
    rng = np.random.default_rng(0)
    go = jnp.asarray(rng.normal(0, 0.2, 3), jnp.float32)
    bp = jnp.asarray(rng.normal(0, 0.2, 63), jnp.float32)
    tr = jnp.asarray(rng.normal(0, 0.2, 3), jnp.float32)
    cam = jnp.array([0.3, 0.2, 3.0])

    @eqx.filter_jit
    def fwd(a, go, bp, tr, cam):
        return a(go, bp, tr, cam, dtype=dtype)

    color, rest = eqx.partition(avatar, avatar.color_filter())

    @eqx.filter_jit
    def fwd_bwd(color, rest, pose):
        def loss(diff):
            c, (go, bp, tr) = diff
            g = eqx.combine(c, rest)(go, bp, tr, cam, dtype=dtype)
            return sum(jnp.mean(x**2) for x in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh))

        return eqx.filter_value_and_grad(loss)((color, pose))

    compile_f, t_f = timed(fwd, avatar, go, bp, tr, cam, repeats=repeats)
    compile_b, t_b = timed(fwd_bwd, color, rest, (go, bp, tr), repeats=repeats)
    return {
        "gaussians": avatar.num_gaussians,
        "params": sum(x.size for x in jax.tree.leaves(eqx.filter(avatar, avatar.network_filter()))),
        "forward_s": t_f,
        "forward_backward_s": t_b,
        "first_forward_s": compile_f,
        "first_forward_backward_s": compile_b,
    }



def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--which", nargs="+", default=["builtin", "official"], choices=["builtin", "official"]
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"],
                        help="network precisions timed (bfloat16: weights and activations, float32 out)")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    rows = []
    for which in args.which:
        t0 = time.perf_counter()
        avatar = builtin_avatar(0) if which == "builtin" else official_avatar()
        build = time.perf_counter() - t0
        print(f"{which}: built in {build:.1f} s, {avatar.num_gaussians} Gaussians", flush=True)
        for dtype in args.dtypes:
            r = bench(avatar, args.repeats, dtype)
            print(which, dtype, r, flush=True)
            rows.append((f"{which} ({dtype})", r))
        del avatar
    lines = [
        "# Avatar benchmark",
        "",
        f"{datetime.date.today().isoformat()}, {machine()}. `python experiments/bench/bench_avatar.py`.",
        "Per frame (one pose, one camera), median of "
        f"{args.repeats} runs after a warm-up; 'first' includes compilation. Backward: gradient w.r.t. "
        "the pose (phi, Theta, r) and the colour net.",
        "",
        "| avatar | maps (in -> out) | Gaussians | network params | forward | forward + backward "
        "| first forward | first fwd + bwd |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for which, r in rows:
        maps = "512 -> 1024" if which.startswith("official") else "64 -> 128"
        lines.append(
            f"| {which} | {maps} | {r['gaussians']:,} | {r['params']:,} | {r['forward_s'] * 1e3:.1f} ms | "
            f"{r['forward_backward_s'] * 1e3:.1f} ms | {r['first_forward_s']:.1f} s | "
            f"{r['first_forward_backward_s']:.1f} s |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
