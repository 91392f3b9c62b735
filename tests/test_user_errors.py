"""A user's mistakes end in one line naming the file or key and the fix (exit status 2, no
traceback, no output folder left behind); our bugs keep their traceback. Each row of the tables
is one mistake, checked by `config --check` and at the start of the commands."""

import json

import numpy as np
import pytest
import yaml
from splat_scenes import random_scene

from zerohsi_jax.cli import main
from zerohsi_jax.errors import UserError, is_user_error
from zerohsi_jax.io import write_video
from zerohsi_jax.reconstruct import ReconstructionDiverged
from zerohsi_jax.reconstruct.run_files import RunFolder, save_npz
from zerohsi_jax.run_config import load_run_config
from zerohsi_jax.splat import Camera, save_ply

SIZE = 40


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A user's files: scene and object .ply, a camera, a 3-frame video with masks and pose
    estimates, and the config naming them (the built-in avatar, the synthetic body and prior)."""
    root = tmp_path_factory.mktemp("user")
    rng = np.random.default_rng(0)
    save_ply(root / "scene.ply", random_scene(rng, 200))
    save_ply(root / "object.ply", random_scene(rng, 30, spread=0.1))
    Camera.look_at((0, 0, -1), (0, 0, 3), fov_y_deg=55, width=SIZE, height=SIZE).save_json(root / "camera.json")
    frames = rng.integers(0, 255, (3, SIZE, SIZE, 3), dtype=np.uint8)
    write_video(root / "clip.mp4", frames, 10)
    write_video(root / "wide.mp4", rng.integers(0, 255, (3, SIZE // 2, SIZE, 3), dtype=np.uint8), 10)
    masks = np.zeros((3, SIZE, SIZE), bool)
    masks[:, 10:30, 10:20] = True
    np.savez(root / "clip_masks.npz", human=masks, object=np.roll(masks, 12, axis=2))
    np.save(root / "estimates.npy", np.zeros((3, 63), np.float32))
    (root / "not_a_ply.ply").write_bytes(b"not a ply at all")
    np.savez(root / "not_a_model.npz", weights=np.zeros(3))
    (root / "vposer.eqx").write_bytes(b"x")
    (root / "a_file").write_text("in the way")
    return root


def config(**changes) -> dict:
    """A valid config with `changes` (dotted keys) applied."""
    cfg = {
        "scene": {"ply": "scene.ply"},
        "object": {"ply": "object.ply", "translation": [0.0, 0.0, 3.0]},
        "human": {"avatar_gaussians": 600, "avatar_size": "tiny", "transl": [0.0, 0.0, 3.0]},
        "camera": "camera.json",
        "video": {"paths": ["clip.mp4"], "stride": 1, "max_frames": 3, "masks": ["clip_masks.npz"],
                  "pose_estimates": ["estimates.npy"]},
        "init_frame": {"width": SIZE, "height": SIZE},
        "reconstruct": {"camera": {"iterations": 2}, "hsi": {"iterations": 2, "root_only_iterations": 1},
                        "refine": {"iterations": 2}},
        "output": "out",
    }
    for key, value in changes.items():
        *path, last = key.split(".")
        node = cfg
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


def write_config(files, name, cfg, text=None) -> str:
    path = files / name
    path.write_text(text if text is not None else yaml.safe_dump(cfg))
    return str(path)


def run_cli(argv, capsys) -> str:
    """Run a command that must fail on the user's mistake: its one line on stderr."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    line = err.rstrip("\n").split("\n")[-1].split("\r")[-1]  # after any progress bar
    assert line.startswith(f"zerohsi-jax {argv[0]}: error: ") and err.endswith(line + "\n"), err
    assert "Traceback" not in err
    return line


# Mistakes in the config: caught by `config --check` and before any work by every command.
CONFIG_MISTAKES = {
    "negative iterations": ({"reconstruct.hsi.iterations": -5}, ["reconstruct.hsi.iterations", "0 or more"]),
    "negative learning rate": ({"reconstruct.camera.learning_rate": -1e-3},
                               ["reconstruct.camera.learning_rate", "more than 0"]),
    "NaN": ({"reconstruct.refine.contact_weight": float("nan")}, ["reconstruct.refine.contact_weight", "finite"]),
    "NaN as text": ({"reconstruct.hsi.learning_rate": "nan"}, ["reconstruct.hsi.learning_rate", "finite"]),
    "stride 0": ({"video.stride": 0}, ["video.stride", "more than 0"]),
    "negative tile capacity": ({"reconstruct.tile_capacity": -16}, ["reconstruct.tile_capacity", "more than 0"]),
    "tile size 0": ({"reconstruct.tile_size": 0}, ["reconstruct.tile_size", "more than 0"]),
    "background out of range": ({"reconstruct.background": [0, 0, 2]}, ["reconstruct.background[2]", "[0, 1]"]),
    "missing scene file": ({"scene.ply": "nope.ply"}, ["scene.ply", "nope.ply", "does not exist"]),
    "missing mask file": ({"video.masks": ["gone.npz"]}, ["video.masks[0]", "gone.npz", "does not exist"]),
    "fewer mask files than videos": ({"video.paths": ["clip.mp4", "clip.mp4"]},
                                     ["video.masks", "1 file(s) for 2 video(s)"]),
    "unknown loss term": ({"reconstruct.hsi.loss_weights": {"rgb": 1.0, "rgbb": 0.5}},
                          ["reconstruct.hsi.loss_weights.rgbb", "unknown loss term", "did you mean 'rgb'"]),
    "unknown key": ({"scene.plyy": "scene.ply"}, ["scene: unknown key 'plyy'", "did you mean 'ply'"]),
    "wrong type": ({"video.stride": "three"}, ["video.stride: expected an integer"]),
    "unknown avatar size": ({"human.avatar_size": "huge"}, ["human.avatar_size", "'tiny'"]),
    "no SAM2 and no masks": ({"video.masks": None}, ["segment.checkpoint is null"]),
}


