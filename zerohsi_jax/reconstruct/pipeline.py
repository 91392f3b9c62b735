"""The three stages end to end, batched over seeds (videos of the same initial state).

Per frame t = 1..T-1, two compiled programs run, each vmapped over seeds: camera tracking
(stage 1) and the HSI fit (stage 2), each a `lax.scan` over its iterations. Frames are chained
on the host so that every finished frame is written and a run can resume; the refinement
(stage 3) is one program over the whole sequence. `mode="frame_parallel"` fits all frames after
a short sequential warm-up in one vmapped program (an experiment; see experiments/).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float
from tqdm import tqdm

from ..body import betas_for
from ..config_values import ConfigError, check_values
from ..devices import SeedMesh, choose_devices, cut_leading, pad_leading, processes
from ..errors import InputError, UserError
from ..files import atomic_write, save_json, save_npz
from ..splat import Camera, RasterConfig, RasterOverflowError, fit_capacity, grown_capacity
from .config import ReconstructConfig, RefineConfig
from .hsi_fit import frame_parameters, hsi_optimizer
from .losses import CAMERA_TERMS, HSI_TERMS, REFINE_TERMS, Objective, static_background_masks
from .programs import (
    CameraBatch,
    CameraSettings,
    HSIBatch,
    HSISettings,
    RefineBatch,
    RefineSettings,
    RenderSettings,
    Shared,
    camera_program,
    hsi_program,
    initial_depth_program,
    refine_program,
)
from .refinement import contact_pair_scale, contact_points, hand_vertices
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
    moving_gaussians,
    tree_stack,
)


class ReconstructionDiverged(UserError, RuntimeError):
    """A loss became NaN or infinite; the message names the frame, stage and loss term."""


@dataclasses.dataclass(frozen=True)
class InitialState:
    """The state the video starts from: T_0 (in `SceneInputs.camera`), M_0 and P_0."""

    human: HumanPose
    object_pose: ObjectPose | None = None

    def object_pose_or_identity(self) -> ObjectPose:
        """P_0, or the identity for a static scenario (no object: its pose is carried unused)."""
        if self.object_pose is not None:
            return self.object_pose
        return ObjectPose(jnp.eye(3, dtype=jnp.float32), jnp.zeros(3, jnp.float32))


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
    devices: dict = dataclasses.field(default_factory=dict)
    """The devices the seeds were fitted on (`devices.device_record`: count, kinds, processes)."""


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


def _nonfinite_fit(stage: str, frame: int, poses: Mapping) -> None:
    """Raise ReconstructionDiverged naming the fitted poses (human, object) that are not finite. A NaN pose
    can leave every loss finite: the Gaussians it moves are culled from the view (a renderer that
    read padding slots of the tile lists used to leak their NaN into the image by accident)."""
    bad = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_flatten_with_path(poses)[0]
           if eqx.is_inexact_array_like(leaf) and not np.all(np.isfinite(np.asarray(leaf)))]
    if bad:
        raise ReconstructionDiverged(
            f"{stage} diverged at frame {frame}: the fitted {', '.join(bad)} became NaN or infinite (its loss "
            "stayed finite). Every earlier frame is kept in the run folder; lower the learning rate or check "
            "the inputs (pose estimates, masks, video frames) of this frame."
        )


def object_moves(object_poses: np.ndarray, threshold: float) -> np.ndarray:
    """(S,) whether each seed's object moves: some entry of its pose (rotation entries, translation
    in metres) changes by more than `threshold` between frames. A static object gets eq. S4's
    static smoothness weight."""
    steps = np.abs(np.diff(np.asarray(object_poses)[..., :3, :], axis=1))
    return steps.reshape(steps.shape[0], -1).max(axis=1, initial=0.0) > threshold


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
    check_values(cfg, "reconstruct")
    for stage, table in terms.items():
        unknown = sorted(set(getattr(cfg, stage).loss_weights) - set(table))
        if unknown:
            raise ConfigError(f"reconstruct.{stage}.loss_weights: unknown loss term(s) {unknown}; the terms of this "
                              f"stage are {sorted(table)} (a new term goes into the stage's term table first)")


def measure_raster_config(inputs: SceneInputs, initial: InitialState, cfg: ReconstructConfig,
                          headroom: float = 2.0, at_least: RasterConfig | None = None) -> RasterConfig:
    """Tile and pair capacities measured on the initial frame, with room for the motion (and the
    moving-pair buffer of a bound scene, `measure_moving_pairs`). `at_least`: capacities to keep
    where they suffice, e.g. the previous clip's in a continuation: the capacities are static in
    the compiled programs, so an unchanged config loads them from the compilation cache instead of
    compiling the pipeline again."""
    base = RasterConfig(tile_size=cfg.tile_size)
    if cfg.tile_capacity is not None:
        return base.with_capacity(tile_capacity=cfg.tile_capacity)
    obj_pose = initial.object_pose_or_identity()
    # Compiled, not run op by op: eagerly, the avatar's networks cost hundreds of small compilations.
    g = eqx.filter_jit(compose_gaussians)(inputs.avatar, initial.human, inputs.object, obj_pose, inputs.scene,
                                          inputs.camera.position)
    raster = fit_capacity(g, inputs.camera, base, headroom=headroom)
    if cfg.hsi.bind_scene:
        raster = raster.with_capacity(dynamic_pair_capacity=measure_moving_pairs(inputs, initial, raster, headroom))
    return raster if at_least is None else raster.at_least(at_least)


def measure_moving_pairs(inputs: SceneInputs, initial: InitialState, raster: RasterConfig,
                         headroom: float = 2.0) -> int:
    """The bound render's buffer of moving pairs (`HSIFitConfig.bind_scene`,
    `RasterConfig.dynamic_pair_capacity`): the pairs of the avatar and object on the initial frame,
    with room for the motion; grown like the other capacities when a frame needs more."""
    obj_pose = initial.object_pose_or_identity()

    @eqx.filter_jit
    def posed(avatar, human, obj, obj_pose, camera_position):
        return moving_gaussians(avatar(human.global_orient, human.body_pose, human.transl, camera_position), obj,
                                obj_pose)

    moving = posed(inputs.avatar, initial.human, inputs.object, obj_pose, inputs.camera.position)
    fitted = fit_capacity(moving, inputs.camera, raster.without_capacities(), headroom=headroom)
    return int(fitted.pair_capacity)


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
                 cfg: ReconstructConfig, raster: RasterConfig, terms: Mapping[str, Mapping],
                 devices: dict | None = None) -> dict:
    """What a run folder records of a run: its shape and a content hash of every input that changes
    the result (`INPUT_NAMES`), so that a rerun resumes only the same problem. The rasterizer's
    capacities count only when it may drop pairs (`overflow="drop"`); otherwise they change nothing.
    `devices` (`devices.device_record`) is recorded but not compared (`run_files.RUN_CONDITIONS`): a
    run started on one device resumes on four."""
    obs = observations
    if raster.overflow != "drop":
        raster = raster.without_capacities()
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
        **({} if devices is None else {"devices": devices}),
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
    shortfall = f"{where}: {dropped} tile-Gaussian pairs did not fit {raster.capacity_text()}"
    if raster.overflow == "error":
        raise RasterOverflowError(f"{shortfall} (RasterConfig overflow='error'); set {grown.capacity_text()}")
    say(f"{shortfall}; redone with {grown.capacity_text()}")
    return grown


def _until_it_fits(run, raster: RasterConfig, where: str, say):
    """`run(raster)` (a record with its `raster_counts`), again with grown capacities while it
    drops pairs: (its output, the capacities that held)."""
    while True:
        out = run(raster)
        grown = _grown_raster(raster, out.raster_counts, where, say)
        if grown is None:
            return out, raster
        raster = grown


def _warn_overflow(where, overflow, raster, grown):
    warnings.warn(
        f"{where}: the rasterizer dropped {overflow} tile-Gaussian pairs ({raster.capacity_text()}, "
        f"RasterConfig overflow='drop'); the fit saw an incomplete render. "
        f"Set {grown.capacity_text()}, or leave overflow at "
        "'grow' to have the frame redone with capacities that fit.",
        RuntimeWarning,
        stacklevel=4,
    )


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
    devices: int | Sequence[jax.Device] | None = None,
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
    'error' (raised). `Reconstruction.raster` holds the capacities that held.

    The seeds are split over `devices` (a count, or the devices themselves; default: every device
    of this process), padded to a multiple of their count (`zerohsi_jax.devices`); the results,
    files and run identity are the same on any number. In a multi-process run (`jax.distributed`,
    see `devices.initialize_distributed`) each process fits its share of the seeds into a part of
    the run folder, and process 0 writes the results (`shares.reconstruct_shares`)."""
    _check_observations(observations, inputs.camera)
    terms = {"camera": camera_terms, "hsi": hsi_terms, "refine": refine_terms}
    _check_config(cfg, terms)
    raster = raster or measure_raster_config(inputs, initial, cfg)
    mesh = SeedMesh.of(devices if _are_devices(devices) else choose_devices(devices))
    log = log or tqdm.write
    if processes().count > 1:
        from .shares import reconstruct_shares

        return reconstruct_shares(inputs, observations, initial, vposer, cfg, terms, raster, mesh, run_dir=run_dir,
                                  resume=resume, redo_from=redo_from, progress=progress, frame_rate=frame_rate,
                                  on_start=on_start, before_complete=before_complete, log=log)
    manifest = lambda: run_manifest(inputs, observations, initial, vposer, cfg, raster, terms,  # noqa: E731
                                    mesh.record())
    with _run_folder(run_dir, manifest, resume, redo_from) as folder:
        if on_start is not None:
            on_start()
        result = fit_seeds(inputs, observations, initial, vposer, cfg, terms, raster, mesh, folder, resume=resume,
                           progress=progress, log=log)
        write(folder, inputs, result, frame_rate, before_complete)
        return result


