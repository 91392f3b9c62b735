"""Pipeline benchmark: seconds per sequence under the paper schedule, split by stage, and the
throughput of several seeds (videos) fitted in one batched program.

Camera tracking and the HSI fit cost the same for every frame, so they are measured on a few
frames after compilation and projected to the 51-frame sequence (the table says so); the
refinement runs on the full 51 frames. Compilation is reported separately.

    python experiments/bench/bench_pipeline.py --size 64 --seeds 1 2 5 10 --out experiments/bench/results_pipeline.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import time

import jax
import jax.numpy as jnp
import numpy as np

from zerohsi_jax.reconstruct import Observations, ReconstructConfig, paper_schedule, quick_schedule, reconstruct
from zerohsi_jax.reconstruct.losses import REFINE_TERMS, Objective
from zerohsi_jax.reconstruct.pipeline import subject_betas
from zerohsi_jax.reconstruct.programs import RefineBatch, RefineSettings, refine_program
from zerohsi_jax.reconstruct.refinement import contact_points, hand_vertices
from zerohsi_jax.synthetic.instances import build_demo_scene, noisy_estimates


def observations(demo, seeds: int):
    est = np.stack([noisy_estimates(np.asarray(demo.truth.human.body_pose), 0.05, 100 + s) for s in range(seeds)])
    tile = lambda a: jnp.asarray(np.broadcast_to(a, (seeds,) + a.shape))  # noqa: E731
    return Observations(tile(demo.frames), tile(demo.human_masks), tile(demo.object_masks), jnp.asarray(est))


def time_frames(demo, cfg: ReconstructConfig, seeds: int):
    """(compile + first frame seconds, seconds per further frame) of stages 1 and 2."""
    no_refine = dataclasses.replace(cfg, refine=dataclasses.replace(cfg.refine, enabled=False))
    result = reconstruct(demo.inputs, observations(demo, seeds), demo.initial, demo.vposer, no_refine,
                         raster=demo.raster, progress=False)
    t = result.timings
    later = demo.frames.shape[0] - 2
    return t["compile_and_first_frame_s"], t["camera_tracking_s"] / later, t["hsi_fit_s"] / later


def time_refinement(demo, cfg: ReconstructConfig, seeds: int, frames: int):
    """Seconds of the refinement of a `frames`-long sequence per seed batch (after compilation)."""
    human = jax.tree.map(lambda x: jnp.broadcast_to(jnp.resize(x, (frames,) + x.shape[1:]), (seeds, frames) +
                                                    x.shape[1:]), demo.truth.human)
    poses = demo.truth.object_poses
    rot = jnp.resize(poses.rotation, (frames, 3, 3))
    trans = jnp.resize(poses.translation, (frames, 3))
    points = jnp.broadcast_to(contact_points(demo.inputs.object.means, rot, trans, cfg.refine.max_contact_points),
                              (seeds, frames, min(demo.inputs.object.num, cfg.refine.max_contact_points), 3))
    hands = demo.inputs.body.vertex_subset(hand_vertices(demo.inputs.body, cfg.refine.max_hand_vertices))
    batch = RefineBatch(hands, demo.vposer, human, points, jnp.asarray(subject_betas(demo.inputs)),
                        jnp.ones((seeds,), bool))
    settings = RefineSettings(cfg.refine, 1.0, Objective.of(REFINE_TERMS, cfg.refine.loss_weights))
    run = lambda: refine_program(batch, settings)  # noqa: E731
    began = time.perf_counter()
    jax.block_until_ready(run().human.transl)
    compile_s = time.perf_counter() - began
    began = time.perf_counter()
    jax.block_until_ready(run().human.transl)
    return compile_s, time.perf_counter() - began


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--measure-frames", type=int, default=4, help="frames timed (after the first)")
    parser.add_argument("--sequence-frames", type=int, default=51)
    parser.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 5, 10])
    parser.add_argument("--schedule", choices=["paper", "quick"], default="paper")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from machine_info import machine

    cfg = paper_schedule() if args.schedule == "paper" else quick_schedule()
    demo = build_demo_scene(args.measure_frames + 2, args.size)
    rows = []
    for seeds in args.seeds:
        first, camera, hsi = time_frames(demo, cfg, seeds)
        ref_compile, refine = time_refinement(demo, cfg, seeds, args.sequence_frames)
        later = args.sequence_frames - 1
        total = later * (camera + hsi) + refine
        rows.append(dict(seeds=seeds, camera=camera * later, hsi=hsi * later, refine=refine, total=total,
                         compile=first + ref_compile, throughput=seeds / total))
        print(rows[-1], flush=True)
    base = rows[0]["total"] / rows[0]["seeds"]
    header = (
        f"## Pipeline, {args.schedule} schedule, {datetime.date.today().isoformat()}\n\n"
        f"Machine: {machine()}. Image {args.size}x{args.size}; demo assets ({demo.inputs.avatar.num_gaussians} avatar, "
        f"{demo.inputs.scene.num} scene, {demo.inputs.object.num} object Gaussians). Stages 1-2 timed on "
        f"{args.measure_frames} frames after compilation and projected to {args.sequence_frames} frames; "
        f"the refinement run on all {args.sequence_frames}.\n\n"
    )
    lines = ["| seeds | camera tracking (s) | HSI fit (s) | refinement (s) | sequence total (s) | "
             "s per seed | speed-up per seed vs 1 | compile (s) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['seeds']} | {r['camera']:.1f} | {r['hsi']:.1f} | {r['refine']:.1f} | {r['total']:.1f} | "
                     f"{r['total'] / r['seeds']:.1f} | {base / (r['total'] / r['seeds']):.2f} | {r['compile']:.1f} |")
    text = header + "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
