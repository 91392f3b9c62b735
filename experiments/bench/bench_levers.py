"""The HSI fit's speed levers (`HSIFitConfig.network_every`, `network_dtype`, `bind_scene`) on
the CPU: seconds per iteration, per frame and per 51-frame sequence under the paper schedule, and
what each costs in accuracy against a known ground truth, in one process.

The demo instance is built with a pose-dependent avatar (`--pose-dependence`, default 0.3: the
built-in avatar's networks give zero outputs, which would make amortising them exact), its video
rendered from the ground truth and fitted from noisy pose estimates (as the demo does). Every
configuration fits the same short sequence (stage 1 camera tracking, then stage 2 the HSI fit;
the refinement is left out: the levers do not touch it), frame by frame in lockstep: frame t is
fitted by every configuration, in an order that rotates from frame to frame, before frame t+1,
so a busy machine slows them alike. Frame 1 carries the compilation; the later frames are timed
(median) and projected to `--sequence-frames`. Accuracy: MPJPE, root and object errors of the
stage-2 poses over frames 1..T-1 (`metrics.ground_truth.ground_truth_errors`), and the MPJPE of
each configuration's poses against the paper configuration's.

A breakdown of one iteration follows: forward + backward of the avatar alone (all networks, the
colour net alone, skinning alone with held network outputs) and of the renderer alone (the full
render of moving + scene Gaussians, and the render with the scene bound once), each jitted and
timed as the median of `--repeats` interleaved calls.

    python experiments/bench/bench_levers.py --size 64 --frames 6 --out experiments/bench/results_levers.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import shlex
import sys
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from zerohsi_jax.devices import SeedMesh, choose_devices
from zerohsi_jax.metrics.ground_truth import body_joints, ground_truth_errors, mpjpe
from zerohsi_jax.reconstruct import Observations, paper_schedule, quick_schedule
from zerohsi_jax.reconstruct.config import ReconstructConfig
from zerohsi_jax.reconstruct.hsi_fit import scene_renderer
from zerohsi_jax.reconstruct.losses import (
    CAMERA_TERMS,
    HSI_TERMS,
    REFINE_TERMS,
    gaussian_blur,
    gaussian_blur_conv,
    ssim,
)
from zerohsi_jax.reconstruct.pipeline import (
    Fitted,
    _prepare_run,
    fit_one_frame,
    measure_moving_pairs,
    measure_raster_config,
    refine,
    start_or_resume,
)
from zerohsi_jax.reconstruct.state import SCENE_GROUP, moving_gaussians
from zerohsi_jax.synthetic.instances import build_demo_scene, noisy_estimates

TERMS = {"camera": CAMERA_TERMS, "hsi": HSI_TERMS, "refine": REFINE_TERMS}

LEVERS = {
    "paper": {},
    "network_every=5": {"network_every": 5},
    "network_every=25": {"network_every": 25},
    "network_every=0": {"network_every": 0},
    "bfloat16": {"network_dtype": "bfloat16"},
    "bind_scene": {"bind_scene": True},
    "color_every=25": {"color_every": 25},
    "tile_size=8": {"tile_size": 8},
}


def parse_levers(text: str) -> dict:
    """'network_every=0,bind_scene=True,tile_size=8' -> keywords of HSIFitConfig (or of
    ReconstructConfig for its own fields, such as tile_size)."""
    out = {}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        out[key] = {"True": True, "False": False}.get(value, int(value) if value.lstrip("-").isdigit() else value)
    return out


# ------------------------------------------------------------------ the fits, in lockstep


def start_runs(demo, obs, base, configs: dict):
    """name -> [run, states, raster]: each configuration's run prepared and frame 0 set up."""
    runs = {}
    top_level = {f.name for f in dataclasses.fields(base)} - {"camera", "hsi", "refine"}
    for name, levers in configs.items():
        hsi = {k: v for k, v in levers.items() if k not in top_level}
        cfg = dataclasses.replace(base, hsi=dataclasses.replace(base.hsi, **hsi),
                                  refine=dataclasses.replace(base.refine, enabled=False),
                                  **{k: v for k, v in levers.items() if k in top_level})
        run = _prepare_run(demo.inputs, obs, cfg, TERMS, None, False, print, SeedMesh.of(choose_devices(1)))
        raster = demo.raster
        if cfg.tile_size != raster.tile_size:
            raster = measure_raster_config(demo.inputs, demo.initial, cfg)
        elif cfg.hsi.bind_scene:
            raster = raster.with_capacity(
                dynamic_pair_capacity=measure_moving_pairs(demo.inputs, demo.initial, demo.raster))
        fitted = start_or_resume(run, demo.initial, raster, resume=False)
        runs[name] = [run, fitted.states, fitted.raster]
    return runs