def _are_devices(devices) -> bool:
    return isinstance(devices, Sequence) and all(isinstance(d, jax.Device) for d in devices) and len(devices) > 0


def fit_seeds(inputs: SceneInputs, observations: Observations, initial: InitialState, vposer, cfg: ReconstructConfig,
              terms: dict, raster: RasterConfig, mesh: SeedMesh, folder: RunFolder | None, *, resume: bool,
              progress: bool, log) -> Reconstruction:
    """The three stages on every seed of `observations`, split over `mesh` (the seeds padded to its
    device count and the padding cut off again), writing each frame into `folder` (resuming what
    it holds when `resume`); the results are not written."""
    run = _prepare_run(inputs, observations, cfg, terms, folder, progress, log, mesh)
    if cfg.hsi.bind_scene and raster.dynamic_pair_capacity is None:
        raster = raster.with_capacity(dynamic_pair_capacity=measure_moving_pairs(inputs, initial, raster))
    fitted = start_or_resume(run, initial, raster, resume)
    fitted = _fit_frames_sequentially(run, fitted)
    if fitted.next_frame < run.n_frames:
        fitted = fit_frames_in_parallel(run, fitted)
    return refine(run, vposer, fitted)


@contextlib.contextmanager
def _run_folder(run_dir, manifest: Callable[[], dict], resume: bool, redo_from: int | None):
    """The run folder, locked for this run and started (`RunFolder.start`: checked to hold the
    same problem, or emptied) for the whole `with`; None without `run_dir`."""
    if run_dir is None:
        yield None
        return
    folder = RunFolder(run_dir)
    with folder.lock("reconstruct"):
        folder.start(manifest(), resume, redo_from=redo_from)
        yield folder


