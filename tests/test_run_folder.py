"""The run folder's rules, file by file, without running a fit: atomic writes with the user's
umask, one run per folder (an OS lock), fingerprints, a fresh run clearing the old one, the
completion mark covering the pictures, damaged files named with the frame to redo from, and
output folders checked first and removed after a failure."""

import json
import os
import subprocess
import sys
import textwrap

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

from zerohsi_jax.errors import OutputPathError, UserError, is_user_error
from zerohsi_jax.reconstruct.run_files import (
    DamagedRunFileError,
    IncompleteRunError,
    RunFolder,
    RunFolderBusyError,
    RunMismatchError,
    atomic_write,
    command_output,
    fingerprint,
    folder_lock,
    manifest_changes,
    save_json,
    save_npz,
)

MANIFEST = {"seeds": 1, "frames": 3, "size": [40, 40], "object": True, "config": "cfg",
            "inputs": {"frames": "a", "scene": "b", "avatar": "c"}}


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = save_json(tmp_path / "a.json", {"x": 1})
        npz = save_npz(tmp_path / "b.npz", x=np.zeros(2))
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == mode and (npz.stat().st_mode & 0o777) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.npz"]  # no part file left


def test_a_failed_atomic_write_leaves_the_old_file_and_no_part(tmp_path):
    path = save_json(tmp_path / "a.json", {"x": 1})

    def fail(tmp):
        open(tmp, "w").write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fail)
    assert json.loads(path.read_text()) == {"x": 1} and [p.name for p in tmp_path.iterdir()] == ["a.json"]


# ------------------------------------------------------------------------------------ locks


def test_a_second_holder_is_refused_naming_the_first(tmp_path):
    import fcntl

    folder = RunFolder(tmp_path / "run")
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / ".lock", "a+") as other:  # a second open handle: another run's lock
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.write(json.dumps({"pid": 4242, "host": "elsewhere", "started": "2025-01-01T10:00:00",
                                "command": "zerohsi-jax reconstruct run.yaml"}))
        other.flush()
        with pytest.raises(RunFolderBusyError) as err, folder.lock("test"):
            pass
        message = str(err.value)
        assert str(tmp_path / "run") in message and "pid 4242 on elsewhere" in message
        assert "zerohsi-jax reconstruct run.yaml" in message and is_user_error(err.value)
    with folder.lock("test"):  # the other handle is closed: free again
        pass


def test_the_lock_is_released_on_exit_on_error_and_when_the_holder_dies(tmp_path):
    folder = tmp_path / "run"
    with pytest.raises(RuntimeError), folder_lock(folder, "first"):
        with folder_lock(folder, "nested"):  # re-entrant within a process
            pass
        raise RuntimeError("a bug")
    with folder_lock(folder, "second"):
        assert json.loads((folder / ".lock").read_text())["command"] == "second"
    assert (folder / ".lock").read_text() == ""  # nobody holds it

    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import time
            from zerohsi_jax.reconstruct.run_files import folder_lock
            with folder_lock({str(folder)!r}, "the other process"):
                print("locked", flush=True)
                time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusyError, match=f"pid {holder.pid} on .*the other process"), \
                folder_lock(folder, "third"):
            pass
    finally:
        holder.kill()  # a crash: the OS releases its lock
        holder.wait()
    with folder_lock(folder, "fourth"):
        pass


# ----------------------------------------------------------------------------- fingerprints


class _Net(eqx.Module):
    weight: jnp.ndarray
    activation: object
    size: int = eqx.field(static=True)


def test_fingerprints_see_content_not_identity():
    a = {"net": _Net(jnp.arange(6.0), jnp.tanh, 3), "frames": np.ones((2, 4, 4, 3), np.float32), "none": None}
    b = {"net": _Net(jnp.arange(6.0), jnp.tanh, 3), "frames": np.ones((2, 4, 4, 3), np.float32), "none": None}
    assert fingerprint(a) == fingerprint(b)
    changed = {**b, "frames": b["frames"].copy()}
    changed["frames"][1, 2, 3, 0] = 0.5
    assert fingerprint(changed) != fingerprint(a)
    assert fingerprint({**b, "net": _Net(jnp.arange(6.0), jnp.tanh, 4)}) != fingerprint(a)  # a static field
    assert fingerprint({**b, "net": _Net(jnp.arange(6.0), jnp.sin, 3)}) != fingerprint(a)  # another function
    assert fingerprint(np.zeros(3, np.float32)) != fingerprint(np.zeros(3, np.float64))
    assert manifest_changes(MANIFEST, {**MANIFEST, "frames": 4, "inputs": {**MANIFEST["inputs"], "scene": "x"}}) \
        == ["frames", "scene"]


# ---------------------------------------------------------------------- identity and clearing


def _old_run(root, complete=True):
    """A folder holding a finished run: frames, checkpoints, results, pictures."""
    folder = RunFolder(root)
    folder.start(MANIFEST, resume=False)
    for t in range(3):
        folder.write_frame(t, {"viewmat": np.eye(4)})
        folder.write_color_state(t, {"w": jnp.full(3, float(t))})
    folder.seed_dir(0).mkdir()
    for name in RunFolder.RESULT_FILES + RunFolder.PICTURE_FILES:
        (folder.seed_dir(0) / name).write_bytes(b"old")
    save_json(root / "losses.npz", {})
    if complete:
        folder.mark_complete({"seeds": 1, "frames": 3})
    return folder


