"""The reconstruction pipeline end to end on a tiny generated problem: batching over seeds, resume,
the NaN guard, user loss terms, frame-parallel mode and the output files."""

import dataclasses
import types

import jax.numpy as jnp
import numpy as np
import pytest

from zerohsi_jax.reconstruct import (
    CameraTrackingConfig,
    HSIFitConfig,
    Observations,
    ReconstructConfig,
    ReconstructionDiverged,
    RefineConfig,
    losses,
    reconstruct,
)
from zerohsi_jax.reconstruct.run_files import RunFolder
from zerohsi_jax.synthetic.instances import noisy_estimates

CFG = ReconstructConfig(
    camera=CameraTrackingConfig(iterations=3),
    hsi=HSIFitConfig(iterations=4, root_only_iterations=1),
    refine=RefineConfig(iterations=5),
)


@pytest.fixture(scope="module")
def problem(tiny_demo):
    """The tiny demo problem, with a second video of the same initial state: another motion
    (the person steps and lifts differently), hence other frames and masks."""
    from zerohsi_jax.synthetic.instances import render_reference
    from zerohsi_jax.synthetic.motion import interaction_motion

    d = tiny_demo
    other = interaction_motion(d.inputs.body, d.frames.shape[0], table_center=d.room.table_center,
                               table_top=d.room.table_top_height, object_half_height=0.1,
                               camera_size=d.frames.shape[1], variation=7)
    frames, human, obj = render_reference(d.inputs, other, d.raster)
    # Same initial state, then another motion: frame 0 agrees, the later frames and masks do not.
    np.testing.assert_allclose(frames[0], d.frames[0], atol=1e-5)
    assert np.abs(frames[-1] - d.frames[-1]).max() > 0.1 and np.abs(human[-1] - d.human_masks[-1]).max() > 0.5
    return types.SimpleNamespace(**vars(d), videos=[(d.truth, d.frames, d.human_masks, d.object_masks),
                                                    (other, frames, human, obj)])


def _observations(demo, seeds, noise=0.05, frames=None):
    """Video `s % 2` with pose estimates of noise seed 10 + s, for each s in `seeds`."""
    videos = [demo.videos[s % 2] for s in seeds]
    est = np.stack([noisy_estimates(np.asarray(v[0].human.body_pose), noise, 10 + s)
                    for v, s in zip(videos, seeds, strict=True)])
    pick = lambda k: np.stack([v[k] for v in videos])  # noqa: E731
    f = pick(1) if frames is None else np.stack([frames] * len(seeds))
    return Observations(jnp.asarray(f), jnp.asarray(pick(2)), jnp.asarray(pick(3)), jnp.asarray(est))


def _run(demo, obs, cfg=CFG, **kw):
    return reconstruct(demo.inputs, obs, demo.initial, demo.vposer, cfg, raster=demo.raster, progress=False, **kw)


@pytest.fixture(scope="module")
def single_runs(problem):
    return [_run(problem, _observations(problem, [s])) for s in (0, 1)]


def test_batched_seeds_equal_single_runs(problem, single_runs):
    """Two different videos (other motions, masks and estimates) fitted in one vmapped program give
    what two separate runs give: no seed reads another's frames or masks."""
    batched = _run(problem, _observations(problem, [0, 1]))
    for s, single in enumerate(single_runs):
        np.testing.assert_allclose(batched.viewmats[s], single.viewmats[0], atol=1e-5)
        np.testing.assert_allclose(batched.object_poses[s], single.object_poses[0], atol=1e-4)
        for name in ("transl", "global_orient", "body_pose"):
            np.testing.assert_allclose(getattr(batched.human_stage2, name)[s], getattr(single.human_stage2, name)[0],
                                       atol=1e-4, err_msg=name)
            np.testing.assert_allclose(getattr(batched.human, name)[s], getattr(single.human, name)[0], atol=1e-4,
                                       err_msg=name)
    # The two seeds are different problems: other videos, other results.
    assert np.abs(batched.human_stage2.body_pose[0] - batched.human_stage2.body_pose[1]).max() > 1e-3
    assert np.abs(batched.human_stage2.transl[0] - batched.human_stage2.transl[1]).max() > 1e-3


