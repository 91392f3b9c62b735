"""The three stages end to end, batched over seeds (videos of the same initial state).

Per frame t = 1..T-1, two compiled programs run, each vmapped over seeds: camera tracking
(stage 1) and the HSI fit (stage 2), each a `lax.scan` over its iterations. Frames are chained
on the host so that every finished frame is written and a run can resume; the refinement
(stage 3) is one program over the whole sequence. `mode="frame_parallel"` fits all frames after
a short sequential warm-up in one vmapped program (an experiment; see experiments/).
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..splat import Camera, RasterConfig, fit_capacity
from .camera_tracking import track_camera
from .config import ReconstructConfig
from .hsi_fit import fit_frame, render_frame
from .losses import CAMERA_TERMS, HSI_TERMS, REFINE_TERMS, mean_masked_depth, static_background_masks
from .refinement import contact_points, hand_vertices, refine_sequence
from .run_files import RunFolder
from .state import (
    OBJECT_GROUP,
    SCENE_GROUP,
    FrameState,
    HumanPose,
    ObjectPose,
    Observations,
    SceneInputs,
    compose_gaussians,
    tree_stack,
)


class ReconstructionDiverged(RuntimeError):
    """A loss became NaN or infinite; the message names the frame, stage and loss term."""


@dataclasses.dataclass(frozen=True)
class InitialState:
    """The state the video starts from: T_0 (in `SceneInputs.camera`), M_0 and P_0."""

    human: HumanPose
    object_pose: ObjectPose | None = None


@dataclasses.dataclass
class Reconstruction:
    """Results for S seeds and T frames (numpy arrays with leading (S, T))."""

    viewmats: np.ndarray
    human_stage2: HumanPose
    human: HumanPose
    object_poses: np.ndarray
    timings: dict
    losses: dict = dataclasses.field(default_factory=dict)
    raster: RasterConfig | None = None


# ------------------------------------------------------------------------------ NaN guard


def _first_bad(stage: str, frame: int, totals, terms: Mapping[str, np.ndarray]):
    """Raise ReconstructionDiverged naming the first non-finite loss term, if any."""
    totals = np.asarray(totals)
    if np.all(np.isfinite(totals)):
        return
    # Iterations are the last axis; seeds (and frames, when fitted in parallel) lead.
    bad_iters = np.nonzero(~np.isfinite(totals.reshape(-1, totals.shape[-1])).all(0))[0]
    first = int(bad_iters[0]) if len(bad_iters) else 0
    culprits = [name for name, v in terms.items() if not np.all(np.isfinite(np.asarray(v)[..., first]))]
    raise ReconstructionDiverged(
        f"{stage} diverged at frame {frame}, iteration {first}: loss term(s) {culprits or ['(gradient)']} "
        "became NaN or infinite. Every earlier frame is kept in the run folder; lower the learning "
        "rate or check the inputs (masks, video frames) of this frame."
    )


# --------------------------------------------------------------------------- the programs


class Shared(eqx.Module):
    """The arrays every seed and frame reads: the programs' non-batched argument."""

    scene: object
    object: object
    avatar_rest: object
    camera: Camera


# The compiled programs. Configs, rasterizer settings and term tables are static (hashable)
# arguments, so every `reconstruct` call with the same shapes and settings reuses one compilation.


@eqx.filter_jit
def camera_program(shared: Shared, viewmats, frames, background_masks, cfg, raster, background, terms):
    """Stage 1 for one frame of every seed."""
    def one(viewmat, frame, mask):
        return track_camera(shared.scene, shared.camera, viewmat, frame, mask, cfg, raster,
                            jnp.asarray(background, jnp.float32), dict(terms))

    return eqx.filter_vmap(one)(viewmats, frames, background_masks)


def _fit_one(shared: Shared, state: FrameState, viewmat, frame, human_mask, object_mask, estimate, cfg, raster,
             background, terms, use_estimates: bool):
    init = state.human
    if use_estimates:
        init = HumanPose(init.transl, init.global_orient, estimate)
    human, object_pose, color, losses, values, overflow = fit_frame(
        shared.avatar_rest, state.color, init, state.object, shared.object, shared.scene,
        shared.camera.with_viewmat(viewmat), frame, human_mask, object_mask, state.object_depth0, cfg, raster,
        jnp.asarray(background, jnp.float32), dict(terms),
    )  # fmt: skip
    return FrameState(viewmat, human, object_pose, color, state.object_depth0), losses, values, overflow