def _config_cases():
    """Every mistake under `config --check`, `reconstruct` and `init-frame` (except the files of the
    videos, which init-frame does not read: they are made from its picture)."""
    for mistake in CONFIG_MISTAKES:
        for command in ("config", "init-frame", "reconstruct"):
            if command == "init-frame" and mistake in ("missing mask file", "no SAM2 and no masks"):
                continue
            yield pytest.param(mistake, command, id=f"{mistake.replace(' ', '-')}-{command}")


@pytest.mark.parametrize("mistake,command", list(_config_cases()))
def test_config_mistakes_are_named_by_the_check_and_by_every_command(files, capsys, mistake, command):
    changes, fragments = CONFIG_MISTAKES[mistake]
    path = write_config(files, f"{mistake.replace(' ', '_')}.yaml", config(**changes))
    argv = ["config", "--check", path] if command == "config" else [command, path]
    err = run_cli(argv, capsys)
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    if "nope.ply" not in err and "gone.npz" not in err:
        assert path in err  # the key's file
    assert not (files / "out").exists(), "a command refused before any work leaves no output folder"


def test_numbers_yaml_reads_as_text_are_the_numbers_they_mean(files, capsys):
    text = yaml.safe_dump(config(**{"reconstruct.camera.learning_rate": 0.5}))
    text = text.replace("learning_rate: 0.5", "learning_rate: 1e-3")
    assert yaml.safe_load(text)["reconstruct"]["camera"]["learning_rate"] == "1e-3"  # text to YAML 1.1
    path = write_config(files, "text_number.yaml", None, text=text)
    assert main(["config", "--check", path]) == 0
    assert "valid" in capsys.readouterr().out
    assert load_run_config(path).reconstruct.camera.learning_rate == 1e-3


def test_init_frame_needs_no_video_to_exist(files, capsys):
    path = write_config(files, "no_video_yet.yaml", config(**{"video.paths": ["to_generate.mp4"]}))
    err = run_cli(["config", "--check", path], capsys)
    assert "video.paths[0]" in err and "--for init-frame" in err
    assert main(["config", "--check", path, "--for", "init-frame"]) == 0


# Mistakes in the files a config names, and in output folders: found before the work they would spoil.
FILE_MISTAKES = {
    "bad PLY": ("init-frame", {"scene.ply": "not_a_ply.ply"}, ["not_a_ply.ply", "not a readable PLY"]),
    "bad body model": ("init-frame", {"human.smplx_model": "not_a_model.npz", "human.vposer": "vposer.eqx"},
                       ["not_a_model.npz"]),
    "wrong video size": ("reconstruct", {"video.paths": ["wide.mp4"]}, ["wide.mp4", "is 40x20", "stretch"]),
    "output is a file": ("init-frame", {"output": "a_file"}, ["a_file: is a file", "another output folder"]),
    "output under a file": ("init-frame", {"output": "a_file/out"}, ["a_file: is a file"]),
    "unwritable output": ("init-frame", {"output": "/sys/zerohsi_jax_test/out"},
                          ["/sys/zerohsi_jax_test/out: cannot write here"]),
}


@pytest.mark.parametrize("mistake", [pytest.param(k, id=k.replace(" ", "-")) for k in FILE_MISTAKES])
def test_file_and_output_mistakes_are_named(files, capsys, mistake):
    command, changes, fragments = FILE_MISTAKES[mistake]
    path = write_config(files, f"{mistake.replace(' ', '_')}.yaml", config(**changes))
    err = run_cli([command, path], capsys)
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    assert not (files / "out").exists(), "a failed command leaves no output folder it made"
    assert (files / "a_file").read_text() == "in the way"


# ------------------------------------------------------------------------------ run folders


