"""Human and object masks through the reference video with SAM2's video predictor (paper Sec. 3.2).

Torch and `sam2` are imported inside the functions that need them, so the rest of the package
works without the torch extra. Masks are cached in an .npz next to the video, keyed by a hash of
the frames, the prompts and the checkpoint, and reused by the next run with the same inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from jaxtyping import Bool, UInt8
from tqdm.auto import tqdm

from ..errors import UserError
from ..files import atomic_write
from ..io.video import read_video, write_frames_folder
from .prompts import Prompt

logger = logging.getLogger(__name__)

CHECKPOINTS_PAGE = "https://github.com/facebookresearch/sam2#download-checkpoints"
# Release folders of the official checkpoints (SAM 2: 2024-07-28, SAM 2.1: 2024-09-28).
_DOWNLOAD_FOLDERS = {
    "sam2": "https://dl.fbaipublicfiles.com/segment_anything_2/072824/",
    "sam2.1": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/",
}
# Checkpoint size names and the short codes of their config files.
_SIZE_CODES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
DEFAULT_MODEL_CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"
CACHE_FORMAT = "zerohsi-sam2-masks-v1"


class SAM2CheckpointError(UserError, FileNotFoundError):
    """No usable SAM2 checkpoint: the message names the file to download and where to put it."""


# ------------------------------------------------------------------------------- checkpoints


def sam2_config_for_checkpoint(checkpoint: str | os.PathLike) -> str:
    """The config of an official checkpoint from its file name: sam2.1_hiera_small.pt ->
    configs/sam2.1/sam2.1_hiera_s.yaml, sam2_hiera_large.pt -> configs/sam2/sam2_hiera_l.yaml."""
    name = Path(checkpoint).name.lower()
    version = "sam2.1" if name.startswith("sam2.1") else "sam2" if name.startswith("sam2") else None
    # base_plus before the others: its name contains none of them, but check the longest first anyway.
    size = next((s for s in ("base_plus", "tiny", "small", "large") if s in name), None)
    if version is None or size is None:
        raise ValueError(
            f"cannot tell the SAM2 model from the checkpoint name {Path(checkpoint).name!r} (expected "
            f"sam2.1_hiera_{{tiny,small,base_plus,large}}.pt); set model_config explicitly, e.g. "
            f"{DEFAULT_MODEL_CONFIG!r}"
        )
    return f"configs/{version}/{version}_hiera_{_SIZE_CODES[size]}.yaml"


def checkpoint_name_for_config(model_config: str) -> str:
    """The official checkpoint file of a config: configs/sam2.1/sam2.1_hiera_t.yaml ->
    sam2.1_hiera_tiny.pt (the tiny SAM 2.1 file for an unknown config)."""
    stem = Path(model_config).stem  # e.g. sam2.1_hiera_t
    prefix, _, code = stem.rpartition("_hiera_")
    sizes = {c: s for s, c in _SIZE_CODES.items()}
    if prefix not in _DOWNLOAD_FOLDERS or code not in sizes:
        return "sam2.1_hiera_tiny.pt"
    return f"{prefix}_hiera_{sizes[code]}.pt"


def _download_hint(file_name: str, destination: Path | None) -> str:
    version = "sam2.1" if file_name.startswith("sam2.1") else "sam2"
    where = f"save it as {destination}" if destination is not None else "pass its path as the SAM2 checkpoint"
    return (
        f"download {file_name} from {CHECKPOINTS_PAGE} ({_DOWNLOAD_FOLDERS[version]}{file_name}) and {where} "
        "(any of the tiny/small/base_plus/large checkpoints works; larger is better and slower)"
    )


def check_checkpoint(checkpoint: str | os.PathLike | None, model_config: str | None = None) -> Path:
    """The checkpoint's path, or `SAM2CheckpointError` naming the file to download."""
    if checkpoint is None:
        wanted = checkpoint_name_for_config(model_config or DEFAULT_MODEL_CONFIG)
        raise SAM2CheckpointError(f"no SAM2 checkpoint configured: {_download_hint(wanted, None)}")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        try:  # the official file the configured name points at, else the one of the config
            wanted = checkpoint_name_for_config(sam2_config_for_checkpoint(path))
        except ValueError:
            wanted = checkpoint_name_for_config(model_config or DEFAULT_MODEL_CONFIG)
        raise SAM2CheckpointError(f"SAM2 checkpoint {path} does not exist: {_download_hint(wanted, path)}")
    return path


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when Torch sees a GPU, else 'cpu'; anything else is passed through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_sam2_predictor(
    checkpoint: str | os.PathLike | None,
    *,
    model_config: str | None = None,
    device: str = "auto",
):
    """SAM2's video predictor with the weights of `checkpoint` (strictly loaded).

    `model_config` defaults to the config named by the checkpoint file (see
    `sam2_config_for_checkpoint`)."""
    path = check_checkpoint(checkpoint, model_config)
    model_config = model_config or sam2_config_for_checkpoint(path)
    from hydra.errors import MissingConfigException
    from sam2.build_sam import build_sam2_video_predictor

    try:
        return build_sam2_video_predictor(model_config, ckpt_path=str(path), device=resolve_device(device))
    except MissingConfigException:
        raise ValueError(
            f"unknown SAM2 model config {model_config!r}: use one of the sam2 package's configs, e.g. "
            f"{DEFAULT_MODEL_CONFIG!r} or configs/sam2.1/sam2.1_hiera_{{t,s,b+,l}}.yaml"
        ) from None
    except (RuntimeError, KeyError) as err:
        # sam2 raises a bare RuntimeError (after logging the keys) when the weights do not fit the model.
        raise RuntimeError(
            f"could not load SAM2 checkpoint {path} into the model of {model_config} ({err!r}): the file is "
            "damaged or belongs to another model size; set model_config to the checkpoint's config"
        ) from err


