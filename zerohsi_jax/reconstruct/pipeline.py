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
from collections.abc import Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..errors import InputError, UserError
from ..splat import Camera, RasterConfig, RasterOverflowError, fit_capacity, grown_capacity
from .camera_tracking import track_camera
from .config import ReconstructConfig
from .hsi_fit import fit_frame, frame_parameters, hsi_optimizer, render_frame
from .losses import CAMERA_TERMS, HSI_TERMS, REFINE_TERMS, mean_masked_depth, static_background_masks
from .refinement import contact_pair_scale, contact_points, hand_vertices, refine_sequence
from .run_files import RunFolder, fingerprint
from .state import (
    OBJECT_GROUP,
    SCENE_GROUP,
    FrameState,
    HumanPose,
    ObjectPose,
    Observations,
    RasterCounts,
    SceneInputs,
    compose_gaussians,
    tree_stack,
)


class ReconstructionDiverged(UserError, RuntimeError):
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
    betas: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(10, np.float32))
    """The subject's SMPL-X shape (the avatar's betas), with which every pose here is posed."""


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
    carry = cfg.adam_state == "carry"
    fit = fit_frame(
        shared.avatar_rest, state.color, init, state.object, shared.object, shared.scene,
        shared.camera.with_viewmat(viewmat), frame, human_mask, object_mask, state.object_depth0, cfg, raster,
        jnp.asarray(background, jnp.float32), dict(terms), state.opt_state if carry else None,
    )  # fmt: skip
    state = FrameState(viewmat, fit.human, fit.object_pose, fit.color, state.object_depth0,
                       fit.opt_state if carry else None)
    return state, fit.losses, fit.terms, fit.raster_counts


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
        return mean_masked_depth(out.depth, mask), RasterCounts.of(out)

    return eqx.filter_vmap(one)(states, object_masks)


@eqx.filter_jit
def refine_program(hands_model, vposer, human, points, betas, cfg, dynamic, pair_scale: float, terms):
    """Stage 3 for every seed; `dynamic` (S,) says which seeds' objects move."""
    def one(h, p, d):
        return refine_sequence(hands_model, vposer, h, p, cfg, d, dict(terms), betas, pair_scale)

    return eqx.filter_vmap(one, in_axes=(0, 0 if points is not None else None, 0))(human, points, dynamic)


def object_moves(object_poses: np.ndarray, threshold: float) -> np.ndarray:
    """(S,) whether each seed's object moves: some entry of its pose (rotation entries, translation
    in metres) changes by more than `threshold` between frames. A static object gets eq. S4's
    static smoothness weight."""
    steps = np.abs(np.diff(np.asarray(object_poses)[..., :3, :], axis=1))
    return steps.reshape(steps.shape[0], -1).max(axis=1, initial=0.0) > threshold


def _refine(inputs: SceneInputs, vposer, human2: HumanPose, objects: ObjectPose, cfg, betas, terms):
    """Stage 3 of every seed: (refined poses, loss per iteration, each term per iteration)."""
    has_object = inputs.object is not None
    points = None
    if has_object:
        points = jax.vmap(lambda r, t: contact_points(inputs.object.means, r, t, cfg.max_contact_points))(
            objects.rotation, objects.translation)
        dynamic = object_moves(objects.matrix(), cfg.dynamic_threshold)
    else:
        dynamic = np.zeros(human2.transl.shape[0], bool)
    pair_scale = contact_pair_scale(inputs.body, inputs.object.num, cfg) if has_object else 1.0
    hands_model = inputs.body.vertex_subset(hand_vertices(inputs.body, cfg.max_hand_vertices))
    refined, _, loss, term_values = refine_program(hands_model, vposer, human2, points, jnp.asarray(betas), cfg,
                                                   jnp.asarray(dynamic), float(pair_scale), terms)
    return refined, loss, term_values


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


FRAME_KEYS = ("viewmat", "transl", "global_orient", "body_pose", "object_rotation", "object_translation",
              "object_depth0")
"""The arrays of a frame file (`_state_arrays`)."""


def _state_from_arrays(a: dict, color) -> FrameState:
    return FrameState(
        viewmat=jnp.asarray(a["viewmat"]),
        human=HumanPose(jnp.asarray(a["transl"]), jnp.asarray(a["global_orient"]), jnp.asarray(a["body_pose"])),
        object=ObjectPose(jnp.asarray(a["object_rotation"]), jnp.asarray(a["object_translation"])),
        color=color,
        object_depth0=jnp.asarray(a["object_depth0"]),
    )