def _finished_run(root, files, complete=True):
    """An output folder holding a (made-up) finished run of the files' config."""
    cfg = load_run_config(write_config(files, "finished.yaml", config()))
    from zerohsi_jax.run_config import run_config_to_dict, with_absolute_paths

    root.mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump(run_config_to_dict(with_absolute_paths(cfg))))
    folder = RunFolder(root / "run")
    folder.start({"seeds": 1, "frames": 3, "size": [SIZE, SIZE], "object": True, "config": "old",
                  "inputs": {"frames": "another video"}}, resume=False)
    rng = np.random.default_rng(1)
    arrays = {k: rng.normal(size=(3, n)).astype(np.float32) for k, n in (("transl", 3), ("global_orient", 3),
                                                                           ("body_pose", 63), ("betas", 10))}
    save_npz(folder.seed_dir(0) / "smplx_params.npz", **arrays)
    np.save(folder.seed_dir(0) / "object_poses.npy", np.tile(np.eye(4), (3, 1, 1)))
    np.save(folder.seed_dir(0) / "camera_viewmats.npy", np.tile(np.eye(4), (3, 1, 1)))
    if complete:
        folder.mark_complete({"seeds": 1, "frames": 3, "gender": "neutral", "num_betas": 10, "frame_rate": 10.0})
    return folder


def test_continue_refuses_an_incomplete_run_and_names_a_damaged_result(files, tmp_path, capsys):
    _finished_run(tmp_path / "a", files, complete=False)
    err = run_cli(["continue", str(tmp_path / "a")], capsys)
    assert f"{tmp_path / 'a' / 'run'}: the run is incomplete" in err and "complete.json" in err
    assert not (tmp_path / "a" / "next").exists()

    folder = _finished_run(tmp_path / "b", files)
    params = folder.seed_dir(0) / "smplx_params.npz"
    params.write_bytes(params.read_bytes()[:100])
    err = run_cli(["continue", str(tmp_path / "b")], capsys)
    assert f"{params}: damaged" in err and "zerohsi-jax reconstruct" in err
    assert not (tmp_path / "b" / "next").exists()


def test_a_busy_folder_is_refused_naming_the_holder(files, tmp_path, capsys):
    import fcntl

    path = write_config(files, "busy.yaml", config(output=str(tmp_path / "busy")))
    (tmp_path / "busy").mkdir()
    with open(tmp_path / "busy" / ".lock", "a+") as other:  # another run's handle on the lock
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.write(json.dumps({"pid": 777, "host": "gpu-box", "started": "today", "command": "reconstruct x"}))
        other.flush()
        err = run_cli(["init-frame", path], capsys)
    assert f"{tmp_path / 'busy'}: another run" in err and "pid 777 on gpu-box" in err
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == [".lock"]


def test_a_rerun_with_other_inputs_is_refused_and_leaves_the_run_as_it_was(files, tmp_path, capsys):
    """The folder holds a run of another video: the rerun names the changed inputs, and neither
    the run nor the config beside it changes."""
    _finished_run(tmp_path / "out", files)
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != ".lock"}
    path = write_config(files, "rerun.yaml", config(output=str(tmp_path / "out")))
    err = run_cli(["reconstruct", path], capsys)
    assert "run.json: this folder holds a different run" in err and "frames" in err and "--no-resume" in err
    after = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before


# ---------------------------------------------------------------------- user errors, our bugs


def test_only_user_errors_lose_their_traceback(files, capsys, monkeypatch):
    import zerohsi_jax.app

    diverged = ReconstructionDiverged("HSI fit diverged at frame 3, iteration 7: loss term(s) ['rgb'] became NaN")
    monkeypatch.setattr(zerohsi_jax.app, "reconstruct_command", lambda *a, **k: (_ for _ in ()).throw(diverged))
    path = write_config(files, "ok.yaml", config())
    err = run_cli(["reconstruct", path], capsys)
    assert "frame 3" in err and "'rgb'" in err  # a NaN in a loss: the user's learning rate or inputs
    with pytest.raises(ReconstructionDiverged):  # --debug (before or after the command) shows the traceback
        main(["--debug", "reconstruct", path])
    with pytest.raises(ReconstructionDiverged):
        main(["reconstruct", path, "--debug"])

    monkeypatch.setattr(zerohsi_jax.app, "reconstruct_command", lambda *a, **k: {}["a bug of ours"])
    with pytest.raises(KeyError):  # not the user's: the traceback stays
        main(["reconstruct", path])
    with pytest.raises(SystemExit) as exit_:
        main(["reconstruct", path, "--seeds", "0"])
    assert exit_.value.code == 2 and "--seeds: must be 1 or more" in capsys.readouterr().err


def test_the_package_file_errors_are_user_errors():
    from zerohsi_jax.avatar.io import AvatarFileError
    from zerohsi_jax.body.smplx_model import ModelFileError, ModelFileNotFoundError
    from zerohsi_jax.io.video import AspectRatioError, VideoError
    from zerohsi_jax.reconstruct.run_files import DamagedRunFileError, IncompleteRunError
    from zerohsi_jax.run_config import ConfigError
    from zerohsi_jax.splat import CameraFileError, PlyFormatError

    for cls in (AvatarFileError, ModelFileError, ModelFileNotFoundError, AspectRatioError, VideoError,
                DamagedRunFileError, IncompleteRunError, ConfigError, ReconstructionDiverged):
        assert issubclass(cls, UserError), cls
    for err in (PlyFormatError("x"), CameraFileError("x"), FileNotFoundError("x"), PermissionError("x")):
        assert is_user_error(err)
    assert not is_user_error(ValueError("x")) and not is_user_error(KeyError("x"))
