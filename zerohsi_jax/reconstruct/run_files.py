"""The run folder: one file per finished frame, a rolling resume state, and the final results.

    .lock                         held (an OS file lock) by the run writing here; names it
    run.json                      what was run: seeds, frames, image size, config, and a content hash of
                                  every input (`fingerprint`): a rerun resumes only the same problem
    frames/frame_0007.npz         stage-1/2 results of frame 7 for every seed (written when it ends)
    resume/color_net_0007.eqx     the colour nets (and, with adam_state "carry", the HSI Adam states) after
                                  frame 7; the newest two are kept when they are small, else the newest
    resume/color_net.json         the frame of the newest colour-net checkpoint
    seed_0/smplx_params.npz       refined SMPL-X parameters, keys as `smplx.SMPLX` takes them
    seed_0/smplx_params_stage2.npz
    seed_0/object_poses.npy       (T, 4, 4) object-to-world
    seed_0/camera_viewmats.npy    (T, 4, 4) world-to-camera (OpenCV axes)
    seed_0/video.mp4, losses.png  pictures of the command that ran (reference | render | overlay)
    losses.npz                    loss traces: camera, hsi (S, T-1, iterations), refine (S, iterations)
    timings.json
    complete.json                 written last, once every result above is on disk
    part-<first>-<last>/          a multi-process run: each process's share of the seeds, a run folder of its
                                  own (frames, resume state), beside the results process 0 writes above
                                  (see `shares`); each process holds its own lock, `.lock-process<i>`

The rules that keep a folder honest:
- Every file is written beside its target and renamed into place (`atomic_write`), so a file that
  exists is whole; files get the user's umask, as `open` would give them.
- One run at a time: a run holds `.lock` (released on exit, and by the OS on a crash); a second
  run into the folder is refused, naming the holder (`folder_lock`).
- A rerun resumes only the same problem: `run.json` holds a fingerprint of every input, and a
  rerun whose inputs differ is refused, naming them (`RunMismatchError`); `--no-resume`
  (`resume=False`) removes every file of the earlier run before the first write of the new one.
- `complete.json` covers everything in the folder: the results and the pictures, which the
  command writes before it (`reconstruct(..., before_complete=...)`). A run removes it, and the
  pictures, before its first write; `continue`, `view` and `export` refuse a folder without it.
- A file read back on resume is checked; a damaged one is an error naming it and the frame to
  redo from (`--redo-from N`, `redo_from=N`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import sys
from pathlib import Path

import equinox as eqx
import numpy as np

from ..errors import OutputPathError, UserError
from ..files import atomic_write, save_figure, save_json, save_npz, save_text  # noqa: F401

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked (the package targets Linux and macOS)
    fcntl = None


# --------------------------------------------------------------------------- atomic writes
# The package's one helper (zerohsi_jax.files), re-exported for the run folder's callers.


# ---------------------------------------------------------------------------------- errors


class RunFolderError(UserError):
    """A run folder that cannot be used as asked; the message names it and what to do."""


class IncompleteRunError(RunFolderError, ValueError):
    """A command needs the results of a run that has not finished."""


class RunMismatchError(RunFolderError, ValueError):
    """A rerun into a folder that holds another problem (other inputs, config or size)."""


class RunFolderBusyError(RunFolderError):
    """Another run holds the folder's lock."""


class DamagedRunFileError(RunFolderError, ValueError):
    """A file of a run folder that cannot be read back (truncated, garbled)."""


_REDO = "rerun with --redo-from {n} (redo_from={n} in Python) to fit frame {n} and the frames after it again"


def _damaged(path: Path, err: BaseException, fix: str) -> DamagedRunFileError:
    reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
    return DamagedRunFileError(f"{path}: damaged, cannot be read back ({reason}); {fix}")