@dataclasses.dataclass(frozen=True, eq=False)
class _Run:
    """What every step of one run reads: its inputs, and what is derived from them once."""

    inputs: SceneInputs
    obs: Observations
    cfg: ReconstructConfig
    shared: Shared
    color0: eqx.Module
    """The avatar's colour-net arrays as given (frame 0's)."""
    background: tuple[float, float, float]
    objectives: dict[str, Objective]
    """Each stage's loss terms with the config's weights, by stage ('camera', 'hsi', 'refine')."""
    background_masks: Float[Array, "S T H W"]
    estimates: Float[Array, "S T 63"]
    use_estimates: bool
    folder: RunFolder | None
    color_every: int
    """The colour net (and Adam state) is checkpointed every this many frames."""
    progress: bool
    log: Callable[[str], None]
    mesh: SeedMesh
    """The devices the seeds are split over."""
    seeds: int
    """The seeds of the run; `obs` and every state hold them padded to `n_seeds`, a multiple of the
    device count (`devices.pad_leading`), and `real` cuts the padding off again."""

    @property
    def n_seeds(self) -> int:
        """The seeds the programs fit: `seeds` padded to a multiple of the device count."""
        return int(self.obs.frames.shape[0])

    def real(self, tree):
        """The real seeds of a seed-leading pytree, as NumPy arrays: what reaches files, losses,
        results and the NaN check."""
        return cut_leading(tree, self.seeds)

    def padded(self, tree):
        """A pytree of the real seeds (read back from the run folder) padded and split over the devices."""
        return self.mesh.place(pad_leading(tree, self.n_seeds))

    @property
    def n_frames(self) -> int:
        return int(self.obs.frames.shape[1])

    @property
    def sequential_end(self) -> int:
        """The first frame the frame-parallel fit fits (T when every frame is fitted in turn)."""
        if self.cfg.mode == "sequential":
            return self.n_frames
        return min(self.n_frames, max(1, self.cfg.parallel_warmup_frames + 1))

    def render_settings(self, raster: RasterConfig) -> RenderSettings:
        return RenderSettings(_drop_on_device(raster), self.background)

    def camera_settings(self, raster: RasterConfig) -> CameraSettings:
        return CameraSettings(self.cfg.camera, self.render_settings(raster), self.objectives["camera"])

    def hsi_settings(self, raster: RasterConfig) -> HSISettings:
        return HSISettings(self.cfg.hsi, self.render_settings(raster), self.objectives["hsi"], self.use_estimates)

    def call(self, program, *args, seeds: tuple, batch_axes: int = 1):
        """`program(*args)` on the devices (`SeedMesh.call`; `seeds` marks the seed-leading arguments)."""
        return self.mesh.call(program, args, seeds, batch_axes=batch_axes)

    def hsi_batch(self, states: FrameState, viewmats, frames: slice | int) -> HSIBatch:
        obs = self.obs
        return HSIBatch(states, viewmats, obs.frames[:, frames], obs.human_masks[:, frames],
                        obs.object_masks[:, frames], self.estimates[:, frames])


