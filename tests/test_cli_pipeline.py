"""The run config and the file-based commands: init-frame, reconstruct and continue on a scene the
demo generates and writes to disk as a user's files would be."""

import dataclasses
import json

import imageio.v3 as iio
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from zerohsi_jax.cli import main
from zerohsi_jax.io import write_video
from zerohsi_jax.run_config import ConfigError, RunConfig, example_config, load_run_config
from zerohsi_jax.splat import save_ply
from zerohsi_jax.synthetic.instances import noisy_estimates


def test_example_config_loads_back_to_the_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(example_config())
    cfg = load_run_config(path)
    assert cfg.reconstruct == RunConfig().reconstruct
    assert cfg.video == RunConfig().video
    assert cfg.reconstruct.hsi.iterations == 300 and cfg.base_dir == str(tmp_path.resolve())


@pytest.mark.parametrize(
    "text,message",
    [
        ("scene: {plyy: a.ply}", r"scene: unknown key 'plyy' \(did you mean 'ply'\?\)"),
        ("video: {stride: three}", r"video.stride: expected an integer, got 'three'"),
        ("human: {transl: [0, 1]}", r"human.transl: expected a list of 3 values, got 2"),
        ("reconstruct: {hsi: {learning_rate: fast}}", r"reconstruct.hsi.learning_rate: expected a number"),
        ("reconstruct: {mode: sideways}", r"mode must be 'sequential' or 'frame_parallel'"),
        ("- just a list", r"top level must be a mapping"),
    ],
)
def test_config_errors_name_the_file_and_the_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_run_config(path)
    assert "bad.yaml" in str(err.value)