def _initial_adam_state(cfg, has_object: bool, human: HumanPose, color0, n_seeds: int):
    """A fresh HSI Adam state per seed when `cfg.adam_state` is 'carry' (frame 1 carries it on),
    else None."""
    if cfg.adam_state != "carry":
        return None
    opt = hsi_optimizer(cfg, has_object)
    return _broadcast_seeds(opt.init(frame_parameters(human, color0)), n_seeds)


def _broadcast_seeds(tree, s: int):
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (s,) + jnp.shape(x)), tree)


def _check_observations(obs: Observations, camera: Camera):
    if obs.frames.ndim != 5:
        raise InputError(f"Observations.frames must be (seeds, T, H, W, 3), got shape {obs.frames.shape}")
    s, t, h, w, _ = obs.frames.shape
    if (w, h) != (camera.width, camera.height):
        raise InputError(
            f"the video frames are {w}x{h} but the camera renders {camera.width}x{camera.height}; resize the "
            "video to the render size (zerohsi_jax.io.load_video_for_camera does it and scales the intrinsics)"
        )
    for name in ("human_masks", "object_masks"):
        shape = getattr(obs, name).shape
        if shape != (s, t, h, w):
            raise InputError(f"Observations.{name} has shape {shape}, expected {(s, t, h, w)}")
    if obs.pose_estimates is not None and obs.pose_estimates.shape != (s, t, 63):
        raise InputError(f"Observations.pose_estimates has shape {obs.pose_estimates.shape}, expected {(s, t, 63)}")
    if t < 2:
        raise InputError(f"the video has {t} frame(s); reconstruction needs at least 2")


def _check_config(cfg: ReconstructConfig, terms: Mapping[str, Mapping]):
    """The config's numbers in range and its loss weights naming terms of the tables, before
    anything is compiled (an unknown term would otherwise fail only inside the first program)."""
    from ..run_config import ConfigError, check_values

    check_values(cfg, "reconstruct")
    for stage, table in terms.items():
        unknown = sorted(set(getattr(cfg, stage).loss_weights) - set(table))
        if unknown:
            raise ConfigError(f"reconstruct.{stage}.loss_weights: unknown loss term(s) {unknown}; the terms of this "
                              f"stage are {sorted(table)} (a new term goes into the stage's term table first)")


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


# ---------------------------------------------------------------------- identity of a run

INPUT_NAMES = {
    "frames": "the video frames",
    "human_masks": "the human masks",
    "object_masks": "the object masks",
    "pose_estimates": "the per-frame pose estimates",
    "scene": "the scene's Gaussians",
    "object": "the object's Gaussians",
    "avatar": "the avatar",
    "body": "the body model",
    "camera": "the initial camera",
    "initial_human": "the initial human pose",
    "initial_object": "the initial object pose",
    "pose_prior": "the pose prior (VPoser)",
    "config": "the reconstruct config",
    "loss_terms": "the loss term tables",
    "raster": "the rasterizer settings",
}
"""Every input that changes a run's result, by the name its fingerprint has in `run.json`."""


def _terms_identity(table: Mapping) -> dict[str, str]:
    """A term table by name: each term's name and its function's (code cannot be hashed portably)."""
    return {k: f"{getattr(f, '__module__', '')}.{getattr(f, '__qualname__', type(f).__qualname__)}"
            for k, f in sorted(table.items())}


def run_manifest(inputs: SceneInputs, observations: Observations, initial: InitialState, vposer,
                 cfg: ReconstructConfig, raster: RasterConfig, terms: Mapping[str, Mapping]) -> dict:
    """What a run folder records of a run: its shape and a content hash of every input that changes
    the result (`INPUT_NAMES`), so that a rerun resumes only the same problem. The rasterizer's
    capacities count only when it may drop pairs (`overflow="drop"`); otherwise they change nothing."""
    obs = observations
    if raster.overflow != "drop":
        raster = dataclasses.replace(raster, tile_capacity=None, pair_capacity=None)
    values = {
        "frames": obs.frames,
        "human_masks": obs.human_masks,
        "object_masks": obs.object_masks,
        "pose_estimates": obs.pose_estimates,
        "scene": inputs.scene,
        "object": inputs.object,
        "avatar": inputs.avatar,
        "body": inputs.body,
        "camera": inputs.camera,
        "initial_human": initial.human,
        "initial_object": initial.object_pose,
        "pose_prior": vposer,
        "config": repr(cfg),
        "loss_terms": {stage: _terms_identity(t) for stage, t in terms.items()},
        "raster": repr(raster),
    }
    return {
        "seeds": int(obs.frames.shape[0]),
        "frames": int(obs.frames.shape[1]),
        "size": [int(inputs.camera.width), int(inputs.camera.height)],
        "object": inputs.object is not None,
        "inputs": {name: fingerprint(values[name]) for name in INPUT_NAMES},
    }