# ------------------------------------------------------------------------------------ caching


def default_mask_cache_path(video_path: str | os.PathLike) -> Path:
    """Where the masks of a video are cached: clip.mp4 -> clip.mp4.masks.npz, frames/ -> frames.masks.npz."""
    path = Path(video_path)
    return path.with_name(path.name + ".masks.npz")


def _checkpoint_identity(path: Path, model_config: str) -> str:
    """What the masks depend on besides frames and prompts: the checkpoint (size, modification time
    and its first and last MiB: hashing all of a multi-hundred-MB file on every run would cost
    seconds), the config, the sam2 version and our post-processing (this module's source)."""
    import importlib.metadata

    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(2**20))
        f.seek(max(0, stat.st_size - 2**20))
        digest.update(f.read(2**20))
    digest.update(Path(__file__).read_bytes())
    try:
        version = importlib.metadata.version("sam2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}|{digest.hexdigest()[:16]}|{model_config}|sam2 {version}"


def mask_cache_key(frames: np.ndarray, prompts: Mapping[str, Prompt], model_identity: str) -> str:
    """Hash of everything the masks depend on: the frames, the prompts (in order) and the model."""
    digest = hashlib.sha256()
    digest.update(CACHE_FORMAT.encode())
    digest.update(repr((frames.shape, str(frames.dtype))).encode())
    digest.update(np.ascontiguousarray(frames).data)
    for name, (points, labels) in prompts.items():
        digest.update(name.encode() + b"\0")
        digest.update(np.ascontiguousarray(points, np.float32).tobytes())
        digest.update(np.ascontiguousarray(labels, np.int32).tobytes())
    digest.update(model_identity.encode())
    return digest.hexdigest()


def load_cached_masks(
    cache_path: str | os.PathLike, key: str, names: list[str], frame_shape: tuple[int, int, int]
) -> dict[str, Bool[np.ndarray, "T H W"]] | None:
    """The cached masks when `cache_path` holds masks for `key`, else None (missing, stale or unreadable)."""
    cache_path = Path(cache_path)
    if not cache_path.is_file():
        return None
    try:
        with np.load(cache_path, allow_pickle=False) as data:
            if str(data["cache_key"]) != key:
                logger.info("mask cache %s is for other inputs; recomputing", cache_path)
                return None
            stored = [str(n) for n in data["names"]]
            if stored != list(names):
                return None
            masks = {name: data[f"mask_{i}"].astype(bool) for i, name in enumerate(stored)}
    except Exception as err:  # a damaged cache must never stop a run: recompute instead
        warnings.warn(f"ignoring unreadable mask cache {cache_path} ({err!r}); recomputing", stacklevel=2)
        return None
    if any(m.shape != frame_shape for m in masks.values()):
        return None
    return masks


def save_masks(
    cache_path: str | os.PathLike,
    key: str,
    masks: Mapping[str, np.ndarray],
    prompts: Mapping[str, Prompt],
) -> Path:
    """Write masks (+ the prompts, for the record) to `cache_path`; it appears only when complete."""
    cache_path = Path(cache_path)
    arrays = {"cache_key": np.array(key), "names": np.array(list(masks))}
    for i, (name, mask) in enumerate(masks.items()):
        arrays[f"mask_{i}"] = np.asarray(mask, bool)
        points, labels = prompts[name]
        arrays[f"points_{i}"] = np.asarray(points, np.float32)
        arrays[f"labels_{i}"] = np.asarray(labels, np.int32)

    def write(tmp: str):
        with open(tmp, "wb") as f:  # a file object: numpy would append '.npz' to a name
            np.savez_compressed(f, **arrays)

    return atomic_write(cache_path, write)


# ------------------------------------------------------------------------------------ running


def _check_prompts(prompts: Mapping[str, Prompt], height: int, width: int) -> None:
    if not prompts:
        raise ValueError("segment_video needs at least one prompted object")
    for name, (points, labels) in prompts.items():
        points, labels = np.asarray(points), np.asarray(labels)
        if points.ndim != 2 or points.shape[1] != 2 or labels.shape != (points.shape[0],):
            raise ValueError(
                f"prompt {name!r}: points must be (K, 2) and labels (K,), got {points.shape} "
                f"and {labels.shape}"
            )
        if not (labels == 1).any():
            raise ValueError(f"prompt {name!r} has no positive point (label 1)")
        inside = (
            (points[:, 0] >= 0) & (points[:, 0] <= width) & (points[:, 1] >= 0) & (points[:, 1] <= height)
        )
        if not inside.all():
            raise ValueError(
                f"prompt {name!r} has points outside the {width}x{height} frame: {points[~inside].tolist()}"
            )


@contextlib.contextmanager
def _without_sam2_progress_bars() -> Iterator[None]:
    """SAM2 draws its own bars for frame loading and propagation; ours replaces them, so one bar
    per run shows what is going on. Restored on exit."""
    import sam2.sam2_video_predictor as predictor_module
    import sam2.utils.misc as misc_module

    def passthrough(iterable, *args, **kwargs):
        return iterable

    saved = [(m, m.tqdm) for m in (predictor_module, misc_module) if hasattr(m, "tqdm")]
    for module, _ in saved:
        module.tqdm = passthrough
    try:
        yield
    finally:
        for module, original in saved:
            module.tqdm = original


def run_sam2(
    predictor,
    frames: UInt8[np.ndarray, "T H W 3"],
    prompts: Mapping[str, Prompt],
    *,
    progress: bool = True,
) -> dict[str, Bool[np.ndarray, "T H W"]]:
    """Track every prompted object (prompts on frame 0) through `frames` with a SAM2 video predictor.

    No caching here; see `segment_video`."""
    import torch

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    num_frames, height, width = frames.shape[:3]
    _check_prompts(prompts, height, width)
    names = list(prompts)
    masks = {name: np.zeros((num_frames, height, width), bool) for name in names}
    seen = np.zeros(num_frames, bool)
    device = torch.device(predictor.device)
    # bfloat16 autocast is how SAM2 is meant to run on GPUs; on the CPU it would only be slower.
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
    with tempfile.TemporaryDirectory(prefix="zerohsi-sam2-") as jpeg_dir:
        # SAM2's predictor reads a folder of <index>.jpg frames.
        write_frames_folder(jpeg_dir, frames)
        with torch.inference_mode(), autocast, _without_sam2_progress_bars(), warnings.catch_warnings():
            # Without its optional CUDA extension SAM2 skips filling small mask holes and says so
            # at length; its own message calls that safe to ignore.
            warnings.filterwarnings("ignore", message=r"cannot import name '_C'", category=UserWarning)
            # Frames stay in host memory (SAM2 moves one at a time): long videos must not fill the GPU.
            state = predictor.init_state(video_path=jpeg_dir, offload_video_to_cpu=True)
            for obj_id, name in enumerate(names, start=1):
                points, labels = prompts[name]
                predictor.add_new_points_or_box(
                    state,
                    frame_idx=0,
                    obj_id=obj_id,
                    points=np.asarray(points, np.float32),
                    labels=np.asarray(labels, np.int32),
                )
            bar = tqdm(total=num_frames, desc=f"SAM2 {'+'.join(names)}", unit="frame", disable=not progress)
            with bar:
                for frame_idx, obj_ids, logits in predictor.propagate_in_video(state):
                    for row, obj_id in enumerate(obj_ids):
                        masks[names[obj_id - 1]][frame_idx] = (logits[row, 0] > 0.0).cpu().numpy()
                    seen[frame_idx] = True
                    bar.update(1)
    if not seen.all():
        raise RuntimeError(f"SAM2 returned no masks for frames {np.nonzero(~seen)[0].tolist()}")
    return masks


def segment_video(
    video: UInt8[np.ndarray, "T H W 3"] | str | os.PathLike,
    prompts: Mapping[str, Prompt],
    *,
    checkpoint: str | os.PathLike | None,
    model_config: str | None = None,
    device: str = "auto",
    cache_path: str | os.PathLike | None = None,
    use_cache: bool = True,
    stride: int = 1,
    size: tuple[int, int] | None = None,
    max_frames: int | None = None,
    progress: bool = True,
) -> dict[str, Bool[np.ndarray, "T H W"]]:
    """Masks of each prompted object (name -> (points, labels) on frame 0) in every frame.

    `video` is an RGB uint8 (T, H, W, 3) array or a video file / image folder (read with `stride`,
    `size` and `max_frames`, see `read_video`). Masks are cached in `cache_path` (default for a
    path: `default_mask_cache_path(video)`; an array without `cache_path` is not cached) and reused
    when frames, prompts and checkpoint are unchanged. `checkpoint` is a SAM2 .pt file; `device`
    'auto' picks CUDA when present."""
    checkpoint_path = check_checkpoint(checkpoint, model_config)
    model_config = model_config or sam2_config_for_checkpoint(checkpoint_path)
    if isinstance(video, (str, os.PathLike)):
        if cache_path is None:
            cache_path = default_mask_cache_path(video)
        frames, _ = read_video(video, stride=stride, size=size, max_frames=max_frames, progress=progress)
    else:
        frames = np.asarray(video)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    _check_prompts(prompts, frames.shape[1], frames.shape[2])

    key = mask_cache_key(frames, prompts, _checkpoint_identity(checkpoint_path, model_config))
    if use_cache and cache_path is not None:
        cached = load_cached_masks(cache_path, key, list(prompts), frames.shape[:3])
        if cached is not None:
            if progress:
                tqdm.write(f"SAM2 masks reused from {cache_path}", file=sys.stderr)
            return cached

    predictor = load_sam2_predictor(checkpoint_path, model_config=model_config, device=device)
    masks = run_sam2(predictor, frames, prompts, progress=progress)
    if use_cache and cache_path is not None:
        try:
            save_masks(cache_path, key, masks, prompts)
        except OSError as err:  # e.g. a read-only video folder: the masks are still good
            warnings.warn(
                f"could not write the mask cache {cache_path} ({err}); masks are not cached", stacklevel=2
            )
    return masks
