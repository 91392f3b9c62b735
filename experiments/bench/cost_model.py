"""Cost model of one sequence at the paper's scale: XLA's count of the work, against a GPU's peaks.

No GPU has been lent to this project, so the GPU time is predicted from counted work. Every
program of an iteration is compiled for this machine's CPU without being run, and XLA's cost
analysis gives its floating-point operations and the bytes its operations read and write. Each
part's roofline time on a device is max(flops / compute peak, bytes / memory bandwidth); an
iteration's is the sum of its parts, and a sequence's the iterations of the paper's schedule.

Scale (the paper's): 1280 x 720 frames (the video model's), the official-size Animatable
Gaussians avatar (three DualStyleUNets 512 -> 1024, about 263k Gaussians, `bench_avatar`), a
1M-Gaussian scene, a 50k-Gaussian object, 51 frames: 50 fitted frames x (30 camera-tracking + 300
HSI iterations), and 1000 refinement iterations over the sequence.

What is counted how:
- Avatar networks, skinning, projection, binning, merging into bound tile lists, the photometric
  loss (L1 + D-SSIM), Adam: XLA's cost analysis of each compiled part (forward and the gradient
  the fit takes).
- Compositing runs in a `while` loop over chunks of tile slots, which XLA's cost analysis counts
  once, not per trip. It is counted as (pixel, slot) evaluations x the cost of one, the latter
  from XLA's analysis of one unrolled chunk (forward) and of its VJP (backward). The evaluations
  are those of the scene's tile lists at 720p: the scene is the generated room, densified to 1M
  Gaussians (opaque surfaces, as real scenes are), with the avatar and object placed in it; two
  figures: every listed slot of every pixel (an upper bound), and per-tile early termination (a
  tile stops once its every pixel is opaque, as gsplat's kernels stop), measured by one forward
  render on the CPU.
- The refinement: XLA's analysis of one iteration of the refinement program at 51 frames; the
  hand-object contact search (a scan over blocks) is added as distance evaluations x 9 flops.

Compositing's bytes are modelled as the compiled kernels (kernels/) move them, per tile slot and
per pixel; XLA's bytes of the pure-JAX chunk (every per-slot value written to memory) are printed
beside them: they are what the pure-JAX backward would cost on a GPU, far more.

Assumptions, stated in the output: float32 networks run on tensor cores at the TF32 peak (XLA's
default for float32 convolutions on Hopper), bfloat16 at the BF16 peak; everything else at the
FP32 (non-tensor) peak; the bytes are XLA's CPU-program bytes (fusion on the GPU differs: usually
fewer); no launch overhead, no overlap between parts. Roofline figures are floors: real kernels
reach perhaps 30-60% of them.

    python experiments/bench/cost_model.py                  # paper scale, about 5 min on 2 CPU cores
    python experiments/bench/cost_model.py --out experiments/bench/results_cost_model.md
    python experiments/bench/cost_model.py --small          # a quick check of the script itself
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import time
from pathlib import Path

# Only the count is wanted, not fast machine code: XLA's cost analysis reads the optimised HLO,
# which the backend (LLVM) optimisation level does not change, and at level 0 the CPU compiles the
# paper-scale programs far faster (the whole count: 25 min -> 4.6 min on 2 cores). Checked at both
# levels: --small gives identical records; at the paper's scale every counted program is identical
# and the one measured render (early stop) differs by round-off (one pair in 1.8M, 0.04% of the
# compositing flops). An XLA_FLAGS that sets the level is respected.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from machine_info import machine  # noqa: E402

from zerohsi_jax.reconstruct.losses import gaussian_blur_conv, rgb_loss
from zerohsi_jax.splat import Camera, Gaussians, RasterConfig, bin_gaussians, fit_capacity, project
from zerohsi_jax.splat.binning import sorted_tile_pairs
from zerohsi_jax.splat.bound_scene import merge_pairs_into_tile_lists
from zerohsi_jax.splat.composite_step import forward_chunk, initial_state, tile_pixel_centers

RESULTS = Path(__file__).with_name("results_cost_model.md")

# Published dense peaks (no sparsity), SXM parts. FLOP/s and bytes/s.
DEVICES = {
    "H100 SXM": {"tf32": 494.7e12, "bf16": 989.4e12, "fp32": 66.9e12, "bandwidth": 3.35e12},
    "H200 SXM": {"tf32": 494.7e12, "bf16": 989.4e12, "fp32": 66.9e12, "bandwidth": 4.8e12},
}


@dataclasses.dataclass(frozen=True)
class Cost:
    """Work of one program: flops, bytes, and which compute peak it runs at."""

    flops: float
    bytes: float
    unit: str = "fp32"  # 'tf32', 'bf16' or 'fp32'

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes, self.unit)

    def __mul__(self, k: float) -> Cost:
        return Cost(self.flops * k, self.bytes * k, self.unit)

    def seconds(self, device: dict) -> float:
        return max(self.flops / device[self.unit], self.bytes / device["bandwidth"])


def counted(fn, *args, unit: str = "fp32") -> Cost:
    """XLA's cost analysis of `fn(*args)` compiled (not run) for this machine."""
    compiled = jax.jit(fn).lower(*args).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return Cost(float(analysis.get("flops", 0.0)), float(analysis.get("bytes accessed", 0.0)), unit)