# ----------------------------------------------------------------- capacities that hold


def _drop_on_device(raster: RasterConfig) -> RasterConfig:
    """The config the compiled programs get: they count what does not fit, and the policy acts on
    the host after each program (`_grown_raster`), as an eager `render` does."""
    return dataclasses.replace(raster, overflow="drop")


def _grown_raster(raster: RasterConfig, counts: RasterCounts, where: str, say) -> RasterConfig | None:
    """None when the renders of `where` dropped nothing (or the policy 'drop' keeps what they
    dropped: warned); else the capacities to redo `where` with (policy 'grow', said in one line),
    or `RasterOverflowError` (policy 'error')."""
    dropped = int(np.max(np.asarray(counts.overflow)))
    if dropped == 0:
        return None
    grown = grown_capacity(raster, counts)
    if raster.overflow == "drop":
        _warn_overflow(where, dropped, raster, grown)
        return None
    shortfall = (f"{where}: {dropped} tile-Gaussian pairs did not fit tile_capacity={raster.tile_capacity}, "
                 f"pair_capacity={raster.pair_capacity}")
    if raster.overflow == "error":
        raise RasterOverflowError(f"{shortfall} (RasterConfig overflow='error'); set tile_capacity="
                                  f"{grown.tile_capacity}, pair_capacity={grown.pair_capacity}")
    say(f"{shortfall}; redone with tile_capacity={grown.tile_capacity}, pair_capacity={grown.pair_capacity}")
    return grown


def _until_it_fits(run, raster: RasterConfig, where: str, say):
    """`run(raster)` (whose last output is its `RasterCounts`), again with grown capacities while
    it drops pairs: (outputs, the capacities that held)."""
    while True:
        out = run(raster)
        grown = _grown_raster(raster, out[-1], where, say)
        if grown is None:
            return out, raster
        raster = grown


# ------------------------------------------------------------------------------ the run


