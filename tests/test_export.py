"""`zerohsi-jax export`: AMASS SMPL-X motion files that `smplx` poses to our vertices, camera and
object JSON that agree with the run, frame rates that are never guessed, unfinished runs refused."""

import json

import numpy as np
import pytest
import yaml

from zerohsi_jax.cli import main
from zerohsi_jax.export import FULL_POSE_ORDER, export_run
from zerohsi_jax.io import write_video
from zerohsi_jax.reconstruct.run_files import RunFolder, save_npz
from zerohsi_jax.splat import Camera, load_ply, random_gaussians, save_ply

T, SEEDS = 5, 2
WIDTHS = {"transl": 3, "global_orient": 3, "body_pose": 63, "expression": 10, "jaw_pose": 3, "leye_pose": 3,
          "reye_pose": 3, "left_hand_pose": 45, "right_hand_pose": 45}


def _params(rng, betas):
    """Per-frame SMPL-X keyword arrays with every joint moving (so a wrong slot in the 165 shows)."""
    p = {k: (0.3 * rng.standard_normal((T, n))).astype(np.float32) for k, n in WIDTHS.items()}
    p["transl"] = (p["transl"] + [0.0, 1.0, 2.0]).astype(np.float32)
    p["expression"][:] = 0.0  # AMASS files carry no expression
    p["betas"] = np.broadcast_to(betas, (T, betas.size)).astype(np.float32).copy()
    return p


def _viewmats(rng):
    from zerohsi_jax.geometry import axis_angle_to_matrix

    out = np.tile(np.eye(4), (T, 1, 1))
    out[:, :3, :3] = np.asarray(axis_angle_to_matrix((0.2 * rng.standard_normal((T, 3))).astype(np.float32)))
    out[:, :3, 3] = rng.standard_normal((T, 3))
    return out


def write_run(root, *, frame_rate=None, complete=True, seed=0):
    """A run folder in the layout `reconstruct` writes (run_files' contract), with known contents."""
    rng = np.random.default_rng(seed)
    folder = RunFolder(root)
    folder.check_or_write_manifest({"frames": T, "seeds": SEEDS, "size": [40, 30], "config": "test", "object": True},
                                   resume=False)
    folder.begin_writing()
    betas = (0.8 * rng.standard_normal(10)).astype(np.float32)
    truth = []
    for s in range(SEEDS):
        refined, stage2 = _params(rng, betas), _params(rng, betas)
        objects, viewmats = _viewmats(rng), _viewmats(rng)
        d = folder.seed_dir(s)
        save_npz(d / "smplx_params.npz", **refined)
        save_npz(d / "smplx_params_stage2.npz", **stage2)
        np.save(d / "object_poses.npy", objects)
        np.save(d / "camera_viewmats.npy", viewmats)
        truth.append({"refined": refined, "stage2": stage2, "objects": objects, "viewmats": viewmats})
    save_npz(root / "losses.npz", camera=rng.random((SEEDS, T - 1, 3)), hsi=rng.random((SEEDS, T - 1, 4)),
             refine=rng.random((SEEDS, 6)))
    if complete:
        folder.mark_complete({"seeds": SEEDS, "frames": T, "gender": "female", "num_betas": 10,
                              "frame_rate": frame_rate})
    return truth, betas


def write_config(out, *, video_fps=30.0, stride=3, object_offset=(1.0, 2.0, 3.0)):
    """config.yaml beside the run folder, as `reconstruct` leaves it: a camera at twice the run's
    size, a 30 fps video read every third frame, an object PLY whose Gaussians are off its origin."""
    import jax

    Camera.look_at((0, 1, 3), (0, 1, 0), fov_y_deg=50, width=80, height=60).save_json(out / "camera.json")
    write_video(out / "clip.mp4", np.zeros((T * stride, 30, 40, 3), np.uint8), video_fps)
    obj = random_gaussians(jax.random.key(3), 50, center=object_offset, spread=0.2)
    save_ply(out / "object.ply", obj)
    (out / "config.yaml").write_text(yaml.safe_dump({
        "camera": "camera.json", "object": {"ply": "object.ply"},
        "video": {"paths": ["clip.mp4"] * SEEDS, "stride": stride}, "output": ".",
    }))