def fit_lockstep(runs: dict, n_frames: int):
    """Every frame by every configuration (rotating order); name -> (camera s, HSI s) per frame."""
    names = list(runs)
    times = {name: [] for name in names}
    for t in range(1, n_frames):
        shift = (t - 1) % len(names)
        for name in names[shift:] + names[:shift]:
            run, states, raster = runs[name]
            step = fit_one_frame(run, states[-1], t, raster)
            states.append(step.state)
            runs[name][2] = step.raster
            times[name].append((step.camera_s, step.hsi_s))
            print(f"frame {t} {name:28s} camera {step.camera_s:7.2f} s  HSI {step.hsi_s:7.2f} s  "
                  f"final loss {float(np.mean(step.hsi_losses[..., -1])):.4f}", flush=True)
    return times


def accuracy(demo, runs: dict, estimates, reference: str = "paper") -> dict:
    """name -> ground-truth errors of the stage-2 poses, and MPJPE against the reference's poses."""
    body, out = demo.inputs.body, {}
    results = {}
    for name, (run, states, raster) in runs.items():
        results[name] = refine(run, demo.vposer, Fitted(states, len(states), raster, {}, {}))
        out[name] = ground_truth_errors(body, results[name], demo.truth, estimates=estimates)

    def joints(rec):
        h = rec.human_stage2
        return body_joints(body, jnp.asarray(h.transl)[:, 1:], jnp.asarray(h.global_orient)[:, 1:],
                           jnp.asarray(h.body_pose)[:, 1:], jnp.asarray(rec.betas))

    ref = joints(results[reference])
    for name, rec in results.items():
        out[name]["mpjpe_vs_paper_mm"] = round(1000 * float(mpjpe(joints(rec), ref)), 3)
    return out


# ------------------------------------------------------------------ one iteration, by part


def part_functions(demo, hsi_frame: int = 1):
    """Jitted forward + backward of the parts of an HSI iteration, at the truth of `hsi_frame`:
    name -> (function, args)."""
    inputs, truth = demo.inputs, demo.truth
    avatar = inputs.avatar
    color, rest = eqx.partition(avatar, avatar.color_filter())
    t = hsi_frame
    pose = (jnp.asarray(truth.human.global_orient[t]), jnp.asarray(truth.human.body_pose[t]),
            jnp.asarray(truth.human.transl[t]))
    camera = inputs.camera.with_viewmat(jnp.asarray(truth.viewmats[t]))
    cam_pos = camera.position
    frame = jnp.asarray(demo.frames[t])
    background = jnp.zeros(3, jnp.float32)

    def squares(tree):
        return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)
                   if eqx.is_inexact_array(x))

    def avatar_loss(params, dtype, nets, held):
        av = eqx.combine(params[1], rest)
        if nets == "all":
            g = av(*params[0], cam_pos, dtype=dtype)
        else:
            maps = av.network_maps(*params[0], cam_pos, nets=nets, dtype=dtype) if nets else held
            g = av.pose_gaussians(held.replace(maps), *params[0])
        return squares(g)

    held = avatar.network_maps(*pose, cam_pos)
    grad = lambda f: eqx.filter_jit(eqx.filter_value_and_grad(f))  # noqa: E731  (Gaussians hold int groups)
    both = ((pose, color),)
    parts = {
        "avatar, all networks (float32)": (grad(lambda p: avatar_loss(p, "float32", "all", held)), both),
        "avatar, all networks (bfloat16)": (grad(lambda p: avatar_loss(p, "bfloat16", "all", held)), both),
        "avatar, colour net + skinning": (grad(lambda p: avatar_loss(p, "float32", ("color",), held)), both),
        "avatar, skinning only (held outputs)": (grad(lambda p: avatar_loss(p, "float32", (), held)), both),
    }
    obj_pose = jax.tree.map(lambda x: jnp.asarray(x[t]), truth.object_poses)
    moving = moving_gaussians(avatar(*pose, cam_pos), inputs.object, obj_pose)
    raster = demo.raster.with_capacity(dynamic_pair_capacity=measure_moving_pairs(inputs, demo.initial, demo.raster))
    small_tiles = measure_raster_config(inputs, demo.initial, ReconstructConfig(
        tile_size=8, hsi=dataclasses.replace(ReconstructConfig().hsi, bind_scene=True)))
    scene = inputs.scene.with_group(SCENE_GROUP)
    for label, bind, cfg in (("renderer, full (moving + scene)", False, raster),
                             ("renderer, scene bound once", True, raster),
                             ("renderer, scene bound once, 8-pixel tiles", True, small_tiles),
                             ("renderer, scene bound once, 8-pixel tiles, XLA's forward loop", True,
                              dataclasses.replace(small_tiles, forward="jax"))):
        render_moving, _ = scene_renderer(scene, camera, cfg, background, bind)

        def render_loss(g, render_moving=render_moving):
            out = render_moving(g)
            return jnp.mean(jnp.abs(out.rgb - frame)) + jnp.mean(out.group_masks)

        parts[label] = (grad(render_loss), (moving,))
    rendered = frame * 0.9 + 0.05
    for label, blur in (("loss L1 + D-SSIM, shifted-sum blur", gaussian_blur), ("loss L1 + D-SSIM, convolution blur",
                                                                                 gaussian_blur_conv)):
        def rgb(x, blur=blur):
            return 0.9 * jnp.mean(jnp.abs(x - frame)) + 0.1 * (1.0 - ssim(x, frame, blur=blur))

        parts[label] = (grad(rgb), (rendered,))
    return parts