class Fitted(NamedTuple):
    """The frames fitted so far: a state per frame (seeds leading), whose poses are fitted before
    `next_frame` (after it, in frame-parallel mode, only the cameras are tracked), the capacities
    that held, the stage timings and the loss traces."""

    states: list[FrameState]
    next_frame: int
    raster: RasterConfig
    timings: dict[str, float]
    losses: dict[str, list]


def _prepare_run(inputs: SceneInputs, observations: Observations, cfg: ReconstructConfig, terms: dict,
                 folder: RunFolder | None, progress: bool, log, mesh: SeedMesh) -> _Run:
    """The run's fixed parts: the programs' shared argument, objectives, masks and estimates; the
    observations padded to the devices and split over them, the shared arrays on each."""
    seeds = int(observations.frames.shape[0])
    observations = mesh.place(pad_leading(observations, mesh.padded(seeds)))
    n_seeds, n_frames = observations.frames.shape[:2]
    color0, avatar_rest = eqx.partition(inputs.avatar, inputs.avatar.color_filter())
    # Group ids set once here, so that scenes with and without them compile to the same program.
    shared = mesh.replicate(Shared(inputs.scene.with_group(SCENE_GROUP),
                                   None if inputs.object is None else inputs.object.with_group(OBJECT_GROUP),
                                   avatar_rest, inputs.camera))
    use_estimates = observations.pose_estimates is not None
    # A large colour net (the official avatar's is ~300 MB) is checkpointed every 10th frame only,
    # and only the newest checkpoint is kept: a resumed run then redoes at most 9 frames instead of
    # writing gigabytes per sequence.
    color_bytes = sum(x.nbytes for x in jax.tree.leaves(color0)) * seeds
    color_every = 1 if color_bytes < 64 * 2**20 else 10
    if folder is not None:
        folder.keep_checkpoints = 2 if color_every == 1 else 1
    return _Run(
        inputs=inputs,
        obs=observations,
        cfg=cfg,
        shared=shared,
        color0=color0,
        background=tuple(float(c) for c in cfg.background),
        objectives={stage: Objective.of(terms[stage], getattr(cfg, stage).loss_weights)
                    for stage in ("camera", "hsi", "refine")},
        background_masks=static_background_masks(observations.human_masks, observations.object_masks),
        estimates=observations.pose_estimates if use_estimates else jnp.zeros((n_seeds, n_frames, 63)),
        use_estimates=use_estimates,
        folder=folder,
        color_every=color_every,
        progress=progress,
        log=log,
        mesh=mesh,
        seeds=seeds,
    )