def reconstruct(
    inputs: SceneInputs,
    observations: Observations,
    initial: InitialState,
    vposer,
    cfg: ReconstructConfig = ReconstructConfig(),
    *,
    run_dir=None,
    resume: bool = True,
    redo_from: int | None = None,
    progress: bool = True,
    raster: RasterConfig | None = None,
    camera_terms=CAMERA_TERMS,
    hsi_terms=HSI_TERMS,
    refine_terms=REFINE_TERMS,
    frame_rate: float | None = None,
    on_start: Callable[[], None] | None = None,
    before_complete: Callable[[Reconstruction], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> Reconstruction:
    """Reconstruct S videos (a leading seed axis on every `observations` array) of one scene.

    With `run_dir`, every finished frame is written there and the folder is locked for the run
    (a second run into it is refused, naming this one). `resume` continues the folder's run only
    when it is the same problem: `run.json` holds a fingerprint of every input (`run_manifest`),
    and other inputs are an error naming them; `resume=False` deletes the folder's earlier run
    first. `redo_from` N fits frame N and the later frames again (after a damaged file).
    `on_start` is called once the folder is locked and known to suit this run, before anything
    is written (the caller's own files, such as the config beside the run, go there);
    `before_complete(result)` after the results are written, before `complete.json`, which then
    covers the pictures it writes. `log` gets one-line notices (default: printed).

    The rasterizer's capacities are static inside the compiled programs: a frame or stage whose
    renders drop tile-Gaussian pairs is redone with grown capacities (said in one line), so no
    finished frame holds an incomplete render, unless `raster.overflow` is 'drop' (warned) or
    'error' (raised). `Reconstruction.raster` holds the capacities that held."""
    _check_observations(observations, inputs.camera)
    terms = {"camera": camera_terms, "hsi": hsi_terms, "refine": refine_terms}
    _check_config(cfg, terms)
    raster = raster or measure_raster_config(inputs, initial, cfg)
    if log is None:
        from tqdm import tqdm

        log = tqdm.write  # a line between progress bars, not through them
    run = dict(inputs=inputs, observations=observations, initial=initial, vposer=vposer, cfg=cfg, progress=progress,
               raster=raster, terms=terms, frame_rate=frame_rate, before_complete=before_complete, log=log)
    if run_dir is None:
        if on_start is not None:
            on_start()
        return _reconstruct(**run, folder=None, resume=False)
    folder = RunFolder(run_dir)
    with folder.lock("reconstruct"):
        folder.start(run_manifest(inputs, observations, initial, vposer, cfg, raster, terms), resume,
                     redo_from=redo_from)
        if on_start is not None:
            on_start()
        return _reconstruct(**run, folder=folder, resume=resume)


def _reconstruct(inputs: SceneInputs, observations: Observations, initial: InitialState, vposer,
                 cfg: ReconstructConfig, *, folder: RunFolder | None, resume: bool, progress: bool,
                 raster: RasterConfig, terms: dict, frame_rate, before_complete, log) -> Reconstruction:
    """`reconstruct` once its run folder (if any) is locked and ready."""
    from tqdm import tqdm

    n_seeds, n_frames = observations.frames.shape[:2]
    has_object = inputs.object is not None
    color0, avatar_rest = eqx.partition(inputs.avatar, inputs.avatar.color_filter())
    # Group ids set once here, so that scenes with and without them compile to the same program.
    shared = Shared(inputs.scene.with_group(SCENE_GROUP),
                    None if inputs.object is None else inputs.object.with_group(OBJECT_GROUP), avatar_rest,
                    inputs.camera)
    background = tuple(float(c) for c in cfg.background)
    camera_terms, hsi_terms, refine_terms = (tuple(sorted(terms[k].items())) for k in ("camera", "hsi", "refine"))
    use_estimates = observations.pose_estimates is not None
    obs = observations
    background_masks = static_background_masks(obs.human_masks, obs.object_masks)
    estimates = obs.pose_estimates if use_estimates else jnp.zeros((n_seeds, n_frames, 63))

    def fit(states, viewmats, t_slice, program):
        def run(r):
            out = program(shared, states, viewmats, obs.frames[:, t_slice], obs.human_masks[:, t_slice],
                          obs.object_masks[:, t_slice], estimates[:, t_slice], cfg.hsi, _drop_on_device(r),
                          background, hsi_terms, use_estimates)
            jax.block_until_ready(out[0].viewmat)
            return out

        return run

    timings = {"camera_tracking_s": 0.0, "hsi_fit_s": 0.0, "refinement_s": 0.0, "compile_and_first_frame_s": 0.0}

    # A large colour net (the official avatar's is ~300 MB) is checkpointed every 10th frame only,
    # and only the newest checkpoint is kept: a resumed run then redoes at most 9 frames instead of
    # writing gigabytes per sequence.
    color_bytes = sum(x.nbytes for x in jax.tree.leaves(color0)) * n_seeds
    color_every = 1 if color_bytes < 64 * 2**20 else 10
    if folder is not None:
        folder.keep_checkpoints = 2 if color_every == 1 else 1

    # Frame 0 is the initial state the video was generated from.
    object0 = initial.object_pose or ObjectPose(jnp.eye(3, dtype=jnp.float32), jnp.zeros(3, jnp.float32))
    start = 1
    states = None
    opt_state0 = _initial_adam_state(cfg.hsi, has_object, initial.human, color0, n_seeds)
    if folder is not None and resume and (t_done := folder.resumable_frame()) is not None:
        color, opt_state = folder.read_color_state(t_done, (_broadcast_seeds(color0, n_seeds), opt_state0))
        states = [_state_from_arrays(folder.read_frame(t, FRAME_KEYS), color) for t in range(t_done + 1)]
        states[-1] = eqx.tree_at(lambda s: s.opt_state, states[-1], opt_state, is_leaf=lambda x: x is None)
        start = t_done + 1
        if progress:
            log(f"resuming {folder.root} after frame {t_done}")
    if states is None:
        state0 = FrameState(inputs.camera.viewmat, initial.human, object0, color0, jnp.zeros(()))
        state0 = _broadcast_seeds(state0, n_seeds)
        state0 = eqx.tree_at(lambda s: s.opt_state, state0, opt_state0, is_leaf=lambda x: x is None)
        (depth0, _), raster = _until_it_fits(
            lambda r: initial_depth_program(shared, state0, obs.object_masks[:, 0], _drop_on_device(r), background),
            raster, "frame 0 (initial object depth)", log)
        state0 = eqx.tree_at(lambda s: s.object_depth0, state0, depth0)
        states = [state0]
        if folder is not None:
            folder.write_frame(0, _state_arrays(state0))
            folder.write_color_state(0, (state0.color, state0.opt_state))

    def track(r, prev, t):
        out = camera_program(shared, prev.viewmat, obs.frames[:, t], background_masks[:, t], cfg.camera,
                             _drop_on_device(r), background, camera_terms)
        jax.block_until_ready(out[0])
        return out

    losses = {"camera": [], "hsi": []}
    sequential_end = n_frames if cfg.mode == "sequential" else min(n_frames, max(1, cfg.parallel_warmup_frames + 1))
    bar = tqdm(range(start, n_frames), desc="frames", unit="frame", disable=not progress)
    for t in bar:
        prev = states[t - 1]
        began = time.perf_counter()
        (viewmat, cam_loss, cam_terms, _), raster = _until_it_fits(
            lambda r, prev=prev, t=t: track(r, prev, t), raster, f"frame {t} (camera tracking)", log)
        camera_s = time.perf_counter() - began
        _first_bad("camera tracking", t, cam_loss, cam_terms)
        if t < sequential_end:
            began = time.perf_counter()
            (state, hsi_loss, hsi_terms_v, _), raster = _until_it_fits(
                fit(prev, viewmat, t, hsi_program), raster, f"frame {t} (HSI fit)", log)
            hsi_s = time.perf_counter() - began
            _first_bad("HSI fit", t, hsi_loss, hsi_terms_v)
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
                folder.write_color_state(t, (state.color, state.opt_state))
        if progress and t < sequential_end:
            bar.set_postfix(hsi_loss=f"{float(np.mean(np.asarray(hsi_loss)[..., -1])):.4f}")

    if sequential_end < n_frames:
        states, raster = _fit_frames_in_parallel(fit, raster, states, sequential_end, n_frames, timings, folder,
                                                 losses, log)

    stacked = tree_stack(states)  # leaves (T, S, ...)
    stacked = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), stacked)  # (S, T, ...)
    human2 = stacked.human
    object_poses = stacked.object.matrix()

    betas = subject_betas(inputs)
    refined = human2
    if cfg.refine.enabled and cfg.refine.iterations > 0:
        began = time.perf_counter()
        refined, ref_loss, ref_terms = _refine(inputs, vposer, human2, stacked.object, cfg.refine, betas,
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
        betas=betas,
    )
    if folder is not None:
        write_results(folder, result, gender=getattr(inputs.body, "gender", "neutral"), frame_rate=frame_rate,
                      before_complete=before_complete)
    elif before_complete is not None:
        before_complete(result)
    return result


