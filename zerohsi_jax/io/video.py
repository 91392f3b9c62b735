"""Reference videos in and result videos out.

The generated HSI video is the fitting target: it is resampled in time (the paper keeps 51 of
153 frames, every third) and resized to the render resolution, and the camera's intrinsics are
scaled to that resolution. A video whose aspect ratio differs from the camera's is an error:
stretching it would silently distort every photometric loss.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
from jaxtyping import UInt8
from tqdm.auto import tqdm

from ..errors import UserError
from ..files import atomic_write
from ..splat.camera import Camera

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ASPECT_RTOL = 0.01
"""Relative aspect-ratio tolerance: 1920x1080 vs 854x480 (0.1 %) passes, 4:3 vs 16:9 does not."""

_REENCODE_HINT = "re-encode it, e.g. `ffmpeg -i INPUT -c:v libx264 -pix_fmt yuv420p OUTPUT.mp4`"


class VideoError(UserError, ValueError):
    """A video or image folder that cannot be used as it is (the message names the file and the fix)."""


class AspectRatioError(VideoError):
    """The video's aspect ratio differs from the camera's."""


class VideoInfo(NamedTuple):
    path: Path
    width: int
    height: int
    fps: float | None
    """Frames per second as stored; None for an image folder."""
    num_frames: int | None
    """Exact for an image folder, an estimate (duration x fps) for a video file, None if unknown."""


# ---------------------------------------------------------------------------------------- reading


def natural_sort_key(name: str) -> tuple:
    """Sort key that orders embedded numbers by value: 2.jpg before 10.jpg."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


def list_image_frames(folder: str | os.PathLike) -> list[Path]:
    """The png/jpg files of `folder` in natural order (other files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise VideoError(
            f"image folder {folder} holds no frames: expected files named like 0.jpg, 1.jpg, ... "
            f"with suffix {'/'.join(IMAGE_SUFFIXES)}"
        )
    return sorted(files, key=lambda p: natural_sort_key(p.name))


def _read_image_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise VideoError(f"cannot read image {path}: not a readable png/jpg file")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _check_input_path(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"video {path} does not exist")
    if path.is_file() and path.suffix.lower() not in VIDEO_SUFFIXES:
        raise VideoError(
            f"{path}: unsupported video suffix {path.suffix!r}; give a {'/'.join(VIDEO_SUFFIXES)} file "
            "or a folder of png/jpg frames"
        )


@contextlib.contextmanager
def _spawning_ffmpeg():
    """Silence JAX's warning about os.fork() in a multithreaded process while ffmpeg starts: the
    child process execs ffmpeg straight away and runs no Python, so the deadlock it warns of cannot occur."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
        yield


def _ffmpeg_error_summary(err: Exception) -> str:
    # imageio-ffmpeg attaches ffmpeg's whole banner; the last lines carry the actual reason.
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return " | ".join(lines[-2:]) if lines else type(err).__name__


def _open_ffmpeg_reader(path: Path):
    """An imageio-ffmpeg frame generator with its metadata already read."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    try:
        with _spawning_ffmpeg():
            meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as err:
        reader.close()
        raise VideoError(
            f"cannot decode video {path} ({_ffmpeg_error_summary(err)}): the file is damaged or its codec "
            f"is not supported by ffmpeg; check that it plays, or {_REENCODE_HINT}"
        ) from None
    return reader, meta


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Size, frame rate and frame count of a video file or image folder, without decoding it all."""
    path = Path(path)
    _check_input_path(path)
    if path.is_dir():
        files = list_image_frames(path)
        first = _read_image_rgb(files[0])
        return VideoInfo(path, first.shape[1], first.shape[0], None, len(files))
    reader, meta = _open_ffmpeg_reader(path)
    reader.close()
    width, height = meta["size"]
    fps = float(meta["fps"]) if meta.get("fps") else None
    duration = meta.get("duration")
    num_frames = int(round(duration * fps)) if (duration and fps) else None
    return VideoInfo(path, int(width), int(height), fps, num_frames)