def test_every_frame_is_written_and_a_run_resumes(problem, single_runs, tmp_path, monkeypatch):
    obs = _observations(problem, [0])
    written = []
    original = RunFolder.write_color_state

    def write_then_stop(self, t, color):
        original(self, t, color)
        written.append(t)
        if t == 1:
            raise KeyboardInterrupt  # the run is killed right after frame 1 is on disk

    monkeypatch.setattr(RunFolder, "write_color_state", write_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _run(problem, obs, run_dir=tmp_path)
    monkeypatch.setattr(RunFolder, "write_color_state", original)
    assert written == [0, 1]
    assert RunFolder(tmp_path).resumable_frame() == 1
    # A frame whose results are on disk but whose colour nets are not is redone, not trusted.
    (tmp_path / "resume" / "color_net.json").write_text('{"frame": 2}')
    assert RunFolder(tmp_path).resumable_frame() is None
    (tmp_path / "resume" / "color_net.json").write_text('{"frame": 1}')
    assert not (tmp_path / "seed_0" / "smplx_params.npz").exists()

    resumed = _run(problem, obs, run_dir=tmp_path)
    full = single_runs[0]
    np.testing.assert_allclose(resumed.viewmats, full.viewmats, atol=1e-5)
    np.testing.assert_allclose(resumed.human.body_pose, full.human.body_pose, atol=1e-4)
    files = sorted(p.name for p in (tmp_path / "frames").iterdir())
    assert files == ["frame_0000.npz", "frame_0001.npz", "frame_0002.npz"]
    params = np.load(tmp_path / "seed_0" / "smplx_params.npz")
    assert params["body_pose"].shape == (3, 63) and params["left_hand_pose"].shape == (3, 45)
    assert np.load(tmp_path / "seed_0" / "object_poses.npy").shape == (3, 4, 4)

    # A folder holding another run is not silently mixed with a new one.
    with pytest.raises(ValueError, match="different run"):
        _run(problem, obs, cfg=dataclasses.replace(CFG, background=(1.0, 1.0, 1.0)), run_dir=tmp_path)


def test_nan_stops_the_run_naming_frame_stage_and_term(problem, tmp_path):
    frames = problem.frames.copy()
    frames[2, 5, 5] = np.nan
    with pytest.raises(ReconstructionDiverged, match=r"camera tracking diverged at frame 2.*'photometric'"):
        _run(problem, _observations(problem, [0], frames=frames), run_dir=tmp_path / "a")
    assert (tmp_path / "a" / "frames" / "frame_0001.npz").exists()
    assert not (tmp_path / "a" / "frames" / "frame_0002.npz").exists()

    obs = _observations(problem, [0])
    obs = dataclasses.replace(obs, pose_estimates=obs.pose_estimates.at[0, 1, 4].set(jnp.nan))
    # A NaN pose culls the Gaussians it moves, so the losses may stay finite: the fitted pose is checked too.
    with pytest.raises(ReconstructionDiverged, match=r"HSI fit diverged at frame 1: the fitted .*body_pose"):
        _run(problem, obs, run_dir=tmp_path / "b")
    assert (tmp_path / "b" / "frames" / "frame_0000.npz").exists()
    assert not (tmp_path / "b" / "frames" / "frame_0001.npz").exists()


@pytest.mark.slow(seconds=55)
def test_a_user_loss_term_needs_no_optimiser_change(problem, single_runs):
    """A new HSI term is a function of the context plus a weight in the config."""
    target = float(single_runs[0].human_stage2.transl[0, -1, 1]) + 0.05
    terms = {**losses.HSI_TERMS, "root_height": lambda c: (c.human.transl[1] - target) ** 2}
    weights = {**CFG.hsi.loss_weights, "root_height": 10.0}
    cfg = dataclasses.replace(CFG, hsi=dataclasses.replace(CFG.hsi, loss_weights=weights))
    pulled = _run(problem, _observations(problem, [0]), cfg=cfg, hsi_terms=terms)
    before = abs(single_runs[0].human_stage2.transl[0, -1, 1] - target)
    after = abs(pulled.human_stage2.transl[0, -1, 1] - target)
    assert after < before - 0.005
    with pytest.raises(KeyError, match="unknown terms"):
        losses.weighted_sum(losses.HSI_TERMS, {"no_such_term": 1.0}, None)


def test_frame_parallel_mode_fits_the_remaining_frames_together(problem, single_runs):
    """Frame-parallel mode fits frames warm-up+1..T-1 together, each from the last warm-up frame.
    With one warm-up frame of three, the one parallel frame starts where the sequential fit would:
    the results agree. Without warm-up, frame 1 still does, frame 2 starts from frame 0 instead."""
    seq = single_runs[0]
    par = _run(problem, _observations(problem, [0]), cfg=dataclasses.replace(CFG, mode="frame_parallel",
                                                                             parallel_warmup_frames=1))
    for name in ("transl", "global_orient", "body_pose"):
        np.testing.assert_allclose(getattr(par.human_stage2, name), getattr(seq.human_stage2, name), atol=1e-4,
                                   err_msg=name)
    np.testing.assert_allclose(par.object_poses, seq.object_poses, atol=1e-4)
    cold = _run(problem, _observations(problem, [0]), cfg=dataclasses.replace(CFG, mode="frame_parallel",
                                                                              parallel_warmup_frames=0))
    np.testing.assert_allclose(cold.human_stage2.body_pose[:, :2], seq.human_stage2.body_pose[:, :2], atol=1e-4)
    np.testing.assert_allclose(cold.viewmats, seq.viewmats, atol=1e-5)  # cameras are tracked in order either way
    assert np.abs(cold.human_stage2.transl[0, 2] - seq.human_stage2.transl[0, 2]).max() > 1e-6


def test_bad_observations_are_reported(problem):
    obs = _observations(problem, [0])
    small = dataclasses.replace(obs, frames=obs.frames[:, :, :20])
    with pytest.raises(ValueError, match=r"frames are 40x20 but the camera renders 40x40"):
        _run(problem, small)


@pytest.mark.torch
def test_output_parameters_drive_smplx_with_the_subjects_shape(problem, tmp_path):
    """smplx_params.npz carries the avatar's betas on every frame, feeds `smplx.SMPLX` directly and
    poses the same joints as our model with that shape."""
    import equinox as eqx
    import smplx
    import torch

    from zerohsi_jax.synthetic import synthetic_smplx_path

    betas = jnp.linspace(-1.2, 1.2, 10)
    inputs = eqx.tree_at(lambda i: i.avatar.template.betas, problem.inputs, betas)
    cfg = dataclasses.replace(CFG, refine=RefineConfig(iterations=2))
    result = reconstruct(inputs, _observations(problem, [0]), problem.initial, problem.vposer, cfg,
                         raster=problem.raster, progress=False, run_dir=tmp_path)
    np.testing.assert_allclose(result.betas, np.asarray(betas))
    with np.load(tmp_path / "seed_0" / "smplx_params.npz") as f:
        params = {k: f[k] for k in f.files}
    np.testing.assert_allclose(params["betas"], np.broadcast_to(np.asarray(betas), (3, 10)))
    model = smplx.SMPLX(str(synthetic_smplx_path()), num_betas=10, use_pca=False, flat_hand_mean=True)
    out = model(**{k: torch.tensor(v) for k, v in params.items()})
    ours = problem.inputs.body(betas=betas, global_orient=params["global_orient"], body_pose=params["body_pose"],
                               transl=params["transl"])
    np.testing.assert_allclose(out.joints.detach().numpy(), np.asarray(ours.joints), atol=1e-5)


@pytest.mark.slow(seconds=110)
def test_enough_iterations_recover_the_motion(tiny_demo):
    """Fitted with enough iterations, a small generated instance ends well below what the fit
    started from: the body below the noisy per-frame estimates, the root, camera and object below
    staying where frame 0 left them (a sign or order error in any update would fail this)."""
    from zerohsi_jax.metrics.ground_truth import camera_centers, ground_truth_errors
    from zerohsi_jax.synthetic.instances import render_reference
    from zerohsi_jax.synthetic.motion import interaction_motion

    d = tiny_demo
    truth = interaction_motion(d.inputs.body, 6, table_center=d.room.table_center, table_top=d.room.table_top_height,
                               object_half_height=0.1, camera_size=d.frames.shape[1])
    frames, human_masks, object_masks = render_reference(d.inputs, truth, d.raster)
    est = noisy_estimates(np.asarray(truth.human.body_pose), 0.1, 3)[None]
    obs = Observations(jnp.asarray(frames[None]), jnp.asarray(human_masks[None]), jnp.asarray(object_masks[None]),
                       jnp.asarray(est))
    cfg = ReconstructConfig(camera=CameraTrackingConfig(iterations=20, learning_rate=3e-3),
                            hsi=HSIFitConfig(iterations=60, root_only_iterations=10),
                            refine=RefineConfig(enabled=False))
    result = reconstruct(d.inputs, obs, d.initial, d.vposer, cfg, raster=d.raster, progress=False)
    err = ground_truth_errors(d.inputs.body, result, truth, estimates=est)
    # What the fit starts from in every frame: the estimates, and frame 0's root, camera and object.
    still = lambda x: 1000 * float(np.mean(np.linalg.norm(np.asarray(x)[1:] - np.asarray(x)[:1], axis=-1)))  # noqa: E731
    root0 = still(truth.human.transl)
    camera0 = still(camera_centers(jnp.asarray(truth.viewmats)))
    object0 = still(truth.object_poses.translation)
    print({k: err[k] for k in ("mpjpe_stage2_mm", "mpjpe_estimate_mm", "root_translation_mm",
                               "camera_translation_mm", "object_translation_mm")}, root0, camera0, object0)
    assert min(root0, camera0, object0) > 50.0  # the instance moves all four
    # Measured: body 35 of 67 mm, root 22 of 70, camera 22 of 208, object 19 of 110.
    assert err["mpjpe_stage2_mm"] < 0.7 * err["mpjpe_estimate_mm"]
    assert err["root_translation_mm"] < 0.5 * root0
    assert err["camera_translation_mm"] < 0.3 * camera0
    assert err["object_translation_mm"] < 0.4 * object0


# ------------------------------------------------ run folders that never lie (issue 12)


@pytest.mark.slow(seconds=130)
def test_too_small_capacities_are_grown_and_the_frame_redone(problem, single_runs):
    """Capacities are static inside the compiled programs: a stage whose renders drop pairs is
    redone with grown capacities, said in one line, and the result is the ample-capacity run's."""
    small = problem.raster.with_capacity(tile_capacity=16, pair_capacity=1024)
    said = []
    result = reconstruct(problem.inputs, _observations(problem, [0]), problem.initial, problem.vposer, CFG,
                         raster=small, progress=False, log=said.append)
    assert said and said[0].startswith("frame 0 (initial object depth): ") and "did not fit tile_capacity=16" in said[0]
    assert all("redone with tile_capacity=" in line for line in said), said
    assert result.raster.tile_capacity > 16 and result.raster.overflow == "grow"
    assert f"tile_capacity={result.raster.tile_capacity}" in said[-1]
    full = single_runs[0]
    np.testing.assert_allclose(result.viewmats, full.viewmats, atol=1e-5)
    np.testing.assert_allclose(result.object_poses, full.object_poses, atol=1e-4)
    for name in ("transl", "global_orient", "body_pose"):
        np.testing.assert_allclose(getattr(result.human, name), getattr(full.human, name), atol=1e-4, err_msg=name)


def test_measured_capacities_keep_larger_ones_given(tiny_demo):
    """`measure_raster_config(at_least=...)` (a continuation's previous capacities): each capacity is
    the larger of the measured and the given one, the bound scene's moving-pair buffer included."""
    from zerohsi_jax.reconstruct.pipeline import measure_moving_pairs, measure_raster_config
    from zerohsi_jax.splat import RasterConfig

    d = tiny_demo
    cfg = dataclasses.replace(CFG, hsi=dataclasses.replace(CFG.hsi, bind_scene=True))
    measured = measure_raster_config(d.inputs, d.initial, cfg)
    assert measured.dynamic_pair_capacity == measure_moving_pairs(d.inputs, d.initial, measured)
    given = RasterConfig(tile_capacity=measured.tile_capacity * 2, pair_capacity=16, dynamic_pair_capacity=16)
    kept = measure_raster_config(d.inputs, d.initial, cfg, at_least=given)
    assert (kept.tile_capacity, kept.pair_capacity, kept.dynamic_pair_capacity) == (
        given.tile_capacity, measured.pair_capacity, measured.dynamic_pair_capacity)
    # Without a bound scene there is no moving-pair buffer, whatever the given capacities hold.
    assert measure_raster_config(d.inputs, d.initial, CFG, at_least=given).dynamic_pair_capacity is None
    # The config's tile size is the measured raster's (smaller tiles: more pairs, fewer per tile).
    small = measure_raster_config(d.inputs, d.initial, dataclasses.replace(CFG, tile_size=8))
    assert small.tile_size == 8 and measured.tile_size == 16
    assert small.pair_capacity >= measured.pair_capacity


def test_overflow_policies_act_after_each_program():
    """'grow' gives capacities that hold what the renders needed, 'drop' warns and keeps the
    capacities, 'error' raises naming the capacities to set."""
    from zerohsi_jax.reconstruct.pipeline import _grown_raster
    from zerohsi_jax.reconstruct.state import RasterCounts
    from zerohsi_jax.splat import RasterConfig, RasterOverflowError

    counts = RasterCounts(np.array([0, 9]), np.array([20, 40]), np.array([900, 3000]), np.zeros(2))  # two seeds
    raster = RasterConfig(tile_capacity=16, pair_capacity=1024)
    said = []
    grown = _grown_raster(raster, counts, "frame 4 (HSI fit)", said.append)
    assert grown.tile_capacity >= 40 and grown.pair_capacity >= 3000
    assert said == [f"frame 4 (HSI fit): 9 tile-Gaussian pairs did not fit tile_capacity=16, pair_capacity=1024; "
                    f"redone with tile_capacity={grown.tile_capacity}, pair_capacity={grown.pair_capacity}"]
    assert _grown_raster(raster, counts._replace(overflow=np.zeros(2)), "frame 4", said.append) is None
    with pytest.warns(RuntimeWarning, match="frame 4: the rasterizer dropped 9 tile-Gaussian pairs.*overflow='drop'"):
        assert _grown_raster(dataclasses.replace(raster, overflow="drop"), counts, "frame 4", said.append) is None
    with pytest.raises(RasterOverflowError, match=f"frame 4: 9 .*set tile_capacity={grown.tile_capacity}"):
        _grown_raster(dataclasses.replace(raster, overflow="error"), counts, "frame 4", said.append)
    assert len(said) == 1

    # A bound scene's buffer of moving pairs (HSIFitConfig.bind_scene) grows from its own count: a
    # frame short of it alone is redone with the other capacities unchanged, and the error names it.
    bound = raster.with_capacity(tile_capacity=64, pair_capacity=4096, dynamic_pair_capacity=512)
    short = counts._replace(dynamic_pairs=np.array([300, 700]))
    grown = _grown_raster(bound, short, "frame 5 (HSI fit)", said.append)
    assert (grown.tile_capacity, grown.pair_capacity) == (64, 4096) and grown.dynamic_pair_capacity >= 700
    assert said[-1].endswith(f"redone with tile_capacity=64, pair_capacity=4096, "
                             f"dynamic_pair_capacity={grown.dynamic_pair_capacity}")
    with pytest.raises(RasterOverflowError, match=f"dynamic_pair_capacity={grown.dynamic_pair_capacity}"):
        _grown_raster(dataclasses.replace(bound, overflow="error"), short, "frame 5", said.append)


def test_a_rerun_with_other_inputs_is_refused_naming_them(problem, tmp_path):
    """Another video, other pose estimates (the demo's --seed, --estimate-noise), another scene: the
    folder's run is not resumed as if it were this one. Refused before anything is compiled."""
    import fcntl
    import json

    from zerohsi_jax.reconstruct.losses import CAMERA_TERMS, HSI_TERMS, REFINE_TERMS
    from zerohsi_jax.reconstruct.pipeline import run_manifest
    from zerohsi_jax.reconstruct.run_files import RunFolderBusyError, RunMismatchError

    obs = _observations(problem, [0])
    terms = {"camera": CAMERA_TERMS, "hsi": HSI_TERMS, "refine": REFINE_TERMS}
    manifest = run_manifest(problem.inputs, obs, problem.initial, problem.vposer, CFG, problem.raster, terms)
    assert manifest == run_manifest(problem.inputs, _observations(problem, [0]), problem.initial, problem.vposer,
                                    CFG, problem.raster, terms)  # the same problem, the same fingerprints
    RunFolder(tmp_path).start(manifest, resume=False)
    noisier = _observations(problem, [0], noise=0.1)
    with pytest.raises(RunMismatchError, match=r"different run: its inputs differ in pose_estimates\. .*--no-resume"):
        _run(problem, noisier, run_dir=tmp_path)
    other_video = _observations(problem, [1])
    with pytest.raises(RunMismatchError, match="differ in frames, human_masks, object_masks, pose_estimates"):
        _run(problem, other_video, run_dir=tmp_path)
    moved = dataclasses.replace(problem.inputs, scene=problem.inputs.scene.transform(jnp.eye(3), jnp.ones(3) * 0.01))
    with pytest.raises(RunMismatchError, match=r"differ in scene\."):
        reconstruct(moved, obs, problem.initial, problem.vposer, CFG, raster=problem.raster, progress=False,
                    run_dir=tmp_path)
    with pytest.raises(RunMismatchError, match=r"differ in config\."):
        _run(problem, obs, cfg=dataclasses.replace(CFG, background=(1.0, 1.0, 1.0)), run_dir=tmp_path)
    assert json.loads((tmp_path / "run.json").read_text()) == manifest  # untouched

    with open(tmp_path / ".lock", "a+") as other:  # another run holds the folder
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunFolderBusyError, match=str(tmp_path)):
            _run(problem, obs, run_dir=tmp_path)