@pytest.fixture
def run(tmp_path):
    truth, betas = write_run(tmp_path / "run")
    write_config(tmp_path)
    return tmp_path / "run", truth, betas


@pytest.mark.torch
def test_amass_file_drives_smplx_to_our_vertices(run, tmp_path):
    """The exported AMASS file, split by SMPL-X's full-pose order into smplx.SMPLX's keywords,
    poses the smplx package's model (non-zero betas, every joint moving) to our vertices."""
    import smplx
    import torch

    from zerohsi_jax.body import SMPLX
    from zerohsi_jax.synthetic import synthetic_smplx_path

    run_dir, truth, betas = run
    assert np.abs(betas).max() > 0.1
    paths = export_run(run_dir, "amass", tmp_path / "out")
    assert [p.name for p in paths] == [f"amass_seed_{s}.npz" for s in range(SEEDS)]
    ours = SMPLX.load(synthetic_smplx_path(), num_betas=10, use_pca=False, flat_hand_mean=True)
    theirs = smplx.SMPLX(str(synthetic_smplx_path()), num_betas=10, use_pca=False, flat_hand_mean=True)
    for s in range(SEEDS):
        with np.load(paths[s]) as f:
            amass = {k: f[k] for k in f.files}
        # Split by hand, in the order the AMASS/SMPL-X layout documents (not with our own inverse).
        poses = torch.tensor(amass["poses"])
        kwargs = {"global_orient": poses[:, 0:3], "body_pose": poses[:, 3:66], "jaw_pose": poses[:, 66:69],
                  "leye_pose": poses[:, 69:72], "reye_pose": poses[:, 72:75], "left_hand_pose": poses[:, 75:120],
                  "right_hand_pose": poses[:, 120:165], "transl": torch.tensor(amass["trans"]),
                  "betas": torch.tensor(amass["betas"])[None].expand(T, -1),
                  "expression": torch.zeros(T, 10)}  # smplx needs every input at the batch size
        got = theirs(**kwargs).vertices.detach().numpy()
        want = np.asarray(ours(**{k: v for k, v in truth[s]["refined"].items()}).vertices)
        assert np.abs(want).max() > 0.5  # a posed body in metres, not a degenerate one
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"seed {s}")


def test_amass_layout(run, tmp_path):
    run_dir, truth, betas = run
    export_run(run_dir, "amass", tmp_path / "out", stage="stage2")
    with np.load(tmp_path / "out" / "amass_seed_1.npz") as f:
        a = {k: f[k] for k in f.files}  # loads without allow_pickle: no object arrays
    p = truth[1]["stage2"]
    assert a["poses"].shape == (T, 165) and a["trans"].shape == (T, 3)
    start = 0
    for key, width in FULL_POSE_ORDER:
        np.testing.assert_array_equal(a["poses"][:, start:start + width], p[key], err_msg=key)
        start += width
    np.testing.assert_array_equal(a["root_orient"], p["global_orient"])
    np.testing.assert_array_equal(a["pose_body"], p["body_pose"])
    np.testing.assert_array_equal(a["pose_hand"], np.concatenate([p["left_hand_pose"], p["right_hand_pose"]], 1))
    np.testing.assert_array_equal(a["pose_eye"], np.concatenate([p["leye_pose"], p["reye_pose"]], 1))
    np.testing.assert_array_equal(a["trans"], p["transl"])
    np.testing.assert_array_equal(a["betas"], betas)
    assert int(a["num_betas"]) == 10
    assert str(a["gender"]) == "female" and str(a["surface_model_type"]) == "smplx"
    # complete.json has no frame rate: the config's video rate over its stride, 30 / 3.
    assert float(a["mocap_frame_rate"]) == pytest.approx(10.0)


def test_frame_rate_is_recorded_given_or_refused(tmp_path):
    write_run(tmp_path / "a" / "run", frame_rate=12.5)
    export_run(tmp_path / "a" / "run", "amass", tmp_path / "a" / "out")
    assert float(np.load(tmp_path / "a" / "out" / "amass_seed_0.npz")["mocap_frame_rate"]) == 12.5
    write_run(tmp_path / "b" / "run")  # no rate recorded, no config beside it
    with pytest.raises(ValueError, match="--fps"):
        export_run(tmp_path / "b" / "run", "amass", tmp_path / "b" / "out")
    export_run(tmp_path / "b" / "run", "amass", tmp_path / "b" / "out", fps=24)
    assert float(np.load(tmp_path / "b" / "out" / "amass_seed_0.npz")["mocap_frame_rate"]) == 24.0