def _resize(frame: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or (frame.shape[1], frame.shape[0]) == tuple(size):
        return frame
    width, height = size
    shrinking = width <= frame.shape[1] and height <= frame.shape[0]
    # Area averaging is the alias-free choice when shrinking; it degenerates to nearest when enlarging.
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(frame, (int(width), int(height)), interpolation=interpolation)


def read_video(
    path: str | os.PathLike,
    *,
    stride: int = 3,
    max_frames: int | None = None,
    size: tuple[int, int] | None = None,
    min_frames: int = 1,
    folder_fps: float = 30.0,
    progress: bool = True,
) -> tuple[UInt8[np.ndarray, "T H W 3"], float]:
    """Frames 0, stride, 2 stride, ... of a video file or image folder, as RGB uint8.

    `size` = (width, height) resizes every kept frame (area interpolation when shrinking); its
    aspect ratio must match the source's (`AspectRatioError` otherwise). `max_frames` caps the
    number of kept frames; fewer than `min_frames` is an error. Returns the frames and the frame
    rate of the kept frames (source fps / stride; an image folder counts as `folder_fps`)."""
    path = Path(path)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    info = probe_video(path)
    if size is not None:
        size = (int(size[0]), int(size[1]))
        check_aspect_ratio((info.width, info.height), size, source=str(path), target="the requested size")
    estimate = None if info.num_frames is None else -(-info.num_frames // stride)
    if estimate is not None and max_frames is not None:
        estimate = min(estimate, max_frames)
    bar = tqdm(total=estimate, desc=f"reading {path.name}", unit="frame", disable=not progress, leave=False)

    kept: list[np.ndarray] = []
    total_seen = 0
    try:
        if path.is_dir():
            files = list_image_frames(path)
            for index in range(0, len(files), stride):
                image = _read_image_rgb(files[index])
                if image.shape[:2] != (info.height, info.width):
                    raise VideoError(
                        f"{files[index]} is {image.shape[1]}x{image.shape[0]}, but {files[0].name} is "
                        f"{info.width}x{info.height}: all frames of {path} must have one size"
                    )
                kept.append(_resize(image, size))
                bar.update(1)
                if max_frames is not None and len(kept) >= max_frames:
                    break
            total_seen = len(files)
            source_fps = folder_fps
        else:
            reader, meta = _open_ffmpeg_reader(path)
            width, height = meta["size"]
            try:
                for index, raw in enumerate(reader):
                    total_seen = index + 1
                    if index % stride:
                        continue
                    frame = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
                    kept.append(_resize(frame, size))
                    bar.update(1)
                    if max_frames is not None and len(kept) >= max_frames:
                        break
            except (OSError, RuntimeError) as err:
                raise VideoError(
                    f"decoding {path} failed after {total_seen} frames ({_ffmpeg_error_summary(err)}); "
                    f"{_REENCODE_HINT}"
                ) from None
            finally:
                reader.close()  # stops ffmpeg when we leave early (max_frames)
            source_fps = info.fps if info.fps else folder_fps
    finally:
        bar.close()

    if len(kept) < max(min_frames, 1):
        raise VideoError(
            f"{path}: {len(kept)} frame(s) after keeping every {stride}th of {total_seen}, but at least "
            f"{max(min_frames, 1)} are needed; use a longer video or a smaller stride"
        )
    return np.stack(kept), float(source_fps) / stride


# --------------------------------------------------------------------------- video <-> camera


def check_aspect_ratio(
    source_size: tuple[int, int],
    target_size: tuple[int, int],
    *,
    source: str = "video",
    target: str = "the camera",
    rtol: float = ASPECT_RTOL,
) -> None:
    """Raise `AspectRatioError` when width/height of the two sizes differ by more than `rtol`."""
    (sw, sh), (tw, th) = source_size, target_size
    if min(sw, sh, tw, th) <= 0:
        raise ValueError(f"sizes must be positive, got {sw}x{sh} and {tw}x{th}")
    source_aspect, target_aspect = sw / sh, tw / th
    if abs(source_aspect - target_aspect) > rtol * target_aspect:
        raise AspectRatioError(
            f"{source} is {sw}x{sh} (aspect {source_aspect:.4f}) but {target} is {tw}x{th} "
            f"(aspect {target_aspect:.4f}); resizing would stretch the picture. Crop the video to "
            f"{target_aspect:.4f} (e.g. `ffmpeg -i IN -vf crop=W:H OUT.mp4`) or set the camera's width "
            f"and height (with its intrinsics) to the video's aspect"
        )


def fit_video_to_camera(
    video_size: tuple[int, int],
    camera: Camera,
    *,
    render_size: tuple[int, int] | None = None,
    source: str = "video",
    rtol: float = ASPECT_RTOL,
) -> Camera:
    """The camera at the resolution the video will be compared at.

    Checks that the video (`video_size` = (width, height)) has the camera's aspect ratio, then
    returns `camera.resized(*render_size)` (the video's own size when `render_size` is None), the
    intrinsics scaled per axis. Frames should then be read with `size=(camera.width, camera.height)`."""
    check_aspect_ratio(
        video_size, (camera.width, camera.height), source=source, target="the camera", rtol=rtol
    )
    width, height = render_size if render_size is not None else video_size
    check_aspect_ratio(
        (width, height),
        (camera.width, camera.height),
        source="the render size",
        target="the camera",
        rtol=rtol,
    )
    return camera.resized(int(width), int(height))


def load_video_for_camera(
    path: str | os.PathLike,
    camera: Camera,
    *,
    stride: int = 3,
    max_frames: int | None = None,
    render_size: tuple[int, int] | None = None,
    min_frames: int = 1,
    progress: bool = True,
) -> tuple[UInt8[np.ndarray, "T H W 3"], float, Camera]:
    """Read a reference video for `camera`: (frames at the render size, fps, camera at that size).

    `render_size` defaults to the camera's own size, so the video is resized to what the camera renders."""
    info = probe_video(path)
    if render_size is None:
        render_size = (camera.width, camera.height)
    fitted = fit_video_to_camera((info.width, info.height), camera, render_size=render_size, source=str(path))
    frames, fps = read_video(
        path,
        stride=stride,
        max_frames=max_frames,
        size=(fitted.width, fitted.height),
        min_frames=min_frames,
        progress=progress,
    )
    return frames, fps, fitted


# ---------------------------------------------------------------------------------------- writing


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) from uint8, bool or float in [0, 1] images, grey (H, W) or (H, W, 1) included."""
    image = np.asarray(image)
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif image.dtype != np.uint8:
        image = np.clip(np.rint(image.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {image.shape}")
    return image[..., :3]


@functools.cache
def _ffmpeg_encoders() -> frozenset[str]:
    import imageio_ffmpeg

    try:
        with _spawning_ffmpeg():
            out = subprocess.run(
                [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-encoders"],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(
        line.split()[1] for line in out.splitlines() if len(line.split()) > 1 and line.startswith(" V")
    )


def _video_codec(suffix: str) -> tuple[str, list[str]]:
    encoders = _ffmpeg_encoders()
    if suffix == ".webm":
        if "libvpx-vp9" in encoders:
            return "libvpx-vp9", ["-crf", "30", "-b:v", "0"]
        return "libvpx", ["-crf", "10", "-b:v", "1M"]
    if "libx264" in encoders:
        return "libx264", ["-crf", "18"]
    return "mpeg4", ["-q:v", "3"]  # every ffmpeg build has it; plays everywhere, just larger


def write_video(path: str | os.PathLike, frames: Iterable[np.ndarray] | np.ndarray, fps: float) -> Path:
    """Encode RGB frames (uint8, bool or float in [0, 1]) to an mp4 (H.264 when available, else
    MPEG-4) or webm (VP9), yuv420p. Odd sizes get their last row/column repeated, since yuv420p
    needs even sizes. The file appears only when complete (written aside, then renamed)."""
    import imageio_ffmpeg

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".mov", ".mkv", ".m4v", ".webm"):
        raise ValueError(f"{path}: write_video writes .mp4/.mov/.mkv/.m4v/.webm, not {suffix!r}")
    if not fps > 0:
        raise ValueError(f"{path}: fps must be positive, got {fps}")
    codec, params = _video_codec(suffix)

    def encode(tmp: str):
        writer = None
        size = None
        count = 0
        try:
            for frame in frames:
                frame = to_uint8(frame)
                if size is None:
                    size = frame.shape[:2]
                    padded = (size[0] + size[0] % 2, size[1] + size[1] % 2)
                    writer = imageio_ffmpeg.write_frames(
                        tmp,
                        (padded[1], padded[0]),
                        fps=float(fps),
                        codec=codec,
                        quality=None,
                        pix_fmt_out="yuv420p",
                        macro_block_size=1,
                        output_params=params,
                        ffmpeg_log_level="error",
                    )
                    with _spawning_ffmpeg():
                        writer.send(None)
                elif frame.shape[:2] != size:
                    raise ValueError(
                        f"{path}: frame {count} is {frame.shape[1]}x{frame.shape[0]}, the first was "
                        f"{size[1]}x{size[0]}"
                    )
                if frame.shape[0] % 2 or frame.shape[1] % 2:
                    frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge")
                writer.send(np.ascontiguousarray(frame))
                count += 1
            if writer is None:
                raise ValueError(f"{path}: no frames to write")
            writer.close()
            writer = None
        finally:
            if writer is not None:
                writer.close()

    return atomic_write(path, encode)


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write an RGB image (uint8, bool or float in [0, 1]) as png/jpg; the file appears only when complete."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise ValueError(f"{path}: write_image writes {'/'.join(IMAGE_SUFFIXES)}, not {path.suffix!r}")
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix.lower() in (".jpg", ".jpeg") else []

    def encode(tmp: str):
        if not cv2.imwrite(tmp, cv2.cvtColor(to_uint8(image), cv2.COLOR_RGB2BGR), params):
            raise OSError(f"could not write image {path}")

    return atomic_write(path, encode)


def write_frames_folder(
    folder: str | os.PathLike, frames: Sequence[np.ndarray], *, suffix: str = ".jpg"
) -> Path:
    """Frames as <index>.jpg (0.jpg, 1.jpg, ...) in `folder`, the layout SAM2's video predictor reads."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        write_image(folder / f"{index}{suffix}", frame)
    return folder