def test_missing_config_file_says_how_to_make_one(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path / "none.yaml")]) == 2
    assert "config --example" in capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_demo):
    """A demo problem written out as a user's files: scene and object .ply, camera JSON, an mp4,
    masks, pose estimates, the initial body pose, and a config with a tiny schedule."""
    root = tmp_path_factory.mktemp("user")
    demo = tiny_demo
    save_ply(root / "scene.ply", demo.inputs.scene)
    save_ply(root / "object.ply", demo.inputs.object)
    demo.inputs.camera.save_json(root / "camera.json")
    write_video(root / "clip.mp4", (np.clip(demo.frames, 0, 1) * 255).astype(np.uint8), 10)
    np.savez(root / "clip_masks.npz", human=demo.human_masks > 0.5, object=demo.object_masks > 0.5)
    np.save(root / "estimates.npy", noisy_estimates(np.asarray(demo.truth.human.body_pose), 0.05, 3))
    np.save(root / "body_pose0.npy", np.asarray(demo.truth.human.body_pose[0]))
    h, o = demo.initial.human, demo.initial.object_pose
    from zerohsi_jax.geometry import matrix_to_axis_angle

    cfg = {
        "scene": {"ply": "scene.ply"},
        "object": {"ply": "object.ply", "translation": np.asarray(o.translation).tolist(),
                   "rotation": np.asarray(matrix_to_axis_angle(o.rotation)).tolist()},
        "human": {"avatar_gaussians": 600, "avatar_size": "tiny", "transl": np.asarray(h.transl).tolist(),
                  "global_orient": np.asarray(h.global_orient).tolist(), "body_pose": "body_pose0.npy"},
        "camera": "camera.json",
        "video": {"paths": ["clip.mp4"], "stride": 1, "max_frames": 3, "masks": ["clip_masks.npz"],
                  "pose_estimates": ["estimates.npy"]},
        "prompt": "The person lifts the box from the table.",
        "init_frame": {"width": 80, "height": 80},
        "reconstruct": {"camera": {"iterations": 3}, "hsi": {"iterations": 4, "root_only_iterations": 1},
                        "refine": {"iterations": 5}},
        "output": "out",
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    return root


def _render_of_initial_state(config_path):
    """The initial state of a config rendered as `init-frame` renders it, as uint8."""
    from zerohsi_jax.app import load_assets, render_initial_state
    from zerohsi_jax.io import to_uint8

    cfg = load_run_config(config_path)
    assets = load_assets(cfg)
    camera = assets.camera.resized(cfg.init_frame.width, cfg.init_frame.height)
    return to_uint8(np.asarray(render_initial_state(assets, camera, cfg.reconstruct.background).rgb)), assets


def test_init_frame_renders_the_initial_state_for_the_generator(files):
    assert main(["init-frame", str(files / "run.yaml")]) == 0
    img = iio.imread(files / "out" / "init_frame.png")
    assert img.shape == (80, 80, 3)
    expected, _ = _render_of_initial_state(files / "run.yaml")
    np.testing.assert_array_equal(img, expected)


def test_init_frame_and_fit_share_the_configs_background(files, tmp_path):
    """One background colour: where the initial frame shows background, it is the config's."""
    from zerohsi_jax.app import load_assets, render_initial_state

    cfg = yaml.safe_load((files / "run.yaml").read_text())
    cfg["reconstruct"]["background"] = [0.2, 0.4, 0.6]
    (files / "background.yaml").write_text(yaml.safe_dump(cfg))
    loaded = load_run_config(files / "background.yaml")
    assets = load_assets(loaded)
    # Only the floor's first Gaussians stay in the scene, so that the view shows background.
    assets = dataclasses.replace(assets, scene=jax.tree.map(lambda x: x[:50], assets.scene))
    camera = assets.camera.resized(80, 80)
    out = render_initial_state(assets, camera, loaded.reconstruct.background)
    alpha, rgb = np.asarray(out.alpha), np.asarray(out.rgb)
    black = np.asarray(render_initial_state(assets, camera, (0.0, 0.0, 0.0)).rgb)
    np.testing.assert_allclose(rgb - black, (1 - alpha)[..., None] * np.array([0.2, 0.4, 0.6]), atol=1e-5)
    assert np.mean(alpha < 0.5) > 0.2, "the test needs background in view"


@pytest.mark.slow(seconds=100)
def test_reconstruct_and_continue_from_files(files):
    assert main(["reconstruct", str(files / "run.yaml"), "--no-resume"]) == 0
    out = files / "out"
    params = np.load(out / "run" / "seed_0" / "smplx_params.npz")
    assert params["body_pose"].shape == (3, 63)
    for name in ("video.mp4", "losses.png", "object_poses.npy", "camera_viewmats.npy"):
        assert (out / "run" / "seed_0" / name).exists(), name
    assert yaml.safe_load((out / "config.yaml").read_text())["prompt"].startswith("The person")
    assert "reconstruct: done" in (out / "log.txt").read_text()
    timings = json.loads((out / "run" / "timings.json").read_text())
    assert set(timings) >= {"camera_tracking_s", "hsi_fit_s", "refinement_s"}
    done = json.loads((out / "run" / "complete.json").read_text())
    assert done["seeds"] == 1 and done["frames"] == 3 and done["frame_rate"] == pytest.approx(10.0)

    # The command's results are `reconstruct()` on the arrays the command read.
    from zerohsi_jax.app import load_assets
    from zerohsi_jax.io import load_video_for_camera
    from zerohsi_jax.reconstruct import Observations, reconstruct
    from zerohsi_jax.reconstruct.pipeline import measure_raster_config
    from zerohsi_jax.reconstruct.state import SceneInputs

    cfg = load_run_config(files / "run.yaml")
    assets = load_assets(cfg)
    frames, _, camera = load_video_for_camera(files / "clip.mp4", assets.camera, stride=1, max_frames=3)
    with np.load(files / "clip_masks.npz") as m:
        masks = m["human"].astype(np.float32), m["object"].astype(np.float32)
    obs = Observations(jnp.asarray(frames[None], jnp.float32) / 255.0, jnp.asarray(masks[0][None]),
                       jnp.asarray(masks[1][None]), jnp.asarray(np.load(files / "estimates.npy")[None], jnp.float32))
    inputs = SceneInputs(assets.scene, assets.object, assets.avatar, assets.body, camera)
    direct = reconstruct(inputs, obs, assets.initial, assets.vposer, cfg.reconstruct, progress=False,
                         raster=measure_raster_config(inputs, assets.initial, cfg.reconstruct))
    for name in ("transl", "global_orient", "body_pose"):
        np.testing.assert_allclose(params[name], getattr(direct.human, name)[0], atol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.load(out / "run" / "seed_0" / "camera_viewmats.npy"), direct.viewmats[0], atol=1e-6)
    np.testing.assert_allclose(np.load(out / "run" / "seed_0" / "object_poses.npy"), direct.object_poses[0], atol=1e-6)

    # `continue` without a video prepares the next clip: its config starts from the last frame,
    # and its initial frame (what the video generator needs next) is that state rendered.
    assert main(["continue", str(out)]) == 0
    nxt = yaml.safe_load((out / "next" / "config.yaml").read_text())
    np.testing.assert_allclose(nxt["human"]["transl"], params["transl"][-1], atol=1e-6)
    expected, chained_assets = _render_of_initial_state(out / "next" / "config.yaml")
    np.testing.assert_allclose(np.asarray(chained_assets.initial.human.body_pose), params["body_pose"][-1], atol=1e-6)
    np.testing.assert_array_equal(iio.imread(out / "next" / "init_frame.png"), expected)
    first, _ = _render_of_initial_state(files / "run.yaml")
    assert np.abs(expected.astype(int) - first.astype(int)).max() > 30  # the person moved since frame 0

    code = main(["continue", str(out), "--video", str(files / "clip.mp4"), "--masks", str(files / "clip_masks.npz"),
                 "--pose-estimates", str(files / "estimates.npy")])
    assert code == 0
    chained = np.load(out / "next" / "chained_smplx_params.npz")
    assert chained["transl"].shape == (5, 3)  # 3 frames, then 2 new ones (the shared frame once)
    np.testing.assert_allclose(chained["transl"][:3], params["transl"])
    # The next clip kept the previous clip's capacities where they sufficed (its programs compiled once).
    before = json.loads((out / "run" / "complete.json").read_text())["raster"]
    after = json.loads((out / "next" / "run" / "complete.json").read_text())["raster"]
    assert after["tile_capacity"] >= before["tile_capacity"] and after["pair_capacity"] >= before["pair_capacity"]


@pytest.mark.torch
@pytest.mark.slow(seconds=50)
def test_segment_command_prompts_sam2_from_the_render(files):
    """`zerohsi-jax segment` renders the initial state, proposes prompts on each object's visible
    pixels and runs SAM2 (its smallest model, random weights: the plumbing, not the quality)."""
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(0)
    model = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
    torch.save({"model": model.state_dict()}, files / "sam2.1_hiera_tiny.pt")
    cfg = yaml.safe_load((files / "run.yaml").read_text())
    cfg["video"]["masks"] = None
    cfg["segment"] = {"checkpoint": "sam2.1_hiera_tiny.pt", "device": "cpu", "num_points": 3}
    cfg["output"] = "out_segment"
    (files / "segment.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["segment", str(files / "segment.yaml")]) == 0
    out = files / "out_segment"
    with np.load(out / "masks_0.npz") as masks:
        assert masks["human"].shape == (3, 40, 40) and masks["object"].shape == (3, 40, 40)
        assert masks["human"].dtype == bool
    assert (out / "segment_0" / "prompts.png").exists()
    assert (files / "clip.mp4.masks.npz").exists()  # cached next to the video for the next run