def test_smplx_export_feeds_the_keyword_names(run, tmp_path):
    run_dir, truth, _ = run
    export_run(run_dir, "smplx", tmp_path / "out")
    with np.load(tmp_path / "out" / "smplx_seed_0.npz") as f:
        for key, value in truth[0]["refined"].items():
            np.testing.assert_array_equal(f[key], value, err_msg=key)
    meta = json.loads((tmp_path / "out" / "smplx_seed_0.json").read_text())
    assert meta["gender"] == "female" and meta["use_pca"] is False and meta["flat_hand_mean"] is True
    assert meta["frame_rate"] == pytest.approx(10.0) and meta["num_betas"] == 10


def test_cameras_json(run, tmp_path):
    """Per frame world-to-camera and its inverse; intrinsics at the run's size (the config's
    80x60 camera scaled to the 40x30 the run rendered), OpenCV axes stated."""
    run_dir, truth, _ = run
    export_run(run_dir, "cameras", tmp_path / "out")
    cams = json.loads((tmp_path / "out" / "cameras_seed_1.json").read_text())
    config_camera = Camera.load_json(tmp_path / "camera.json")
    assert (cams["width"], cams["height"]) == (40, 30)
    assert cams["fx"] == pytest.approx(float(config_camera.fx) / 2) and cams["cy"] == pytest.approx(15.0)
    assert "OpenCV" in cams["convention"] and "z forward" in cams["convention"]
    assert len(cams["frames"]) == T and cams["frame_rate"] == pytest.approx(10.0)
    for t, frame in enumerate(cams["frames"]):
        np.testing.assert_allclose(frame["world_to_camera"], truth[1]["viewmats"][t], atol=1e-12)
        np.testing.assert_allclose(np.asarray(frame["camera_to_world"]) @ frame["world_to_camera"], np.eye(4),
                                   atol=1e-9)


def test_objects_json_places_the_ply_where_the_run_did(run, tmp_path):
    """object_to_world is the run's pose of the object frame (centred on the PLY's Gaussians, as
    `load_assets` centres it); ply_to_world takes the PLY file's own coordinates to the same place."""
    run_dir, truth, _ = run
    export_run(run_dir, "objects", tmp_path / "out")
    rec = json.loads((tmp_path / "out" / "objects_seed_0.json").read_text())
    assert rec["object_ply"] == str((tmp_path / "object.ply").resolve())
    raw = np.asarray(load_ply(rec["object_ply"]).means, np.float64)
    centred = raw - raw.mean(0)  # what the reconstruction posed
    homogeneous = lambda x: np.concatenate([x, np.ones((len(x), 1))], 1)  # noqa: E731
    for t, frame in enumerate(rec["frames"]):
        np.testing.assert_allclose(frame["object_to_world"], truth[0]["objects"][t], atol=1e-12)
        run_world = homogeneous(centred) @ np.asarray(frame["object_to_world"]).T
        ply_world = homogeneous(raw) @ np.asarray(frame["ply_to_world"]).T
        np.testing.assert_allclose(ply_world, run_world, atol=1e-6)


def test_unfinished_runs_are_refused_by_export_and_view(tmp_path, capsys):
    write_run(tmp_path / "run", complete=False)
    write_config(tmp_path)
    for argv in (["export", str(tmp_path / "run"), "--format", "amass"], ["view", str(tmp_path / "run")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "incomplete" in err and "complete.json" in err and str(tmp_path / "run") in err, err
    assert not (tmp_path / "run" / "export").exists()


def test_export_command_writes_every_format(run, capsys):
    run_dir, _, _ = run
    assert main(["export", str(run_dir), "--format", "all"]) == 0
    names = sorted(p.name for p in (run_dir / "export").iterdir())
    assert names == sorted(f"{kind}_seed_{s}.{ext}" for s in range(SEEDS) for kind, ext in
                           (("amass", "npz"), ("smplx", "npz"), ("smplx", "json"), ("cameras", "json"),
                            ("objects", "json")))
    assert "export: wrote" in capsys.readouterr().out