@eqx.filter_jit
def hsi_program(shared: Shared, states, viewmats, frames, human_masks, object_masks, estimates, cfg, raster,
                background, terms, use_estimates: bool):
    """Stage 2 for one frame of every seed."""
    def one(*args):
        return _fit_one(shared, *args, cfg, raster, background, terms, use_estimates)

    return eqx.filter_vmap(one)(states, viewmats, frames, human_masks, object_masks, estimates)


@eqx.filter_jit
def hsi_frames_program(shared: Shared, states, viewmats, frames, human_masks, object_masks, estimates, cfg,
                       raster, background, terms, use_estimates: bool):
    """Stage 2 for many frames of every seed at once (frame-parallel mode): (seeds, frames, ...)."""
    def one(*args):
        return _fit_one(shared, *args, cfg, raster, background, terms, use_estimates)

    return eqx.filter_vmap(eqx.filter_vmap(one))(states, viewmats, frames, human_masks, object_masks, estimates)


@eqx.filter_jit
def initial_depth_program(shared: Shared, states, object_masks, raster, background):
    """D_O^0 (eq. 12): mean rendered depth of frame 0 inside the object's mask, per seed."""
    def one(state: FrameState, mask):
        avatar = eqx.combine(state.color, shared.avatar_rest)
        out = render_frame(avatar, state.human, shared.object, state.object, shared.scene,
                           shared.camera.with_viewmat(state.viewmat), raster, jnp.asarray(background, jnp.float32))
        return mean_masked_depth(out.depth, mask)

    return eqx.filter_vmap(one)(states, object_masks)


@eqx.filter_jit
def refine_program(hands_model, vposer, human, points, cfg, dynamic: bool, terms):
    """Stage 3 for every seed."""
    def one(h, p):
        return refine_sequence(hands_model, vposer, h, p, cfg, dynamic, dict(terms))

    return eqx.filter_vmap(one, in_axes=(0, 0 if points is not None else None))(human, points)


def _state_arrays(state: FrameState) -> dict:
    return {
        "viewmat": state.viewmat,
        "transl": state.human.transl,
        "global_orient": state.human.global_orient,
        "body_pose": state.human.body_pose,
        "object_rotation": state.object.rotation,
        "object_translation": state.object.translation,
        "object_depth0": state.object_depth0,
    }


def _state_from_arrays(a: dict, color) -> FrameState:
    return FrameState(
        viewmat=jnp.asarray(a["viewmat"]),
        human=HumanPose(jnp.asarray(a["transl"]), jnp.asarray(a["global_orient"]), jnp.asarray(a["body_pose"])),
        object=ObjectPose(jnp.asarray(a["object_rotation"]), jnp.asarray(a["object_translation"])),
        color=color,
        object_depth0=jnp.asarray(a["object_depth0"]),
    )


def _broadcast_seeds(tree, s: int):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (s,) + jnp.shape(x)), tree)


def _check_observations(obs: Observations, camera: Camera):
    if obs.frames.ndim != 5:
        raise ValueError(f"Observations.frames must be (seeds, T, H, W, 3), got shape {obs.frames.shape}")
    s, t, h, w, _ = obs.frames.shape
    if (w, h) != (camera.width, camera.height):
        raise ValueError(
            f"the video frames are {w}x{h} but the camera renders {camera.width}x{camera.height}; resize the "
            "video to the render size (zerohsi_jax.io.load_video_for_camera does it and scales the intrinsics)"
        )
    for name in ("human_masks", "object_masks"):
        shape = getattr(obs, name).shape
        if shape != (s, t, h, w):
            raise ValueError(f"Observations.{name} has shape {shape}, expected {(s, t, h, w)}")
    if obs.pose_estimates is not None and obs.pose_estimates.shape != (s, t, 63):
        raise ValueError(f"Observations.pose_estimates has shape {obs.pose_estimates.shape}, expected {(s, t, 63)}")
    if t < 2:
        raise ValueError(f"the video has {t} frame(s); reconstruction needs at least 2")