def time_parts(parts: dict, repeats: int) -> dict:
    """name -> (compile + first call s, median s per call), the calls interleaved."""
    first, samples = {}, {name: [] for name in parts}
    for name, (fn, args) in parts.items():
        began = time.perf_counter()
        jax.block_until_ready(fn(*args))
        first[name] = time.perf_counter() - began
    for _ in range(repeats):
        for name, (fn, args) in parts.items():
            began = time.perf_counter()
            jax.block_until_ready(fn(*args))
            samples[name].append(time.perf_counter() - began)
    return {name: (first[name], float(np.median(samples[name]))) for name in parts}


# ------------------------------------------------------------------ the report


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=6, help="frames of the fitted sequence (frame 0 is given)")
    parser.add_argument("--sequence-frames", type=int, default=51, help="the sequence length projected to")
    parser.add_argument("--schedule", choices=["paper", "quick"], default="paper")
    parser.add_argument("--hsi-iterations", type=int, default=None, help="override (smoke tests)")
    parser.add_argument("--camera-iterations", type=int, default=None, help="override (smoke tests)")
    parser.add_argument("--pose-dependence", type=float, default=0.3)
    parser.add_argument("--avatar-size", choices=["tiny", "small", "medium"], default="small",
                        help="the built-in avatar's networks (small: maps 128, the demo's; medium: maps 256, where "
                        "the networks are most of an iteration, as at the paper's scale)")
    parser.add_argument("--avatar-gaussians", type=int, default=4000)
    parser.add_argument("--estimate-noise", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recommended",
                        default="network_every=0,color_every=25,bind_scene=True,network_dtype=bfloat16")
    parser.add_argument("--recommended-cpu", default="network_every=0,color_every=25,bind_scene=True,tile_size=8",
                        help="the levers recommended on a CPU: bfloat16 has no fast path there, small tiles do")
    parser.add_argument("--gpu", action="store_true",
                        help="the GPU suite's run: 512 px, 4 frames, the paper and the recommended levers only")
    parser.add_argument("--only", nargs="*", default=None, help="configurations to run (default: all)")
    parser.add_argument("--repeats", type=int, default=10, help="calls per part in the breakdown")
    parser.add_argument("--no-parts", action="store_true", help="skip the per-part breakdown")
    parser.add_argument("--xla-cache", default=None, help="JAX's persistent compilation cache folder (reruns "
                        "then skip most compilation; the compile column then says so)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.gpu:
        args.size, args.frames, args.only, args.no_parts = 512, 4, ["recommended"], True
    if args.xla_cache:
        jax.config.update("jax_compilation_cache_dir", args.xla_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

    started = time.perf_counter()
    base = paper_schedule() if args.schedule == "paper" else quick_schedule()
    if args.hsi_iterations is not None:
        base = dataclasses.replace(base, hsi=dataclasses.replace(
            base.hsi, iterations=args.hsi_iterations,
            root_only_iterations=min(base.hsi.root_only_iterations, args.hsi_iterations)))
    if args.camera_iterations is not None:
        base = dataclasses.replace(base, camera=dataclasses.replace(base.camera, iterations=args.camera_iterations))
    configs = dict(LEVERS, recommended=parse_levers(args.recommended))
    configs["recommended-cpu"] = parse_levers(args.recommended_cpu)
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only or k == "paper"}

    demo = build_demo_scene(args.frames, args.size, seed=args.seed, avatar_pose_dependence=args.pose_dependence,
                            avatar_size=args.avatar_size, avatar_gaussians=args.avatar_gaussians)
    estimates = noisy_estimates(np.asarray(demo.truth.human.body_pose), args.estimate_noise, args.seed + 100)[None]
    obs = Observations(jnp.asarray(demo.frames)[None], jnp.asarray(demo.human_masks)[None],
                       jnp.asarray(demo.object_masks)[None], jnp.asarray(estimates))
    setup_s = time.perf_counter() - started
    print(f"demo ready in {setup_s:.1f} s: {demo.inputs.avatar.num_gaussians} avatar, {demo.inputs.scene.num} scene, "
          f"{demo.inputs.object.num} object Gaussians", flush=True)

    runs = start_runs(demo, obs, base, configs)
    times = fit_lockstep(runs, args.frames)
    errors = accuracy(demo, runs, estimates)
    report(args, base, demo, configs, times, errors, {}, started)
    if not args.no_parts:
        report(args, base, demo, configs, times, errors, time_parts(part_functions(demo), args.repeats), started)


def report(args, base, demo, configs, times, errors, parts, started):
    """The tables, printed and written to `args.out` (first without the parts, then with them)."""
    from machine_info import machine

    its, later = base.hsi.iterations, args.sequence_frames - 1
    rows = {}
    for name in configs:
        cam = np.asarray([c for c, _ in times[name][1:]])
        hsi = np.asarray([h for _, h in times[name][1:]])
        first = sum(times[name][0])
        cam_s, hsi_s = float(np.median(cam)), float(np.median(hsi))
        rows[name] = dict(camera=cam_s, hsi=hsi_s, it=hsi_s / its, seq=later * (cam_s + hsi_s),
                          hsi_seq=later * hsi_s, compile=first - cam_s - hsi_s, **errors[name])
        print(name, rows[name], flush=True)
    paper = rows["paper"]
    total_s = time.perf_counter() - started

    command = "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0])] + sys.argv[1:])
    lines = [
        f"## HSI fit speed levers, {args.schedule} schedule, {datetime.date.today().isoformat()}",
        "",
        f"Machine: {machine()} (shared with other jobs; load average at the end "
        f"{os.getloadavg()[0]:.1f}). Command: `{command}` (whole run {total_s / 60:.1f} min).",
        "",
        f"Demo instance at {args.size}x{args.size}, {args.frames} frames (frames 1..{args.frames - 1} fitted), "
        f"{demo.inputs.avatar.num_gaussians} avatar, {demo.inputs.scene.num} scene, {demo.inputs.object.num} object "
        f"Gaussians; avatar '{args.avatar_size}' with pose-dependent networks (strength {args.pose_dependence}); "
        "pose estimates = truth + "
        f"N(0, {args.estimate_noise}) rad; 1 seed. Schedule: camera {base.camera.iterations} it/frame, HSI "
        f"{its} it/frame (colour net every {base.hsi.color_every}th). Configurations fitted frame by frame in "
        f"lockstep (rotating order); frame 1 carries the compilation, frames 2..{args.frames - 1} are timed "
        f"(median) and projected to {args.sequence_frames} frames (stages 1-2 only: the refinement does not "
        f"change with these levers). Errors: stage-2 poses against the truth over frames 1..{args.frames - 1}.",
        "",
        "| configuration | HSI ms/it | HSI s/frame | camera s/frame | stages 1-2 s per "
        f"{args.sequence_frames} frames | HSI speed-up | stages 1-2 speed-up | MPJPE mm | MPJPE vs paper poses mm | "
        "root transl. mm | root orient. deg | object transl. mm | object rot. deg | first frame - later (compile) s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        label = {"recommended": f"recommended ({args.recommended})",
                 "recommended-cpu": f"recommended-cpu ({args.recommended_cpu})"}.get(name, name)
        lines.append(
            f"| {label} | {1000 * r['it']:.1f} | {r['hsi']:.2f} | {r['camera']:.2f} | {r['seq']:.0f} | "
            f"{paper['hsi'] / r['hsi']:.2f}x | {paper['seq'] / r['seq']:.2f}x | {r['mpjpe_stage2_mm']:.2f} | "
            f"{r['mpjpe_vs_paper_mm']:.2f} | {r['root_translation_stage2_mm']:.2f} | "
            f"{r['root_orientation_stage2_deg']:.3f} | {r['object_translation_mm']:.2f} | "
            f"{r['object_rotation_deg']:.3f} | {r['compile']:.1f} |")
    lines += ["", f"MPJPE of the estimates the fit starts from (truth roots): {paper['mpjpe_estimate_mm']:.2f} mm.", ""]
    if parts:
        lines += [
            "One iteration by part (forward + backward, jitted, at frame 1's truth; median of "
            f"{args.repeats} interleaved calls), against the paper configuration's {1000 * paper['it']:.1f} ms "
            "per fitting iteration:",
            "",
            "| part | ms per call | share of a paper iteration | first call (compile) s |",
            "|---|---:|---:|---:|",
        ]
        for name, (first, per) in parts.items():
            lines.append(f"| {name} | {1000 * per:.1f} | {per / paper['it']:.0%} | {first:.1f} |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