def start_or_resume(run: _Run, initial: InitialState, raster: RasterConfig, resume: bool) -> Fitted:
    """Where fitting starts: with `resume`, after the last frame the run folder holds whole (its
    states read back, the colour net and Adam state from its newest checkpoint); else at frame 1,
    from frame 0, the initial state the video was generated from, with D_O^0 (eq. 12) rendered,
    and written to the folder."""
    folder, n_seeds = run.folder, run.n_seeds
    # The folder holds the real seeds only (`run.real`): read back, they are padded again.
    timings = {"camera_tracking_s": 0.0, "hsi_fit_s": 0.0, "refinement_s": 0.0, "compile_and_first_frame_s": 0.0}
    losses = {"camera": [], "hsi": []}
    opt_state0 = _initial_adam_state(run.cfg.hsi, run.inputs.object is not None, initial.human, run.color0, n_seeds)
    if folder is not None and resume and (t_done := folder.resumable_frame()) is not None:
        like = run.real((_broadcast_seeds(run.color0, n_seeds), opt_state0))
        color, opt_state = run.padded(folder.read_color_state(t_done, like))
        states = [_state_from_arrays(run.padded(folder.read_frame(t, FRAME_KEYS)), color) for t in range(t_done + 1)]
        states[-1] = eqx.tree_at(lambda s: s.opt_state, states[-1], opt_state, is_leaf=lambda x: x is None)
        if run.progress:
            run.log(f"resuming {folder.root} after frame {t_done}")
        return Fitted(states, t_done + 1, raster, timings, losses)
    object0 = initial.object_pose_or_identity()
    state0 = FrameState(run.inputs.camera.viewmat, initial.human, object0, run.color0, jnp.zeros(()))
    state0 = _broadcast_seeds(state0, n_seeds)
    state0 = eqx.tree_at(lambda s: s.opt_state, state0, opt_state0, is_leaf=lambda x: x is None)
    depth0, raster = _until_it_fits(
        lambda r: run.call(initial_depth_program, run.shared, state0, run.obs.object_masks[:, 0],
                           run.render_settings(r), seeds=(False, True, True, False)),
        raster, "frame 0 (initial object depth)", run.log)
    state0 = eqx.tree_at(lambda s: s.object_depth0, state0, depth0.depth)
    if folder is not None:
        folder.write_frame(0, run.real(_state_arrays(state0)))
        folder.write_color_state(0, run.real((state0.color, state0.opt_state)))
    return Fitted([state0], 1, raster, timings, losses)


class FrameStep(NamedTuple):
    """Frame t fitted by `fit_one_frame`."""

    state: FrameState
    camera_losses: np.ndarray  # (S, iterations)
    hsi_losses: np.ndarray | None  # (S, iterations); None when the HSI fit waits for the frame-parallel fit
    camera_s: float
    hsi_s: float
    raster: RasterConfig  # the capacities that held


def fit_one_frame(run: _Run, prev: FrameState, t: int, raster: RasterConfig, *, fit_pose: bool = True
                  ) -> FrameStep:
    """Frame t of every seed from frame t-1's state: camera tracking (stage 1), then the HSI fit
    (stage 2) unless `fit_pose` is False (frame-parallel mode: only the camera advances, the poses
    are fitted together later). Each stage is redone with grown capacities while its renders drop
    pairs, and stopped by `ReconstructionDiverged` when a loss is not finite."""
    obs = run.obs

    def track(r):
        out = run.call(camera_program, run.shared,
                       CameraBatch(prev.viewmat, obs.frames[:, t], run.background_masks[:, t]), run.camera_settings(r),
                       seeds=(False, True, False))
        jax.block_until_ready(out.viewmat)
        return out

    began = time.perf_counter()
    camera, raster = _until_it_fits(track, raster, f"frame {t} (camera tracking)", run.log)
    camera_s = time.perf_counter() - began
    camera_losses = run.real(camera.losses)
    _first_bad("camera tracking", t, camera_losses, run.real(camera.terms))
    if not fit_pose:
        return FrameStep(eqx.tree_at(lambda s: s.viewmat, prev, camera.viewmat), camera_losses, None,
                         camera_s, 0.0, raster)
    began = time.perf_counter()
    fit, raster = _until_it_fits(_hsi_run(run, prev, camera.viewmat, t), raster, f"frame {t} (HSI fit)", run.log)
    hsi_s = time.perf_counter() - began
    hsi_losses = run.real(fit.losses)
    _first_bad("HSI fit", t, hsi_losses, run.real(fit.terms))
    _nonfinite_fit("HSI fit", t, run.real({"human": fit.state.human, "object": fit.state.object}))
    return FrameStep(fit.state, camera_losses, hsi_losses, camera_s, hsi_s, raster)