def measure_raster_config(inputs: SceneInputs, initial: InitialState, cfg: ReconstructConfig,
                          headroom: float = 2.0) -> RasterConfig:
    """Tile and pair capacities measured on the initial frame, with room for the motion."""
    base = RasterConfig()
    if cfg.tile_capacity is not None:
        return base.with_capacity(tile_capacity=cfg.tile_capacity)
    obj_pose = initial.object_pose or ObjectPose(jnp.eye(3), jnp.zeros(3))
    g = compose_gaussians(inputs.avatar, initial.human, inputs.object, obj_pose, inputs.scene,
                          inputs.camera.position)
    return fit_capacity(g, inputs.camera, base, headroom=headroom)


def reconstruct(
    inputs: SceneInputs,
    observations: Observations,
    initial: InitialState,
    vposer,
    cfg: ReconstructConfig = ReconstructConfig(),
    *,
    run_dir=None,
    resume: bool = True,
    progress: bool = True,
    raster: RasterConfig | None = None,
    camera_terms=CAMERA_TERMS,
    hsi_terms=HSI_TERMS,
    refine_terms=REFINE_TERMS,
) -> Reconstruction:
    """Reconstruct S videos (a leading seed axis on every `observations` array) of one scene."""
    from tqdm import tqdm

    _check_observations(observations, inputs.camera)
    n_seeds, n_frames = observations.frames.shape[:2]
    has_object = inputs.object is not None
    raster = raster or measure_raster_config(inputs, initial, cfg)
    color0, avatar_rest = eqx.partition(inputs.avatar, inputs.avatar.color_filter())
    # Group ids set once here, so that scenes with and without them compile to the same program.
    shared = Shared(inputs.scene.with_group(SCENE_GROUP),
                    None if inputs.object is None else inputs.object.with_group(OBJECT_GROUP), avatar_rest,
                    inputs.camera)
    background = tuple(float(c) for c in cfg.background)
    camera_terms, hsi_terms, refine_terms = (tuple(sorted(t.items())) for t in (camera_terms, hsi_terms, refine_terms))
    use_estimates = observations.pose_estimates is not None
    obs = observations
    background_masks = static_background_masks(obs.human_masks, obs.object_masks)
    estimates = obs.pose_estimates if use_estimates else jnp.zeros((n_seeds, n_frames, 63))

    def fit(states, viewmats, t_slice, program):
        return program(shared, states, viewmats, obs.frames[:, t_slice], obs.human_masks[:, t_slice],
                       obs.object_masks[:, t_slice], estimates[:, t_slice], cfg.hsi, raster, background, hsi_terms,
                       use_estimates)

    timings = {"camera_tracking_s": 0.0, "hsi_fit_s": 0.0, "refinement_s": 0.0, "compile_and_first_frame_s": 0.0}
    folder = RunFolder(run_dir) if run_dir is not None else None
    if folder is not None:
        folder.check_or_write_manifest(
            {"seeds": n_seeds, "frames": n_frames, "size": [inputs.camera.width, inputs.camera.height],
             "config": repr(cfg), "object": has_object},
            resume,
        )

    # A large colour net (the official avatar's is ~300 MB) is checkpointed every 10th frame only:
    # a resumed run then redoes at most 9 frames instead of writing gigabytes per sequence.
    color_bytes = sum(x.nbytes for x in jax.tree.leaves(color0)) * n_seeds
    color_every = 1 if color_bytes < 64 * 2**20 else 10

    # Frame 0 is the initial state the video was generated from.
    object0 = initial.object_pose or ObjectPose(jnp.eye(3, dtype=jnp.float32), jnp.zeros(3, jnp.float32))
    start = 1
    states = None
    if folder is not None and resume and (t_done := folder.resumable_frame()) is not None:
        color = folder.read_color_state(_broadcast_seeds(color0, n_seeds))
        states = [_state_from_arrays(folder.read_frame(t), color) for t in range(t_done + 1)]
        start = t_done + 1
        if progress:
            print(f"resuming {run_dir} after frame {t_done}")
    if states is None:
        state0 = FrameState(inputs.camera.viewmat, initial.human, object0, color0, jnp.zeros(()))
        state0 = _broadcast_seeds(state0, n_seeds)
        depth0 = initial_depth_program(shared, state0, obs.object_masks[:, 0], raster, background)
        state0 = eqx.tree_at(lambda s: s.object_depth0, state0, depth0)
        states = [state0]
        if folder is not None:
            folder.write_frame(0, _state_arrays(state0))
            folder.write_color_state(0, state0.color)

    losses = {"camera": [], "hsi": []}
    sequential_end = n_frames if cfg.mode == "sequential" else min(n_frames, max(1, cfg.parallel_warmup_frames + 1))
    bar = tqdm(range(start, n_frames), desc="frames", unit="frame", disable=not progress)
    for t in bar:
        prev = states[t - 1]
        began = time.perf_counter()
        viewmat, cam_loss, cam_terms, cam_overflow = camera_program(
            shared, prev.viewmat, obs.frames[:, t], background_masks[:, t], cfg.camera, raster, background,
            camera_terms,
        )
        jax.block_until_ready(viewmat)
        camera_s = time.perf_counter() - began
        _first_bad("camera tracking", t, cam_loss, cam_terms)
        if t < sequential_end:
            began = time.perf_counter()
            state, hsi_loss, hsi_terms_v, hsi_overflow = fit(prev, viewmat, t, hsi_program)
            jax.block_until_ready(state.viewmat)
            hsi_s = time.perf_counter() - began
            _first_bad("HSI fit", t, hsi_loss, hsi_terms_v)
            overflow = max(int(jnp.max(cam_overflow)), int(jnp.max(hsi_overflow)))
            if overflow:
                _warn_overflow(t, overflow, raster)
            losses["hsi"].append(np.asarray(hsi_loss))
        else:
            # Frame-parallel: only the camera advances here; poses are fitted together below.
            state, hsi_s = eqx.tree_at(lambda s: s.viewmat, prev, viewmat), 0.0
        losses["camera"].append(np.asarray(cam_loss))
        if t == start:
            timings["compile_and_first_frame_s"] += camera_s + hsi_s
        else:
            timings["camera_tracking_s"] += camera_s
            timings["hsi_fit_s"] += hsi_s
        states.append(state)
        if folder is not None and t < sequential_end:
            folder.write_frame(t, _state_arrays(state))
            if t % color_every == 0 or t == sequential_end - 1:
                folder.write_color_state(t, state.color)
        if progress and t < sequential_end:
            bar.set_postfix(hsi_loss=f"{float(np.mean(np.asarray(hsi_loss)[..., -1])):.4f}")

    if sequential_end < n_frames:
        states = _fit_frames_in_parallel(fit, raster, states, sequential_end, n_frames, timings, folder, losses)

    stacked = tree_stack(states)  # leaves (T, S, ...)
    stacked = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), stacked)  # (S, T, ...)
    human2 = stacked.human
    object_poses = stacked.object.matrix()

    refined = human2
    if cfg.refine.enabled and cfg.refine.iterations > 0:
        began = time.perf_counter()
        points = None
        if has_object:
            points = jax.vmap(lambda r, t: contact_points(inputs.object.means, r, t, cfg.refine.max_contact_points))(
                stacked.object.rotation, stacked.object.translation
            )
        dynamic = has_object and bool(np.any(np.abs(np.diff(np.asarray(object_poses), axis=1)) > 1e-4))

        hands_model = inputs.body.vertex_subset(hand_vertices(inputs.body, cfg.refine.max_hand_vertices))
        refined, _, ref_loss, ref_terms = refine_program(hands_model, vposer, human2, points, cfg.refine, dynamic,
                                                         refine_terms)
        jax.block_until_ready(refined.transl)
        timings["refinement_s"] = time.perf_counter() - began
        _first_bad("refinement", n_frames - 1, ref_loss, ref_terms)
        losses["refine"] = np.asarray(ref_loss)

    result = Reconstruction(
        viewmats=np.asarray(stacked.viewmat),
        human_stage2=jax.tree.map(np.asarray, human2),
        human=jax.tree.map(np.asarray, refined),
        object_poses=np.asarray(object_poses),
        timings=timings,
        losses=losses,
        raster=raster,
    )
    if folder is not None:
        write_results(folder, result, inputs.body.num_betas)
    return result