def abstract(tree):
    """The tree with its arrays replaced by shapes: lowering needs no data."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if eqx.is_array(x) else x, tree)


# ------------------------------------------------------------------------------ the avatar


def _attribute_loss(g: Gaussians):
    return sum(jnp.mean(x**2) for x in (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh))


def avatar_costs(avatar) -> dict[str, Cost]:
    """Per HSI iteration, by what it evaluates of the avatar: the gradient w.r.t. the pose and the
    colour net (the fit's), with all networks (float32, bfloat16), the colour net only, or none
    (held outputs: skinning only)."""
    color, rest = eqx.partition(avatar, avatar.color_filter())
    cam = jnp.asarray([0.3, 0.2, 3.0])
    pose = (jnp.zeros(3), jnp.zeros(63), jnp.zeros(3))
    maps = jax.eval_shape(lambda a: a.network_maps(*pose, cam), avatar)
    held = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), maps)

    def networks(dtype, nets):
        def grad(color, rest, pose, held):
            def loss(diff):
                c, p = diff
                a = eqx.combine(c, rest)
                m = held.replace(a.network_maps(*p, cam, nets=nets, dtype=dtype))
                return _attribute_loss(a.pose_gaussians(m, *p))

            return eqx.filter_value_and_grad(loss)((color, pose))

        return grad

    def skinning(rest, pose, held):
        return jax.value_and_grad(lambda p: _attribute_loss(rest.pose_gaussians(held, *p)))(pose)

    args = (abstract(color), abstract(rest), abstract(pose), abstract(held))
    out = {
        "networks_f32": counted(networks("float32", ("position", "other", "color")), *args, unit="tf32"),
        "networks_bf16": counted(networks("bfloat16", ("position", "other", "color")), *args, unit="bf16"),
        "color_net_f32": counted(networks("float32", ("color",)), *args, unit="tf32"),
        "color_net_bf16": counted(networks("bfloat16", ("color",)), *args, unit="bf16"),
        "skinning": counted(skinning, abstract(rest), abstract(pose), abstract(held)),
    }
    # The colour net's Adam (its update is gated to every 5th step, but computed on every step).
    n = sum(x.size for x in jax.tree.leaves(color))
    params = jax.ShapeDtypeStruct((n,), jnp.float32)
    opt = optax.adam(1e-5)
    state = jax.eval_shape(opt.init, params)
    out["color_adam"] = counted(lambda g, s, p: opt.update(g, s, p), params, state, params)
    return out


# ------------------------------------------------------------------------------ the render


def scene_at_scale(n_scene: int, n_object: int, avatar, seed: int = 0):
    """The generated room densified to about `n_scene` Gaussians, the box to `n_object`, and the
    avatar at rest in the room, with a 1280 x 720 camera looking at the table."""
    from zerohsi_jax.synthetic.scene import make_object, make_room

    reference = make_room(seed=seed, spacing=0.12)
    spacing = 0.12 * math.sqrt(reference.scene.num / n_scene)
    room = make_room(seed=seed, spacing=spacing)
    obj = make_object(seed=seed + 1, size=(0.28, 0.2, 0.2), spacing=0.035 * math.sqrt(
        make_object(seed=seed + 1, size=(0.28, 0.2, 0.2), spacing=0.035).num / n_object))
    center = np.asarray(room.table_center, np.float32)
    obj = obj.transform(jnp.eye(3), jnp.asarray(center + np.array([0, room.table_top_height + 0.1, 0], np.float32)))
    human = avatar(jnp.zeros(3), jnp.zeros(63), jnp.asarray(center + np.array([0.0, 0.0, -0.6], np.float32)),
                   jnp.zeros(3))
    eye = center + np.array([0.0, 1.4, -3.2], np.float32)
    viewmat = look_at(eye, center + np.array([0.0, 0.8, 0.0], np.float32))
    f = 0.5 * 720 / math.tan(math.radians(55) / 2)
    camera = Camera(jnp.asarray(viewmat), f, f, 640.0, 360.0, 1280, 720, near=0.05, far=100.0)
    return room.scene, obj, human, camera


def look_at(eye, target):
    """World-to-camera 4x4 (OpenCV axes: x right, y down, z forward), +y up in the world."""
    forward = (target - eye) / np.linalg.norm(target - eye)
    right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])
    view = np.eye(4, dtype=np.float32)
    view[:3, :3] = rot
    view[:3, 3] = -rot @ eye
    return view


def _projection_grad(g: Gaussians, camera: Camera, cfg: RasterConfig):
    """The projection's forward and its VJP w.r.t. the Gaussians (what a fit's backward runs)."""
    def proxy(g):
        p = project(g, camera, cfg)
        return jnp.sum(p.means2d) + jnp.sum(p.conics) + jnp.sum(p.depths) + jnp.sum(p.opacities)

    return eqx.filter_grad(proxy)(g)


def render_costs(scene: Gaussians, moving: Gaussians, camera: Camera, cfg: RasterConfig) -> dict[str, Cost]:
    """Per render: projection (+ its gradient) and binning of the full set, of the moving set
    merged into bound scene lists, and of the scene alone (the bind, once per frame; and camera
    tracking's render, whose gradient reaches the camera through the scene's projection)."""
    full = Gaussians.concatenate([moving, scene])

    def full_prep(g):
        return _projection_grad(g, camera, cfg), bin_gaussians(project(g, camera, cfg), camera.width, camera.height,
                                                               cfg)

    def bind(s):
        return bin_gaussians(project(s, camera, cfg), camera.width, camera.height, cfg)

    tiles = bind(scene).ids.shape[0]
    moving_cfg = cfg.with_capacity(pair_capacity=fit_capacity(moving, camera, RasterConfig()).pair_capacity)

    def bound_prep(m, list_ids, list_counts, list_keys):
        proj = project(m, camera, moving_cfg)
        pair_tiles, pair_ids, _, _, _ = sorted_tile_pairs(proj, camera.width, camera.height, moving_cfg)
        merged = merge_pairs_into_tile_lists(list_ids, list_counts, list_keys, pair_tiles, pair_ids,
                                             jax.lax.stop_gradient(proj.depths)[pair_ids], cfg.tile_capacity)
        return _projection_grad(m, camera, moving_cfg), merged

    lists = (jax.ShapeDtypeStruct((tiles, cfg.tile_capacity), jnp.int32), jax.ShapeDtypeStruct((tiles,), jnp.int32),
             jax.ShapeDtypeStruct((tiles, cfg.tile_capacity), jnp.float32))
    return {
        "prep_full": counted(full_prep, abstract(full)),
        "prep_bound": counted(bound_prep, abstract(moving), *lists),
        "bind": counted(bind, abstract(scene)),
        "prep_scene_camera": counted(full_prep, abstract(scene)),
    }


def composite_unit_costs(cfg: RasterConfig, channels: int = 5) -> tuple[Cost, Cost]:
    """(forward, backward) cost of one (pixel, slot) evaluation: XLA's analysis of one unrolled
    chunk over 64 tiles of 256 pixels, and of its VJP, divided by the evaluations."""
    t, p, n = 64, cfg.tile_size**2, 4096
    pix = tile_pixel_centers(cfg.tile_size * 8, cfg.tile_size * 8, cfg)
    state = initial_state(t, p, channels, cfg.chunk_size, jnp.float32)
    data = (jnp.zeros((n, 2)), jnp.ones((n, 3)), jnp.full((n,), 0.5), jnp.zeros((n, channels)),
            jnp.zeros((t, cfg.chunk_size), jnp.int32), jnp.full((t,), cfg.chunk_size, jnp.int32))

    def fwd(state, pix, m, c, o, f, ids, counts):
        return forward_chunk(state, jnp.int32(0), pix, m, c, o, f, ids, counts, cfg)

    def bwd(state, pix, m, c, o, f, ids, counts):
        out, vjp = jax.vjp(lambda m, c, o, f: fwd(state, pix, m, c, o, f, ids, counts)[:2], m, c, o, f)
        return vjp(out)

    evaluations = t * p * cfg.chunk_size
    forward = counted(fwd, state, pix, *data) * (1.0 / evaluations)
    backward = counted(bwd, state, pix, *data) * (1.0 / evaluations) + forward * -1.0
    return forward, Cost(max(backward.flops, forward.flops), max(backward.bytes, forward.bytes))


def composite_evaluations(g: Gaussians, camera: Camera, cfg: RasterConfig, measure: bool,
                          moving: Gaussians | None = None) -> dict[str, float]:
    """(pixel, slot) evaluations of one render: every listed slot of every pixel, and with
    per-tile early termination (a tile stops after the chunk where its last pixel turned opaque);
    with `moving`, also those of the tiles the moving Gaussians reach (all a bound render
    composites: `bind_scene`)."""
    from zerohsi_jax.splat.binning import tile_counts, tile_grid, tile_ranges
    from zerohsi_jax.splat.composite import _composite_forward

    proj = project(g, camera, cfg)
    bins = bin_gaussians(proj, camera.width, camera.height, cfg)
    pixels = cfg.tile_size**2
    listed = jnp.minimum(bins.counts, bins.ids.shape[1])
    touched = jnp.ones_like(listed, dtype=bool)
    if moving is not None:
        ranges, n_tiles = tile_ranges(project(moving, camera, cfg), camera.width, camera.height, cfg)
        touched = tile_counts(ranges, n_tiles, *tile_grid(camera.width, camera.height, cfg.tile_size)) > 0
    out = {"upper_bound": float(jnp.sum(listed)) * pixels, "pairs": float(bins.num_pairs),
           "tiles": int(bins.counts.shape[0]), "max_tile_count": int(bins.max_tile_count),
           "touched_tiles": int(jnp.sum(touched)),
           "touched_upper_bound": float(jnp.sum(jnp.where(touched, listed, 0))) * pixels,
           "touched_pairs": float(jnp.sum(jnp.where(touched, listed, 0)))}
    if not measure:
        return out
    feats = jnp.concatenate([g.colors(camera.position), proj.depths[:, None], jnp.ones_like(proj.depths)[:, None]], 1)
    opac = jnp.where(proj.visible, proj.opacities, 0.0)
    pix = tile_pixel_centers(camera.width, camera.height, cfg)
    _, _, stop = jax.jit(lambda: _composite_forward(proj.means2d, proj.conics, opac, feats, jnp.zeros(5), bins.ids,
                                                    bins.counts, pix, cfg))()
    # `stop` per pixel (tiles, pixels): the slot after which it turned opaque, or the capacity.
    last = jnp.minimum(jnp.max(stop, axis=1) + 1, listed)
    chunks = jnp.ceil(last / cfg.chunk_size) * cfg.chunk_size
    work = jnp.minimum(chunks, jnp.maximum(listed, 0))
    out["early_stop"] = float(jnp.sum(work)) * pixels
    out["touched_early_stop"] = float(jnp.sum(jnp.where(touched, work, 0))) * pixels
    return out


# ------------------------------------------------------------------------------ the rest


def loss_cost(width: int, height: int) -> Cost:
    img = jax.ShapeDtypeStruct((height, width, 3), jnp.float32)
    # The GPU's blur (convolutions): counted here on the CPU, `gaussian_blur` would take the CPU's
    # shifted sums, whose every shifted read XLA's cost analysis counts in full (4.0 GFLOP and
    # 8.4 GB at 720p, against 1.2 GFLOP and 0.8 GB).
    return counted(lambda a, b: jax.value_and_grad(rgb_loss)(a, b, 0.1, blur=gaussian_blur_conv), img, img)


def refinement_cost(frames: int, n_object: int) -> tuple[Cost, float]:
    """One refinement iteration at `frames` frames (XLA's analysis), and the contact search's
    distance evaluations per iteration (counted apart: it is a scan over blocks)."""
    from zerohsi_jax.body import SMPLX
    from zerohsi_jax.reconstruct.config import RefineConfig
    from zerohsi_jax.reconstruct.losses import REFINE_TERMS, Objective
    from zerohsi_jax.reconstruct.programs import RefineBatch, RefineSettings, refine_program
    from zerohsi_jax.reconstruct.refinement import hand_vertices
    from zerohsi_jax.reconstruct.state import HumanPose
    from zerohsi_jax.synthetic.body_model_file import synthetic_smplx_path
    from zerohsi_jax.synthetic.pose_prior import synthetic_pose_prior

    body = SMPLX.load(synthetic_smplx_path(), num_betas=10, use_pca=False, flat_hand_mean=True)
    cfg = RefineConfig(iterations=1)
    hand_ids = hand_vertices(body, None)
    hands = body.vertex_subset(hand_ids)
    human = HumanPose(jnp.zeros((1, frames, 3)), jnp.zeros((1, frames, 3)), jnp.zeros((1, frames, 63)))
    batch = RefineBatch(hands, synthetic_pose_prior(body, seed=0), human, jnp.zeros((1, frames, n_object, 3)),
                        jnp.zeros(10), jnp.ones((1,), bool))
    settings = RefineSettings(cfg, 1.0, Objective.of(REFINE_TERMS, cfg.loss_weights))
    compiled = refine_program.lower(batch, settings).compile().compiled
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    distances = frames * n_object * len(hand_ids)
    return Cost(float(analysis.get("flops", 0)), float(analysis.get("bytes accessed", 0))), distances


# ------------------------------------------------------------------------------ the schedule


def count(args) -> dict:
    """Every part's work at the run's scale (compiles, does not run, except the one render that
    measures early termination): a JSON-able record that `predict` turns into the tables."""
    began = time.perf_counter()
    if args.small:
        from zerohsi_jax.avatar import builtin_avatar

        avatar, n_scene, n_object, scale = builtin_avatar(0), 100_000, 5_000, 0.25
    else:
        from bench_avatar import official_avatar

        avatar, n_scene, n_object, scale = official_avatar(), 1_000_000, 50_000, 1.0
    print(f"avatar: {avatar.num_gaussians:,} Gaussians ({time.perf_counter() - began:.0f} s)", flush=True)
    scene, obj, human, camera = scene_at_scale(n_scene, n_object, avatar)
    if scale != 1.0:
        w, h = int(1280 * scale), int(720 * scale)
        camera = Camera(camera.viewmat, camera.fx * scale, camera.fy * scale, w / 2, h / 2, w, h, near=0.05,
                        far=100.0)
    moving = Gaussians.concatenate([human.with_group(0), obj.with_group(1)])
    full = Gaussians.concatenate([moving, scene.with_group(2)])
    cfg = fit_capacity(full, camera, RasterConfig())
    print(f"scene {scene.num:,}, object {obj.num:,}, avatar {human.num:,}; {camera.width}x{camera.height}; "
          f"tile capacity {cfg.tile_capacity}, pair capacity {cfg.pair_capacity}", flush=True)

    if args.recount_evaluations:
        record = json.loads(Path(args.counted).read_text())
        record["evaluations"] = composite_evaluations(full, camera, cfg, measure=not args.no_measure, moving=moving)
        record["evaluations_scene"] = composite_evaluations(scene, camera, cfg, measure=False)
        return record
    parts = avatar_costs(avatar) if not args.skip_avatar else {
        k: Cost(0, 0) for k in ("networks_f32", "networks_bf16", "color_net_f32", "color_net_bf16", "skinning",
                                "color_adam")}
    print(f"avatar parts counted ({time.perf_counter() - began:.0f} s)", flush=True)
    parts.update(render_costs(scene.with_group(2), moving, camera, cfg))
    print(f"render parts counted ({time.perf_counter() - began:.0f} s)", flush=True)
    unit_f, unit_b = composite_unit_costs(cfg)
    evals = composite_evaluations(full, camera, cfg, measure=not args.no_measure, moving=moving)
    evals_scene = composite_evaluations(scene, camera, cfg, measure=False)
    parts["loss"] = loss_cost(camera.width, camera.height)
    refine, distances = refinement_cost(FRAMES, n_object)
    # The contact search: 9 flops per hand-vertex/centre distance; its points stay in cache.
    parts["refine_iteration"] = refine + Cost(9.0 * distances, 0.0)
    print(f"all parts counted ({time.perf_counter() - began:.0f} s)", flush=True)
    return {
        "command": "python experiments/bench/cost_model.py" + (" --small" if args.small else ""),
        "counted_on": machine(),
        "date": datetime.date.today().isoformat(),
        "seconds": round(time.perf_counter() - began),
        "size": [camera.width, camera.height],
        "gaussians": {"avatar": human.num, "scene": scene.num, "object": obj.num},
        "tile_capacity": cfg.tile_capacity,
        "parts": {k: [c.flops, c.bytes, c.unit] for k, c in parts.items()},
        "composite_unit": {"forward": [unit_f.flops, unit_f.bytes], "backward": [unit_b.flops, unit_b.bytes]},
        "evaluations": evals,
        "evaluations_scene": evals_scene,
    }


FRAMES, HSI_ITERATIONS, CAMERA_ITERATIONS, REFINE_ITERATIONS = 51, 300, 30, 1000

CONFIGURATIONS = [  # (name, network_every, network_dtype, bind_scene, color_every)
    ("paper (every iteration, float32, full render)", 1, "float32", False, 5),
    ("network_every 5", 5, "float32", False, 5),
    ("network_every 25", 25, "float32", False, 5),
    ("network_every 0 (once per frame)", 0, "float32", False, 5),
    ("bfloat16 networks", 1, "bfloat16", False, 5),
    ("bind_scene", 1, "float32", True, 5),
    ("color_every 25 (colour net fine-tuned every 25th step)", 1, "float32", False, 25),
    ("network_every 25 + bfloat16 + bind_scene", 25, "bfloat16", True, 5),
    ("network_every 0 + bfloat16 + bind_scene", 0, "bfloat16", True, 5),
    ("network_every 25 + color_every 25 + bfloat16 + bind_scene", 25, "bfloat16", True, 25),
    ("network_every 0 + color_every 25 + bfloat16 + bind_scene", 0, "bfloat16", True, 25),
]


def predict(record: dict) -> str:
    """The tables: work per part, and seconds per sequence for each configuration and device."""
    parts = {k: Cost(f, b, u) for k, (f, b, u) in record["parts"].items()}
    unit_f, unit_b = (Cost(*record["composite_unit"][k]) for k in ("forward", "backward"))
    evals, evals_scene = record["evaluations"], record["evaluations_scene"]
    width, height = record["size"]
    fitted = FRAMES - 1
    which = "early_stop" if "early_stop" in evals else "upper_bound"
    early_ratio = evals[which] / evals["upper_bound"]

    def composite_cost(evaluations: float, pairs: float, pixels: int) -> Cost:
        """Flops: XLA's per evaluation. Bytes: as the compiled kernels move them (a tile's slots are
        read once into shared memory; per pixel the image, residuals and cotangent), not XLA's
        per-evaluation bytes of the pure-JAX chunk (which keeps per-slot values in memory)."""
        per_pair = 40.0 + 2 * 40.0  # forward read; backward read + gradient write
        per_pixel = 4.0 * (5 + 1 + 1) * 3  # output, transmittance, stop index; written, read, cotangent
        return Cost((unit_f.flops + unit_b.flops) * evaluations, per_pair * pairs + per_pixel * pixels)

    parts["composite_hsi"] = composite_cost(evals[which], evals["pairs"], width * height)
    touched = evals.get(f"touched_{which}", evals[which])
    touched_pixels = evals.get("touched_tiles", evals["tiles"]) * 256
    # A bound render composites the tiles the avatar and object reach; the others come from the
    # scene's render made once per frame at the bind (forward only).
    parts["composite_hsi_bound"] = composite_cost(touched, evals.get("touched_pairs", evals["pairs"]),
                                                  touched_pixels)
    parts["composite_camera"] = composite_cost(evals_scene["upper_bound"] * early_ratio, evals_scene["pairs"],
                                               width * height)

    def hsi_seconds(every: int, dtype: str, bind: bool, color_every: int) -> dict[str, float]:
        """Seconds of the HSI fit per sequence on each device, and the work per iteration. The
        colour net's Adam runs on its fine-tuning steps only (its gate skips the others)."""
        nets = parts["networks_bf16" if dtype == "bfloat16" else "networks_f32"]
        color = parts["color_net_bf16" if dtype == "bfloat16" else "color_net_f32"]
        seconds = {d: 0.0 for d in DEVICES}
        work = Cost(0, 0)
        for step in range(HSI_ITERATIONS):
            refresh = step % every == 0 if every > 0 else step == 0
            color_step = step % color_every == 0
            if every == 1:
                avatar_part = nets + parts["skinning"]
            else:
                avatar_part = nets if refresh else (color if color_step else Cost(0, 0))
                avatar_part = avatar_part + parts["skinning"]
            render_parts = [parts["prep_bound"], parts["composite_hsi_bound"]] if bind else [
                parts["prep_full"], parts["composite_hsi"]]
            step_parts = [avatar_part, *render_parts, parts["loss"]] + ([parts["color_adam"]] if color_step else [])
            for d, dev in DEVICES.items():
                seconds[d] += sum(p.seconds(dev) for p in step_parts)
            work = work + Cost(sum(p.flops for p in step_parts), sum(p.bytes for p in step_parts))
        if bind:
            static_render = Cost(unit_f.flops * evals_scene["upper_bound"] * early_ratio, 40.0 * evals_scene["pairs"])
            for d, dev in DEVICES.items():
                seconds[d] += parts["bind"].seconds(dev) + static_render.seconds(dev)
        return {d: seconds[d] * fitted for d in DEVICES} | {"flops": work.flops / HSI_ITERATIONS,
                                                             "bytes": work.bytes / HSI_ITERATIONS}

    camera_stage = {d: fitted * CAMERA_ITERATIONS * sum(parts[k].seconds(dev) for k in
                                                        ("prep_scene_camera", "composite_camera", "loss"))
                    for d, dev in DEVICES.items()}
    refine_stage = {d: REFINE_ITERATIONS * parts["refine_iteration"].seconds(dev) for d, dev in DEVICES.items()}
    g = record["gaussians"]
    lines = [
        "# Cost model: one sequence at the paper's scale",
        "",
        f"{record['date']}, counted on {record['counted_on']}; `{record['command']}` ({record['seconds']} s).",
        "",
        f"Scale: {width}x{height}, avatar {g['avatar']:,} Gaussians, scene {g['scene']:,}, object {g['object']:,}; "
        f"{FRAMES} frames ({fitted} fitted) x ({CAMERA_ITERATIONS} camera + {HSI_ITERATIONS} HSI iterations), "
        f"{REFINE_ITERATIONS} refinement iterations. Tile capacity {record['tile_capacity']}, pairs per render "
        f"{evals['pairs']:,.0f}, largest tile {evals['max_tile_count']}.",
        "",
        "Peaks (dense, SXM): " + "; ".join(f"{d}: TF32 {v['tf32'] / 1e12:.0f}, BF16 {v['bf16'] / 1e12:.0f}, FP32 "
                                           f"{v['fp32'] / 1e12:.1f} TFLOP/s, {v['bandwidth'] / 1e12:.2f} TB/s"
                                           for d, v in DEVICES.items()) + ".",
        "Roofline per part: max(flops / peak, bytes / bandwidth), parts summed (no overlap). Flops are a floor;",
        "bytes are XLA's CPU program's (GPU fusion moves fewer), so parts bound by bytes may be overestimated.",
        "",
        "## Work per part (one evaluation)",
        "",
        "| part | GFLOP | GB | peak used |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, c in parts.items():
        lines.append(f"| {name} | {c.flops / 1e9:,.2f} | {c.bytes / 1e9:,.3f} | {c.unit} |")
    lines += [
        f"| composite, per (pixel, slot) forward / backward | {unit_f.flops:.0f} / {unit_b.flops:.0f} flop | "
        f"{unit_f.bytes:.0f} / {unit_b.bytes:.0f} B | fp32 |",
        f"| composite, XLA's bytes of the pure-JAX chunks per HSI render | | "
        f"{(unit_f.bytes + unit_b.bytes) * evals[which] / 1e9:,.1f} | (not used) |",
        f"| composite evaluations per HSI render | {evals[which] / 1e6:,.0f} M ({which.replace('_', ' ')}; upper "
        f"bound {evals['upper_bound'] / 1e6:,.0f} M); bound render, the {evals.get('touched_tiles', '?')} of "
        f"{evals['tiles']} tiles the avatar and object reach: {touched / 1e6:,.0f} M | | |",
        "",
        "## Predicted seconds per sequence (roofline)",
        "",
        "| HSI fit configuration | GFLOP / iteration | GB / iteration | " + " | ".join(
            f"HSI s ({d}) | sequence s ({d})" for d in DEVICES) + " |",
        "| --- | ---: | ---: | " + " | ".join("---: | ---:" for _ in DEVICES) + " |",
    ]
    for name, every, dtype, bind, color_every in CONFIGURATIONS:
        r = hsi_seconds(every, dtype, bind, color_every)
        cells = " | ".join(f"{r[d]:,.1f} | {r[d] + camera_stage[d] + refine_stage[d]:,.1f}" for d in DEVICES)
        lines.append(f"| {name} | {r['flops'] / 1e9:,.1f} | {r['bytes'] / 1e9:,.2f} | {cells} |")
    lines += [
        "",
        "Camera tracking (every configuration): " + ", ".join(f"{d} {camera_stage[d]:.1f} s" for d in DEVICES)
        + "; refinement: " + ", ".join(f"{d} {refine_stage[d]:.1f} s" for d in DEVICES) + ".",
        f"Compositing counted with {which.replace('_', ' ')} evaluations ({early_ratio:.0%} of the listed slots).",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="built-in avatar, 100k scene, 320x180: checks the script")
    parser.add_argument("--no-measure", action="store_true", help="skip the one CPU render that measures early stop")
    parser.add_argument("--skip-avatar", action="store_true", help="count the avatar's parts as zero (debugging)")
    parser.add_argument("--counted", help="the JSON of an earlier count: only the tables are made again")
    parser.add_argument("--recount-evaluations", action="store_true",
                        help="with --counted: count the compositing evaluations again, keep the other parts")
    parser.add_argument("--out", default=None, help="markdown file; the count goes beside it as .json")
    args = parser.parse_args(argv)
    if args.counted and not args.recount_evaluations:
        record = json.loads(Path(args.counted).read_text())
    else:
        record = count(args)
        if args.out:
            Path(args.out).with_suffix(".json").write_text(json.dumps(record, indent=1))
    text = predict(record)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