def subject_betas(inputs: SceneInputs) -> np.ndarray:
    """The subject's shape: the avatar's betas, cut or zero-padded to the body model's count."""
    from ..body import betas_for

    template = getattr(inputs.avatar, "template", None)
    return betas_for(inputs.body, None if template is None else template.betas)


def _warn_overflow(where, overflow, raster, grown):
    warnings.warn(
        f"{where}: the rasterizer dropped {overflow} tile-Gaussian pairs (tile_capacity {raster.tile_capacity}, "
        f"pair_capacity {raster.pair_capacity}, RasterConfig overflow='drop'); the fit saw an incomplete render. "
        f"Set tile_capacity={grown.tile_capacity}, pair_capacity={grown.pair_capacity}, or leave overflow at "
        "'grow' to have the frame redone with capacities that fit.",
        RuntimeWarning,
        stacklevel=4,
    )


def _fit_frames_in_parallel(fit, raster, states, first, n_frames, timings, folder, losses, log):
    """Frame-parallel HSI fit of frames first..T-1, every frame starting from frame first-1:
    (the states of every frame, the capacities that held)."""
    count = n_frames - first
    anchor = states[first - 1]
    init = jax.tree.map(lambda x: jnp.broadcast_to(x[:, None], (x.shape[0], count) + x.shape[1:]), anchor)
    viewmats = jnp.stack([states[t].viewmat for t in range(first, n_frames)], axis=1)
    began = time.perf_counter()
    (fitted, hsi_loss, hsi_terms_v, _), raster = _until_it_fits(
        fit(init, viewmats, slice(first, n_frames), hsi_frames_program), raster,
        f"frames {first}-{n_frames - 1} (frame-parallel HSI fit)", log)
    timings["hsi_fit_s"] += time.perf_counter() - began
    _first_bad("HSI fit (frame-parallel)", first, hsi_loss, hsi_terms_v)
    out = list(states[:first])
    for i, t in enumerate(range(first, n_frames)):
        state = jax.tree.map(lambda x, i=i: x[:, i], fitted)
        out.append(state)
        losses["hsi"].append(np.asarray(hsi_loss[:, i]))
        if folder is not None:
            folder.write_frame(t, _state_arrays(state))
    if folder is not None:
        folder.write_color_state(n_frames - 1, (out[-1].color, out[-1].opt_state))
    return out, raster