def test_a_rerun_resumes_only_the_same_problem(tmp_path):
    folder = _old_run(tmp_path)
    other = {**MANIFEST, "inputs": {**MANIFEST["inputs"], "frames": "another video", "scene": "another scene"}}
    with pytest.raises(RunMismatchError) as err:
        folder.start(other, resume=True)
    message = str(err.value)
    assert "run.json" in message and "frames, scene" in message and "--no-resume" in message
    assert folder.is_complete() and folder.resumable_frame() == 2  # refused before touching anything

    folder.start(MANIFEST, resume=True)  # the same problem resumes: frames kept, completion withdrawn
    assert folder.resumable_frame() == 2 and not folder.is_complete()
    assert not (folder.seed_dir(0) / "video.mp4").exists(), "the pictures belonged to the completion"
    with pytest.raises(IncompleteRunError, match="incomplete"):
        folder.completion()


def test_a_fresh_run_clears_every_file_of_the_old_one_first(tmp_path):
    folder = _old_run(tmp_path)
    folder.start({**MANIFEST, "frames": 5}, resume=False)
    left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert left == ["run.json"], left
    assert json.loads((tmp_path / "run.json").read_text())["frames"] == 5


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    folder = _old_run(tmp_path)
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == [
        "color_net.json", "color_net_0001.eqx", "color_net_0002.eqx"]
    folder.keep_checkpoints = 1
    folder.write_color_state(3, {"w": jnp.zeros(3)})
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == ["color_net.json", "color_net_0003.eqx"]


# --------------------------------------------------------------------------------- damage


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize(
    "damage,name,redo",
    [
        (lambda root: _truncate(root / "frames" / "frame_0001.npz"), "frames/frame_0001.npz", 1),
        (lambda root: (root / "frames" / "frame_0002.npz").write_bytes(b""), "frames/frame_0002.npz", 2),
        (lambda root: _truncate(root / "resume" / "color_net_0002.eqx"), "resume/color_net_0002.eqx", 2),
        (lambda root: (root / "resume" / "color_net.json").write_text("{frame: 2"), "resume/color_net.json", 3),
    ],
    ids=["truncated-frame", "empty-frame", "truncated-checkpoint", "garbled-json"],
)
def test_damaged_files_are_named_with_the_frame_to_redo_from(tmp_path, damage, name, redo):
    folder = _old_run(tmp_path, complete=False)
    damage(tmp_path)
    with pytest.raises(DamagedRunFileError) as err:
        t = folder.resumable_frame()
        folder.read_color_state(t, {"w": jnp.zeros(3)})
        for i in range(t + 1):
            folder.read_frame(i, ("viewmat",))
    message = str(err.value)
    assert str(tmp_path / name) in message and f"--redo-from {redo}" in message, message
    assert isinstance(err.value, UserError)
    # What the message offers works: the damaged frame and what follows it are dropped, and the
    # resume starts from an intact checkpoint before it (or, with none left, from frame 0).
    folder.start(MANIFEST, resume=True, redo_from=redo)
    t = folder.resumable_frame()
    assert t == {1: None, 2: 1, 3: 2}[redo]
    if t is not None:
        np.testing.assert_array_equal(folder.read_color_state(t, {"w": jnp.zeros(3)})["w"], np.full(3, float(t)))
        assert all(folder.read_frame(i, ("viewmat",)) for i in range(t + 1))
    assert not any(folder.frame_path(i).exists() for i in range(redo, 3))


def test_a_frame_without_its_arrays_and_garbled_manifests_are_named(tmp_path):
    folder = _old_run(tmp_path, complete=False)
    with pytest.raises(DamagedRunFileError, match=r"frame_0001.npz: .*'object_depth0'.*--redo-from 1"):
        folder.read_frame(1, ("viewmat", "object_depth0"))
    (tmp_path / "run.json").write_text('{"seeds": 1,')
    with pytest.raises(DamagedRunFileError, match=r"run.json: damaged.*--no-resume"):
        folder.start(MANIFEST, resume=True)
    folder.start(MANIFEST, resume=False)  # what that message offers
    (tmp_path / "complete.json").write_text("[1, 2")
    with pytest.raises(DamagedRunFileError, match=r"complete.json: damaged.*rerun the command"):
        folder.completion()


# ---------------------------------------------------------------------------- output folders


def test_output_folders_are_checked_first_and_removed_after_a_failure(tmp_path):
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file", tmp_path / "file" / "out"):
        with pytest.raises(OutputPathError, match=f"{tmp_path / 'file'}: is a file"), command_output(bad):
            pytest.fail("the block must not run")
    unwritable = "/sys/zerohsi_jax_test/out"  # a folder nobody (not even root) can create
    with pytest.raises(OutputPathError, match="/sys/zerohsi_jax_test/out: cannot write here"), \
            command_output(unwritable):
        pytest.fail("the block must not run")

    with pytest.raises(RuntimeError), command_output(tmp_path / "new" / "out") as out:
        (out / "config.yaml").write_text("x")
        raise RuntimeError("the command failed")
    assert not (tmp_path / "new").exists()
    with pytest.raises(RuntimeError), command_output(tmp_path / "kept") as out:
        RunFolder(out / "run").write_frame(0, {"x": np.zeros(1)})
        raise RuntimeError("failed after a frame: the frames are a run to resume")
    assert (tmp_path / "kept" / "run" / "frames" / "frame_0000.npz").exists()
    (tmp_path / "existing").mkdir()
    with pytest.raises(RuntimeError), command_output(tmp_path / "existing"):
        raise RuntimeError("x")
    assert (tmp_path / "existing").is_dir()