def _warn_overflow(t, overflow, raster):
    warnings.warn(
        f"frame {t}: the rasterizer dropped {overflow} tile-Gaussian pairs (tile_capacity {raster.tile_capacity}); "
        "the fit saw an incomplete render. Set the config's tile_capacity higher (e.g. "
        f"{2 * raster.tile_capacity}).",
        RuntimeWarning,
        stacklevel=3,
    )


def _fit_frames_in_parallel(fit, raster, states, first, n_frames, timings, folder, losses):
    """Frame-parallel HSI fit of frames first..T-1, every frame starting from frame first-1."""
    count = n_frames - first
    anchor = states[first - 1]
    init = jax.tree.map(lambda x: jnp.broadcast_to(x[:, None], (x.shape[0], count) + x.shape[1:]), anchor)
    viewmats = jnp.stack([states[t].viewmat for t in range(first, n_frames)], axis=1)
    began = time.perf_counter()
    fitted, hsi_loss, hsi_terms_v, overflow = fit(init, viewmats, slice(first, n_frames), hsi_frames_program)
    jax.block_until_ready(fitted.viewmat)
    timings["hsi_fit_s"] += time.perf_counter() - began
    _first_bad("HSI fit (frame-parallel)", first, hsi_loss, hsi_terms_v)
    if int(jnp.max(overflow)):
        _warn_overflow(first, int(jnp.max(overflow)), raster)
    out = list(states[:first])
    for i, t in enumerate(range(first, n_frames)):
        state = jax.tree.map(lambda x, i=i: x[:, i], fitted)
        out.append(state)
        losses["hsi"].append(np.asarray(hsi_loss[:, i]))
        if folder is not None:
            folder.write_frame(t, _state_arrays(state))
    if folder is not None:
        folder.write_color_state(n_frames - 1, out[-1].color)
    return out