def _hsi_run(run: _Run, states: FrameState, viewmats, frames: slice | int):
    """Stage 2 on `frames` (one frame t, or a slice of frames fitted in parallel) as a function of
    the capacities. In parallel, the real seeds' seeds x frames fits are one batch of independent
    fits (`hsi_program` over their items), split over the devices as one axis."""
    parallel = isinstance(frames, slice)

    def go(r):
        batch = run.hsi_batch(states, viewmats, frames)
        if parallel:
            batch = jax.tree.map(lambda x: x[:run.seeds], batch)
        out = run.call(hsi_program, run.shared, batch, run.hsi_settings(r), seeds=(False, True, False),
                       batch_axes=2 if parallel else 1)
        jax.block_until_ready(out.state.viewmat)
        return out

    return go


def _fit_frames_sequentially(run: _Run, fitted: Fitted) -> Fitted:
    """`fit_one_frame` for every frame from `fitted.next_frame` on, in turn; each frame before
    `run.sequential_end` is written to the run folder as it is done (the colour net every
    `run.color_every`-th frame and at the last), and the frame after the start carries the
    compilation in its time."""
    states, raster = list(fitted.states), fitted.raster
    timings, losses = dict(fitted.timings), {k: list(v) for k, v in fitted.losses.items()}
    start, end = fitted.next_frame, run.sequential_end
    bar = tqdm(range(start, run.n_frames), desc="frames", unit="frame", disable=not run.progress)
    for t in bar:
        step = fit_one_frame(run, states[t - 1], t, raster, fit_pose=t < end)
        raster = step.raster
        if step.hsi_losses is not None:
            losses["hsi"].append(step.hsi_losses)
        losses["camera"].append(step.camera_losses)
        if t == start:
            timings["compile_and_first_frame_s"] += step.camera_s + step.hsi_s
        else:
            timings["camera_tracking_s"] += step.camera_s
            timings["hsi_fit_s"] += step.hsi_s
        states.append(step.state)
        if run.folder is not None and t < end:
            run.folder.write_frame(t, run.real(_state_arrays(step.state)))
            if t % run.color_every == 0 or t == end - 1:
                run.folder.write_color_state(t, run.real((step.state.color, step.state.opt_state)))
        if run.progress and t < end:
            bar.set_postfix(hsi_loss=f"{float(np.mean(step.hsi_losses[..., -1])):.4f}")
    return Fitted(states, end, raster, timings, losses)


def fit_frames_in_parallel(run: _Run, fitted: Fitted) -> Fitted:
    """Frame-parallel HSI fit of frames `fitted.next_frame`..T-1 in one program, every frame
    starting from the frame before them (with its own tracked camera); each frame is written to
    the run folder, and the colour net of the last."""
    first, n_frames, states = fitted.next_frame, run.n_frames, fitted.states
    count = n_frames - first
    anchor = states[first - 1]
    init = jax.tree.map(lambda x: jnp.broadcast_to(x[:, None], (x.shape[0], count) + x.shape[1:]), anchor)
    viewmats = jnp.stack([states[t].viewmat for t in range(first, n_frames)], axis=1)
    began = time.perf_counter()
    fit, raster = _until_it_fits(_hsi_run(run, init, viewmats, slice(first, n_frames)),
                                 fitted.raster, f"frames {first}-{n_frames - 1} (frame-parallel HSI fit)", run.log)
    timings = {**fitted.timings, "hsi_fit_s": fitted.timings["hsi_fit_s"] + time.perf_counter() - began}
    # The fit came back for the real seeds only (`_hsi_run`): padded again, as every other state.
    fit_losses = np.asarray(fit.losses)
    _first_bad("HSI fit (frame-parallel)", first, fit_losses, jax.tree.map(np.asarray, fit.terms))
    _nonfinite_fit("HSI fit (frame-parallel)", first, {"human": fit.state.human, "object": fit.state.object})
    fit_states = run.padded(fit.state)
    out = list(states[:first])
    hsi_losses = list(fitted.losses["hsi"])
    for i, t in enumerate(range(first, n_frames)):
        state = jax.tree.map(lambda x, i=i: x[:, i], fit_states)
        out.append(state)
        hsi_losses.append(fit_losses[:, i])
        if run.folder is not None:
            run.folder.write_frame(t, run.real(_state_arrays(state)))
    if run.folder is not None:
        run.folder.write_color_state(n_frames - 1, run.real((out[-1].color, out[-1].opt_state)))
    return Fitted(out, n_frames, raster, timings, {**fitted.losses, "hsi": hsi_losses})


