"""The reconstruction pipeline end to end on a tiny generated problem: batching over seeds, resume,
the NaN guard, user loss terms, frame-parallel mode and the output files."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zerohsi_jax.demo import noisy_estimates
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

CFG = ReconstructConfig(
    camera=CameraTrackingConfig(iterations=3),
    hsi=HSIFitConfig(iterations=4, root_only_iterations=1),
    refine=RefineConfig(iterations=5),
)


@pytest.fixture(scope="module")
def problem(tiny_demo):
    return tiny_demo


def _observations(demo, seeds, noise=0.05, frames=None):
    frames = demo.frames if frames is None else frames
    est = np.stack([noisy_estimates(np.asarray(demo.truth.human.body_pose), noise, 10 + s) for s in seeds])
    tile = lambda a: jnp.asarray(np.broadcast_to(a, (len(seeds),) + a.shape))  # noqa: E731
    return Observations(tile(frames), tile(demo.human_masks), tile(demo.object_masks), jnp.asarray(est))


def _run(demo, obs, cfg=CFG, **kw):
    return reconstruct(demo.inputs, obs, demo.initial, demo.vposer, cfg, raster=demo.raster, progress=False, **kw)


@pytest.fixture(scope="module")
def single_runs(problem):
    return [_run(problem, _observations(problem, [s])) for s in (0, 1)]


def test_batched_seeds_equal_single_runs(problem, single_runs):
    """Two videos fitted in one vmapped program give what two separate runs give."""
    batched = _run(problem, _observations(problem, [0, 1]))
    for s, single in enumerate(single_runs):
        np.testing.assert_allclose(batched.viewmats[s], single.viewmats[0], atol=1e-5)
        np.testing.assert_allclose(batched.object_poses[s], single.object_poses[0], atol=1e-4)
        for name in ("transl", "global_orient", "body_pose"):
            np.testing.assert_allclose(getattr(batched.human_stage2, name)[s], getattr(single.human_stage2, name)[0],
                                       atol=1e-4, err_msg=name)
            np.testing.assert_allclose(getattr(batched.human, name)[s], getattr(single.human, name)[0], atol=1e-4,
                                       err_msg=name)
    # The two seeds started from different pose estimates, so they really are different problems.
    assert np.abs(batched.human_stage2.body_pose[0] - batched.human_stage2.body_pose[1]).max() > 1e-3


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
    with pytest.raises(ReconstructionDiverged, match=r"HSI fit diverged at frame 1.*'rgb'"):
        _run(problem, obs, run_dir=tmp_path / "b")
    assert (tmp_path / "b" / "frames" / "frame_0000.npz").exists()
    assert not (tmp_path / "b" / "frames" / "frame_0001.npz").exists()


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


def test_frame_parallel_mode_fits_the_remaining_frames_together(problem):
    cfg = dataclasses.replace(CFG, mode="frame_parallel", parallel_warmup_frames=1, refine=RefineConfig(enabled=False))
    out = _run(problem, _observations(problem, [0]), cfg=cfg)
    assert out.human.body_pose.shape == (1, 3, 63)
    assert np.all(np.isfinite(out.human.body_pose)) and np.all(np.isfinite(out.viewmats))
    # Frame 2 started from frame 1's result and moved: it was fitted, not copied.
    assert np.abs(out.human_stage2.transl[0, 2] - out.human_stage2.transl[0, 1]).max() > 0


def test_bad_observations_are_reported(problem):
    obs = _observations(problem, [0])
    small = dataclasses.replace(obs, frames=obs.frames[:, :, :20])
    with pytest.raises(ValueError, match=r"frames are 40x20 but the camera renders 40x40"):
        _run(problem, small)


@pytest.mark.torch
def test_output_parameters_drive_smplx(problem, single_runs, tmp_path):
    """smplx_params.npz feeds `smplx.SMPLX` directly and poses the same joints as our model."""
    import smplx
    import torch

    from zerohsi_jax.body import synthetic_smplx_path
    from zerohsi_jax.reconstruct.pipeline import smplx_param_arrays

    params = smplx_param_arrays(jax.tree.map(lambda x: x[0], single_runs[0].human), 10)
    model = smplx.SMPLX(str(synthetic_smplx_path()), num_betas=10, use_pca=False, flat_hand_mean=True)
    out = model(**{k: torch.tensor(v) for k, v in params.items()})
    ours = problem.inputs.body(global_orient=params["global_orient"], body_pose=params["body_pose"],
                               transl=params["transl"])
    np.testing.assert_allclose(out.joints.detach().numpy(), np.asarray(ours.joints), atol=1e-5)