def test_unknown_loss_terms_and_bad_numbers_are_refused_before_compiling(problem):
    from zerohsi_jax.run_config import ConfigError

    cfg = dataclasses.replace(CFG, hsi=dataclasses.replace(CFG.hsi, loss_weights={"rgb": 1.0, "rbg": 1.0}))
    with pytest.raises(ConfigError, match=r"reconstruct.hsi.loss_weights: unknown loss term\(s\) \['rbg'\]"):
        _run(problem, _observations(problem, [0]), cfg=cfg)
    cfg = dataclasses.replace(CFG, camera=dataclasses.replace(CFG.camera, learning_rate=float("nan")))
    with pytest.raises(ConfigError, match="reconstruct.camera.learning_rate: must be a finite number"):
        _run(problem, _observations(problem, [0]), cfg=cfg)


def test_a_damaged_frame_is_named_and_redone_from(problem, single_runs, tmp_path):
    """A truncated frame file of a finished run: the rerun names it and the frame to redo from;
    redoing from there gives the uninterrupted run's results. The pictures a caller writes come
    before the completion mark."""
    from zerohsi_jax.reconstruct.run_files import DamagedRunFileError

    obs = _observations(problem, [0])
    complete_when_pictured = []

    def pictures(result):
        complete_when_pictured.append(RunFolder(tmp_path).is_complete())
        (tmp_path / "seed_0" / "video.mp4").write_bytes(b"a picture")

    _run(problem, obs, run_dir=tmp_path, before_complete=pictures)
    assert complete_when_pictured == [False] and RunFolder(tmp_path).is_complete()
    frame = tmp_path / "frames" / "frame_0001.npz"
    frame.write_bytes(frame.read_bytes()[:200])
    with pytest.raises(DamagedRunFileError, match=r"frame_0001.npz: damaged.*--redo-from 1 \(redo_from=1"):
        _run(problem, obs, run_dir=tmp_path)
    assert not RunFolder(tmp_path).is_complete()  # the run folder is not whole any more
    redone = _run(problem, obs, run_dir=tmp_path, redo_from=1)
    full = single_runs[0]
    np.testing.assert_allclose(redone.viewmats, full.viewmats, atol=1e-5)
    np.testing.assert_allclose(redone.human.body_pose, full.human.body_pose, atol=1e-4)
    assert RunFolder(tmp_path).is_complete() and np.load(frame)["viewmat"].shape == (1, 4, 4)
    assert not (tmp_path / "seed_0" / "video.mp4").exists()  # this run's caller wrote no pictures