def refine(run: _Run, vposer, fitted: Fitted) -> Reconstruction:
    """Stage 3 over the fitted sequence of every seed (when the config enables it), stopped by
    `ReconstructionDiverged` when a loss is not finite: the run's `Reconstruction`."""
    stacked = tree_stack(fitted.states)  # leaves (T, S, ...)
    stacked = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), stacked)  # (S, T, ...)
    human2 = stacked.human
    betas = subject_betas(run.inputs)
    refined, timings, losses = human2, dict(fitted.timings), dict(fitted.losses)
    cfg = run.cfg.refine
    if cfg.enabled and cfg.iterations > 0:
        began = time.perf_counter()
        out = run.call(refine_program, _refine_batch(run.inputs, vposer, human2, stacked.object, cfg, betas),
                       _refine_settings(run.inputs, cfg, run.objectives["refine"]), seeds=(_REFINE_SEEDS, False))
        jax.block_until_ready(out.human.transl)
        refined = out.human
        timings["refinement_s"] = time.perf_counter() - began
        losses["refine"] = run.real(out.losses)
        _first_bad("refinement", run.n_frames - 1, losses["refine"], run.real(out.terms))
    return Reconstruction(
        viewmats=run.real(stacked.viewmat),
        human_stage2=run.real(human2),
        human=run.real(refined),
        object_poses=run.real(stacked.object.matrix()),
        timings=timings,
        losses=losses,
        raster=fitted.raster,
        betas=betas,
        devices=run.mesh.record(),
    )


_REFINE_SEEDS = RefineBatch(hands_model=False, vposer=False, human=True, points=True, betas=False, dynamic=True)
"""Which parts of stage 3's batch lead with the seed axis (`SeedMesh.call`)."""


def _refine_batch(inputs: SceneInputs, vposer, human2: HumanPose, objects: ObjectPose, cfg: RefineConfig,
                  betas) -> RefineBatch:
    """Stage 3's inputs: the object's contact points per frame and whether it moves, per seed."""
    if inputs.object is not None:
        points = jax.vmap(lambda r, t: contact_points(inputs.object.means, r, t, cfg.max_contact_points))(
            objects.rotation, objects.translation)
        dynamic = object_moves(objects.matrix(), cfg.dynamic_threshold)
    else:
        points, dynamic = None, np.zeros(human2.transl.shape[0], bool)
    hands_model = inputs.body.vertex_subset(hand_vertices(inputs.body, cfg.max_hand_vertices))
    return RefineBatch(hands_model, vposer, human2, points, jnp.asarray(betas), jnp.asarray(dynamic))


def _refine_settings(inputs: SceneInputs, cfg: RefineConfig, objective: Objective) -> RefineSettings:
    pair_scale = contact_pair_scale(inputs.body, inputs.object.num, cfg) if inputs.object is not None else 1.0
    return RefineSettings(cfg, float(pair_scale), objective)


def write(folder: RunFolder | None, inputs: SceneInputs, result: Reconstruction, frame_rate: float | None,
          before_complete) -> None:
    """The results into the run folder (`write_results`), or, without one, only
    `before_complete(result)`."""
    if folder is not None:
        write_results(folder, result, gender=getattr(inputs.body, "gender", "neutral"),
                      frame_rate=frame_rate, before_complete=before_complete)
    elif before_complete is not None:
        before_complete(result)


def subject_betas(inputs: SceneInputs) -> np.ndarray:
    """The subject's shape: the avatar's betas, cut or zero-padded to the body model's count."""
    template = getattr(inputs.avatar, "template", None)
    return betas_for(inputs.body, None if template is None else template.betas)


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
        "raster": None if raster is None else raster.capacities,
        "devices": result.devices,
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