def smplx_param_arrays(human: HumanPose, num_betas: int) -> dict[str, np.ndarray]:
    """Per-frame arrays under `smplx.SMPLX`'s keyword names (full-hand axis-angle, use_pca=False)."""
    t = human.transl.shape[0]
    z = lambda n: np.zeros((t, n), np.float32)  # noqa: E731
    return {
        "transl": np.asarray(human.transl, np.float32),
        "global_orient": np.asarray(human.global_orient, np.float32),
        "body_pose": np.asarray(human.body_pose, np.float32),
        "betas": z(num_betas),
        "expression": z(10),
        "jaw_pose": z(3),
        "leye_pose": z(3),
        "reye_pose": z(3),
        "left_hand_pose": z(45),
        "right_hand_pose": z(45),
    }


def write_results(folder: RunFolder, result: Reconstruction, num_betas: int) -> None:
    from .run_files import atomic_write, save_json, save_npz

    for s in range(result.viewmats.shape[0]):
        d = folder.seed_dir(s)
        pick = lambda h, s=s: jax.tree.map(lambda x: x[s], h)  # noqa: E731
        save_npz(d / "smplx_params.npz", **smplx_param_arrays(pick(result.human), num_betas))
        save_npz(d / "smplx_params_stage2.npz", **smplx_param_arrays(pick(result.human_stage2), num_betas))
        atomic_write(d / "object_poses.npy", lambda tmp, s=s: np.save(tmp, result.object_poses[s]))
        atomic_write(d / "camera_viewmats.npy", lambda tmp, s=s: np.save(tmp, result.viewmats[s]))
    save_json(folder.root / "timings.json", {k: round(v, 3) for k, v in result.timings.items()})


__all__ = [
    "InitialState",
    "Reconstruction",
    "ReconstructionDiverged",
    "measure_raster_config",
    "reconstruct",
    "smplx_param_arrays",
    "write_results",
]