def _read_json(path: Path, fix: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise _damaged(path, err, fix) from err
    if not isinstance(data, dict):
        raise _damaged(path, ValueError(f"expected a JSON object, got {type(data).__name__}"), fix)
    return data


# --------------------------------------------------------------------------- fingerprints

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def fingerprint(tree) -> str:
    """A content hash of a pytree (arrays, Equinox modules, dicts, plain values): every array
    leaf's dtype, shape and bytes, every other leaf's value (or, for a function, its name), and
    the tree's structure. The same inputs give the same hash in any process; any changed number
    gives another. Cheap next to a fit: BLAKE2b reads about a gigabyte a second."""
    import jax

    digest = hashlib.blake2b(digest_size=16)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    # Static fields live in the structure; object addresses in it differ between processes.
    digest.update(_ADDRESS.sub("", str(treedef)).encode())
    for path, leaf in leaves:
        digest.update(jax.tree_util.keystr(path).encode())
        if isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
            a = np.ascontiguousarray(np.asarray(leaf))
            digest.update(f"{a.dtype.str}{a.shape}".encode())
            digest.update(memoryview(a.reshape(-1).view(np.uint8)))
        elif isinstance(leaf, (bool, int, float, complex, str, bytes, type(None))):
            digest.update(repr(leaf).encode())
        else:
            name = getattr(leaf, "__qualname__", "")
            digest.update(f"{type(leaf).__module__}.{type(leaf).__qualname__}:{name}".encode())
    return digest.hexdigest()


RUN_CONDITIONS = ("devices",)
"""Manifest entries that say how a run ran, not what it computes: recorded, never compared (a run
started on one device resumes on four; the results do not depend on the count)."""


def manifest_changes(old: dict, new: dict) -> list[str]:
    """What differs between two run manifests: top-level entries (seeds, frames, size, config...)
    and, by name, the inputs whose fingerprints differ; `RUN_CONDITIONS` are left out."""
    changed = [k for k in sorted((set(old) | set(new)) - {"inputs", *RUN_CONDITIONS}) if old.get(k) != new.get(k)]
    old_in, new_in = old.get("inputs", {}), new.get("inputs", {})
    changed += [k for k in sorted(set(old_in) | set(new_in)) if old_in.get(k) != new_in.get(k)]
    return list(dict.fromkeys(changed))  # 'config' may be both an entry and an input


# ------------------------------------------------------------------------------------ locks

LOCK_NAME = ".lock"


def _lock_name() -> str:
    """`.lock`, or in a multi-process run `.lock-process<i>`: the processes of one run share its
    output folder (each writes its own part), so each holds a lock of its own there."""
    from ..devices import processes

    here = processes()
    return LOCK_NAME if here.count == 1 else f"{LOCK_NAME}-process{here.index}"
_HELD: dict[str, list] = {}  # lock file (resolved) -> [open file, depth]: a process may nest its own locks


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return (f"pid {info.get('pid')} on {info.get('host')}, since {info.get('started')}: "
                f"{info.get('command')}")
    except ValueError:
        return "a process that left no record"


@contextlib.contextmanager
def folder_lock(folder, command: str | None = None):
    """Hold `folder`'s lock (an OS file lock on `folder/.lock`) for the block: one run writes into
    a folder at a time. The lock goes with the process (a crash or kill releases it); the file
    records the holder (pid, host, start time, command) for the error a second run gets.
    Re-entrant within a process (a command that runs another into the same folder)."""
    folder = Path(folder)
    path = folder / _lock_name()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        key = str(path.resolve())
        if key in _HELD:
            _HELD[key][1] += 1
            try:
                yield path
            finally:
                _HELD[key][1] -= 1
            return
        handle = open(path, "a+")  # noqa: SIM115 (held open for the block: closing it releases the lock)
    except OSError as err:
        raise OutputPathError(f"{folder}: cannot write here ({err.strerror or err}); choose another output folder") \
            from err
    if fcntl is not None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = _describe_holder(handle.read())
            handle.close()
            raise RunFolderBusyError(
                f"{folder}: another run is writing into this folder ({holder}); wait for it to end, or "
                "choose another output folder"
            ) from None
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": command or " ".join(sys.argv),
    }
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(record))
    handle.flush()
    _HELD[key] = [handle, 1]
    try:
        yield path
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            handle.truncate(0)  # the record described the holder; nobody holds it now
        handle.close()


# ------------------------------------------------------------------------- output folders


def check_output_folder(folder) -> None:
    """Refuse, before any work, an output folder that cannot be made: a file in its place (or in
    the place of a folder above it)."""
    folder = Path(folder)
    for p in (folder, *folder.parents):
        if p.exists():
            if not p.is_dir():
                where = "the output folder" if p == folder else f"a folder above the output folder {folder}"
                raise OutputPathError(f"{p}: is a file, but {where} goes there; choose another output folder")
            return


def _holds_frames(folder: Path) -> bool:
    return any(folder.glob("**/frames/frame_*.npz"))