def smplx_param_arrays(human: HumanPose, betas) -> dict[str, np.ndarray]:
    """Per-frame arrays under `smplx.SMPLX`'s keyword names (full-hand axis-angle, use_pca=False).
    `betas` (num_betas,): the subject's shape (the avatar's), repeated on every frame."""
    t = human.transl.shape[0]
    z = lambda n: np.zeros((t, n), np.float32)  # noqa: E731
    betas = np.asarray(betas, np.float32).reshape(-1)
    return {
        "transl": np.asarray(human.transl, np.float32),
        "global_orient": np.asarray(human.global_orient, np.float32),
        "body_pose": np.asarray(human.body_pose, np.float32),
        "betas": np.broadcast_to(betas, (t, betas.size)).copy(),
        "expression": z(10),
        "jaw_pose": z(3),
        "leye_pose": z(3),
        "reye_pose": z(3),
        "left_hand_pose": z(45),
        "right_hand_pose": z(45),
    }


def write_results(folder: RunFolder, result: Reconstruction, *, gender: str = "neutral",
                  frame_rate: float | None = None, before_complete=None) -> None:
    """Per seed the SMPL-X parameters (refined and stage 2), object poses and cameras; the loss
    traces; `before_complete(result)` (the caller's pictures); then `complete.json`, written last:
    a folder without it holds no finished run."""
    from .run_files import atomic_write, save_json, save_npz

    for s in range(result.viewmats.shape[0]):
        d = folder.seed_dir(s)
        pick = lambda h, s=s: jax.tree.map(lambda x: x[s], h)  # noqa: E731
        save_npz(d / "smplx_params.npz", **smplx_param_arrays(pick(result.human), result.betas))
        save_npz(d / "smplx_params_stage2.npz", **smplx_param_arrays(pick(result.human_stage2), result.betas))
        atomic_write(d / "object_poses.npy", lambda tmp, s=s: np.save(tmp, result.object_poses[s]))
        atomic_write(d / "camera_viewmats.npy", lambda tmp, s=s: np.save(tmp, result.viewmats[s]))
    save_npz(folder.root / "losses.npz", **loss_arrays(result.losses))
    save_json(folder.root / "timings.json", {k: round(v, 3) for k, v in result.timings.items()})
    if before_complete is not None:
        before_complete(result)
    raster = result.raster
    folder.mark_complete({
        "seeds": int(result.viewmats.shape[0]),
        "frames": int(result.viewmats.shape[1]),
        "gender": gender,
        "num_betas": int(np.asarray(result.betas).size),
        "frame_rate": None if frame_rate is None else float(frame_rate),
        "raster": None if raster is None else {"tile_capacity": raster.tile_capacity,
                                               "pair_capacity": raster.pair_capacity},
    })


def loss_arrays(losses: dict) -> dict[str, np.ndarray]:
    """The loss traces as arrays: camera and hsi (S, T-1, iterations) for frames 1..T-1 (a frame
    fitted without a stage has no trace there), refine (S, iterations)."""
    out = {}
    for key in ("camera", "hsi"):
        traces = [np.asarray(x) for x in losses.get(key, [])]
        if traces:
            out[key] = np.stack([t.reshape(t.shape[0], -1) for t in traces], axis=1).astype(np.float32)
    if losses.get("refine") is not None:
        out["refine"] = np.asarray(losses["refine"], np.float32)
    return out


__all__ = [
    "InitialState",
    "Reconstruction",
    "ReconstructionDiverged",
    "measure_raster_config",
    "reconstruct",
    "run_manifest",
    "smplx_param_arrays",
    "write_results",
]