@contextlib.contextmanager
def command_output(folder, command: str | None = None):
    """A command's output folder for the block: checked, created and locked. When the command
    fails, a folder it created is removed again unless it holds finished frames (a run to resume):
    a failed command leaves no output folder behind."""
    folder = Path(folder)
    check_output_folder(folder)
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    created = missing[-1] if missing else None  # the topmost folder this command makes
    try:
        with folder_lock(folder, command):
            yield folder
    except BaseException:
        if created is not None and created.exists() and not _holds_frames(created):
            shutil.rmtree(created, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------ run folder


class RunFolder:
    MANIFEST = "run.json"
    RESULT_FILES = ("smplx_params.npz", "smplx_params_stage2.npz", "object_poses.npy", "camera_viewmats.npy")
    PICTURE_FILES = ("video.mp4", "losses.png")
    """Written by the command after the results, before `complete.json` (which covers them)."""

    def __init__(self, root):
        self.root = Path(root)
        self.keep_checkpoints = 2
        """Colour-net checkpoints kept (the pipeline keeps one when they are large)."""

    def frame_path(self, t: int) -> Path:
        return self.root / "frames" / f"frame_{t:04d}.npz"

    def seed_dir(self, s: int) -> Path:
        return self.root / f"seed_{s}"

    def checkpoint_path(self, t: int) -> Path:
        return self.root / "resume" / f"color_net_{t:04d}.eqx"

    def lock(self, command: str | None = None):
        """The folder's lock as a context manager (`folder_lock`)."""
        return folder_lock(self.root, command)

    # ------------------------------------------------------------------------- identity of a run
    def read_manifest(self) -> dict | None:
        path = self.root / self.MANIFEST
        if not path.exists():
            return None
        return _read_json(path, "it records which problem this folder holds, so the run cannot resume: rerun "
                                "with --no-resume (resume=False in Python) to start afresh")

    def start(self, manifest: dict, resume: bool, *, redo_from: int | None = None) -> None:
        """Ready the folder for a run of `manifest`, before the run writes anything.

        Resuming, the folder's earlier frames are kept only when it holds the same problem (else
        `RunMismatchError` naming what changed); `redo_from` N drops frames N and later. A fresh
        run (`resume=False`) removes every file of an earlier run first. Either way the folder is
        incomplete (no `complete.json`, no pictures) until `mark_complete`."""
        if redo_from is not None and not resume:
            raise RunFolderError("--redo-from redoes part of a run it resumes; drop --no-resume (resume=False), "
                                 "which redoes every frame anyway")
        old = self.read_manifest() if resume else None
        if old is None:
            self._clear_all()
        else:
            changed = manifest_changes(old, manifest)
            if changed:
                raise RunMismatchError(self._mismatch_message(old, changed))
            if redo_from is not None:
                self.discard_from(redo_from)
        self.begin_writing()
        save_json(self.root / self.MANIFEST, manifest)

    def check_or_write_manifest(self, manifest: dict, resume: bool) -> None:
        """`start` under its former name."""
        self.start(manifest, resume)

    def _mismatch_message(self, old: dict, changed: list[str]) -> str:
        path = self.root / self.MANIFEST
        if "inputs" not in old:
            what = "it records no fingerprints of its inputs (an older version wrote it), so it may be another problem"
        else:
            what = "its inputs differ in " + ", ".join(changed)
        return (f"{path}: this folder holds a different run: {what}. A rerun resumes only the same problem; to start "
                "afresh, rerun with --no-resume (resume=False in Python), which deletes this folder's results, or "
                "choose another output folder")

    # ------------------------------------------------------------------------------ results
    def _clear_all(self) -> None:
        """Remove every file of an earlier run, so none can pass for the new run's."""
        for stale in self.root.glob("frames/frame_*.npz"):
            stale.unlink()
        for stale in self.root.glob("resume/color_net*"):
            stale.unlink()
        for seed_dir in self.root.glob("seed_*"):
            for name in self.RESULT_FILES + self.PICTURE_FILES:
                (seed_dir / name).unlink(missing_ok=True)
        for name in ("losses.npz", "timings.json", "complete.json"):
            self.root.joinpath(name).unlink(missing_ok=True)

    def begin_writing(self) -> None:
        """Called before a run writes anything: until `mark_complete`, the folder is incomplete,
        and no picture of an earlier completion stands beside the new run's files."""
        self.root.joinpath("complete.json").unlink(missing_ok=True)
        for seed_dir in self.root.glob("seed_*"):
            for name in self.PICTURE_FILES:
                (seed_dir / name).unlink(missing_ok=True)

    def mark_complete(self, summary: dict) -> None:
        save_json(self.root / "complete.json", summary)

    def is_complete(self) -> bool:
        return (self.root / "complete.json").exists()

    def completion(self) -> dict:
        """`complete.json` of a finished run; an error naming the folder when the run is unfinished."""
        path = self.root / "complete.json"
        if not path.exists():
            raise IncompleteRunError(
                f"{self.root}: the run is incomplete (no complete.json: it was interrupted or is still "
                "running); rerun the same command to resume it"
            )
        return _read_json(path, "rerun the command that made the run: it resumes and writes the results again")

    # ------------------------------------------------------------------------------- frames
    def write_frame(self, t: int, arrays: dict) -> None:
        save_npz(self.frame_path(t), **{k: np.asarray(v) for k, v in arrays.items()})

    def read_frame(self, t: int, keys=()) -> dict:
        """Frame t's arrays; `DamagedRunFileError` naming the file and the frame to redo from when
        it cannot be read or lacks one of `keys`."""
        path = self.frame_path(t)
        try:
            with np.load(path) as f:
                arrays = {k: f[k] for k in f.files}
            missing = [k for k in keys if k not in arrays]
            if missing:
                raise KeyError(f"no arrays {missing}")
        except Exception as err:  # noqa: BLE001 (whatever a damaged file raises: BadZipFile, EOFError, ...)
            raise _damaged(path, err, _REDO.format(n=t)) from err
        return arrays

    def write_color_state(self, t: int, color) -> None:
        atomic_write(self.checkpoint_path(t), lambda tmp: eqx.tree_serialise_leaves(tmp, color))
        save_json(self.root / "resume" / "color_net.json", {"frame": t})
        for old in self._checkpoints()[:-max(1, self.keep_checkpoints)]:
            self.checkpoint_path(old).unlink(missing_ok=True)

    def _checkpoints(self) -> list[int]:
        """Frames with a colour-net checkpoint on disk, oldest first."""
        found = (re.fullmatch(r"color_net_(\d+)\.eqx", p.name) for p in self.root.glob("resume/color_net_*.eqx"))
        return sorted(int(m.group(1)) for m in found if m)

    def resumable_frame(self) -> int | None:
        """The newest frame whose results and colour nets are both on disk (frames 0..t all exist)."""
        meta = self.root / "resume" / "color_net.json"
        if not meta.exists():
            return None
        # Redoing from after the newest checkpoint on disk rewrites this file from the checkpoints.
        newest = self._checkpoints()
        fix = _REDO.format(n=newest[-1] + 1 if newest else 1)
        frame = _read_json(meta, fix).get("frame")
        if not isinstance(frame, int) or frame < 0:
            raise _damaged(meta, ValueError(f"'frame' is {frame!r}"), fix)
        if not self.checkpoint_path(frame).exists():
            return None
        if not all(self.frame_path(i).exists() for i in range(frame + 1)):
            return None
        return frame

    def read_color_state(self, t: int, like):
        """The colour nets (and Adam states) saved after frame t, in the structure of `like`."""
        path = self.checkpoint_path(t)
        try:
            return eqx.tree_deserialise_leaves(path, like)
        except Exception as err:  # noqa: BLE001 (a truncated file raises whatever the reader meets)
            raise _damaged(path, err, _REDO.format(n=t)) from err

    def discard_from(self, n: int) -> int | None:
        """Forget frames n and later, and the checkpoints after frame n-1: a resume then fits frame
        n and after again, from the newest checkpoint left (or from frame 0). Returns that
        checkpoint's frame, or None."""
        if n < 1:
            raise RunFolderError(f"--redo-from {n}: frame 0 is the initial state; give a frame of 1 or more")
        for path in self.root.glob("frames/frame_*.npz"):
            if int(path.stem.split("_")[1]) >= n:
                path.unlink()
        for t in self._checkpoints():
            if t >= n:
                self.checkpoint_path(t).unlink()
        left = self._checkpoints()
        meta = self.root / "resume" / "color_net.json"
        if left:
            save_json(meta, {"frame": left[-1]})
            return left[-1]
        meta.unlink(missing_ok=True)
        return None
