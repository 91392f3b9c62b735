"""SAM2 segmentation plumbing: checkpoints, caching, the predictor loop, and the reference-video pipeline.

The real model runs once, with random weights (no checkpoint can be downloaded here) saved as a
stand-in sam2.1_hiera_tiny.pt, so the strict user path (checkpoint file -> config -> load) is the
one exercised. Its masks are meaningless; shapes, dtypes, caching and order are what is checked.
The rest uses a scripted predictor whose masks are known."""

import numpy as np
import pytest

from zerohsi_jax.io import write_video
from zerohsi_jax.segment import (
    SAM2CheckpointError,
    check_checkpoint,
    checkpoint_name_for_config,
    default_mask_cache_path,
    load_cached_masks,
    mask_cache_key,
    sam2_config_for_checkpoint,
    sam2_video,
    save_masks,
    segment_reference_video,
    segment_video,
)
from zerohsi_jax.splat import Camera

HEIGHT, WIDTH = 48, 64


def clip_frames(num_frames: int = 3) -> np.ndarray:
    """A bright square moving right over a dark background with a grey static bar."""
    frames = np.full((num_frames, HEIGHT, WIDTH, 3), 20, np.uint8)
    frames[:, 34:44, 4:60] = 90  # static grey bar
    for t in range(num_frames):
        frames[t, 8:24, 8 + 6 * t : 24 + 6 * t] = 250
    return frames


def clip_prompts() -> dict:
    return {
        "square": (np.array([[16.5, 16.5], [12.5, 12.5]], np.float32), np.array([1, 1], np.int32)),
        "bar": (np.array([[30.5, 38.5]], np.float32), np.array([1], np.int32)),
    }


# ------------------------------------------------------------------------ no Torch needed


def test_config_follows_the_checkpoint_name():
    assert sam2_config_for_checkpoint("/ckpt/sam2.1_hiera_tiny.pt") == "configs/sam2.1/sam2.1_hiera_t.yaml"
    assert sam2_config_for_checkpoint("sam2.1_hiera_base_plus.pt") == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert sam2_config_for_checkpoint("sam2_hiera_large.pt") == "configs/sam2/sam2_hiera_l.yaml"
    assert checkpoint_name_for_config("configs/sam2.1/sam2.1_hiera_s.yaml") == "sam2.1_hiera_small.pt"
    with pytest.raises(ValueError, match="set model_config"):
        sam2_config_for_checkpoint("my_weights.pt")


def test_missing_checkpoint_names_the_file_to_download(tmp_path):
    frames, prompts = clip_frames(), clip_prompts()
    with pytest.raises(SAM2CheckpointError) as info:
        segment_video(frames, prompts, checkpoint=None)
    message = str(info.value)
    assert "sam2.1_hiera_tiny.pt" in message and "facebookresearch/sam2#download-checkpoints" in message
    wanted = tmp_path / "weights" / "sam2.1_hiera_large.pt"
    with pytest.raises(SAM2CheckpointError) as info:
        segment_video(frames, prompts, checkpoint=wanted)
    message = str(info.value)
    assert f"{wanted} does not exist" in message and "092824/sam2.1_hiera_large.pt" in message
    with pytest.raises(SAM2CheckpointError, match="sam2.1_hiera_small.pt"):
        check_checkpoint(None, "configs/sam2.1/sam2.1_hiera_s.yaml")


def test_cache_round_trip_and_invalidation(tmp_path):
    frames, prompts = clip_frames(), clip_prompts()
    masks = {"square": frames[..., 0] > 200, "bar": (frames[..., 0] > 50) & (frames[..., 0] < 200)}
    key = mask_cache_key(frames, prompts, "model-a")
    path = save_masks(tmp_path / "clip.mp4.masks.npz", key, masks, prompts)
    assert path == default_mask_cache_path(tmp_path / "clip.mp4")
    loaded = load_cached_masks(path, key, ["square", "bar"], frames.shape[:3])
    assert loaded is not None and all(np.array_equal(loaded[n], masks[n]) for n in masks)
    # Anything the masks depend on changes the key.
    moved = {**prompts, "bar": (prompts["bar"][0] + 1.0, prompts["bar"][1])}
    other_frames = frames.copy()
    other_frames[0, 0, 0, 0] += 1
    for other_key in (
        mask_cache_key(frames, moved, "model-a"),
        mask_cache_key(other_frames, prompts, "model-a"),
        mask_cache_key(frames, prompts, "model-b"),
    ):
        assert other_key != key
        assert load_cached_masks(path, other_key, ["square", "bar"], frames.shape[:3]) is None
    path.write_bytes(b"damaged")
    with pytest.warns(UserWarning, match="unreadable mask cache"):
        assert load_cached_masks(path, key, ["square", "bar"], frames.shape[:3]) is None
    assert not list(tmp_path.glob("*.part*"))


# ------------------------------------------------------------------------------ with Torch


class ScriptedPredictor:
    """Stands in for SAM2VideoPredictor: reads the JPEG folder the way SAM2 does and answers each
    object with the pixels whose brightness class matches the one under its first positive point."""

    device = "cpu"

    def init_state(self, video_path, offload_video_to_cpu=False):
        import os

        import cv2

        names = sorted(os.listdir(video_path), key=lambda p: int(os.path.splitext(p)[0]))
        frames = [cv2.imread(os.path.join(video_path, n), cv2.IMREAD_GRAYSCALE) for n in names]
        return {"frames": np.stack(frames), "objects": {}}

    def add_new_points_or_box(self, state, frame_idx, obj_id, points, labels):
        assert frame_idx == 0 and points.dtype == np.float32 and labels.dtype == np.int32
        x, y = points[labels == 1][0]
        state["objects"][obj_id] = _brightness_class(state["frames"][0][int(y), int(x)])

    def propagate_in_video(self, state):
        import torch

        ids = list(state["objects"])
        for t, frame in enumerate(state["frames"]):
            logits = [np.where(_brightness_class(frame) == state["objects"][i], 5.0, -5.0) for i in ids]
            yield t, ids, torch.tensor(np.stack(logits)[:, None], dtype=torch.float32)


def _brightness_class(gray):
    return np.digitize(gray, [55, 170])  # background / bar / square


@pytest.mark.torch
def test_run_sam2_keeps_frame_order_and_object_names():
    import sam2.sam2_video_predictor as predictor_module

    sam2_bar = predictor_module.tqdm
    frames, prompts = clip_frames(4), clip_prompts()
    masks = sam2_video.run_sam2(ScriptedPredictor(), frames, prompts, progress=False)
    assert list(masks) == ["square", "bar"]
    np.testing.assert_array_equal(masks["square"], frames[..., 0] > 200)  # the moving square, frame by frame
    np.testing.assert_array_equal(masks["bar"], (frames[..., 0] > 50) & (frames[..., 0] < 200))
    assert predictor_module.tqdm is sam2_bar  # SAM2's own progress bars are back


@pytest.fixture(scope="module")
def random_tiny_checkpoint(tmp_path_factory):
    import torch
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(0)
    model = build_sam2_video_predictor("configs/sam2.1/sam2.1_hiera_t.yaml", ckpt_path=None, device="cpu")
    path = tmp_path_factory.mktemp("ckpt") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.mark.torch
def test_random_weight_tiny_sam2_on_a_clip_with_cache(tmp_path, random_tiny_checkpoint, monkeypatch):
    video = write_video(tmp_path / "clip.mp4", clip_frames(3), fps=30)
    prompts = clip_prompts()
    run = dict(checkpoint=random_tiny_checkpoint, device="cpu", stride=1, progress=False)
    masks = segment_video(video, prompts, **run)
    assert list(masks) == ["square", "bar"]
    for mask in masks.values():
        assert mask.shape == (3, HEIGHT, WIDTH) and mask.dtype == np.bool_
    cache = tmp_path / "clip.mp4.masks.npz"
    assert cache.is_file() and not list(tmp_path.glob("*.part*"))

    # The second call must not touch the model.
    def no_model(*args, **kwargs):
        raise AssertionError("SAM2 ran although its masks were cached")

    monkeypatch.setattr(sam2_video, "load_sam2_predictor", no_model)
    monkeypatch.setattr(sam2_video, "run_sam2", no_model)
    again = segment_video(video, prompts, **run)
    assert all(np.array_equal(again[name], masks[name]) for name in masks)
    # Other prompts are other masks: the cache must not answer them.
    moved = {**prompts, "bar": (prompts["bar"][0] + 2.0, prompts["bar"][1])}
    with pytest.raises(AssertionError, match="SAM2 ran"):
        segment_video(video, moved, **run)


@pytest.mark.torch
def test_checkpoint_of_another_model_size_is_a_clear_error(tmp_path, random_tiny_checkpoint):
    small = tmp_path / "sam2.1_hiera_small.pt"
    small.symlink_to(random_tiny_checkpoint)  # tiny weights under the small model's name
    expected = r"sam2\.1_hiera_small\.pt into the model of configs/sam2\.1/sam2\.1_hiera_s\.yaml"
    with pytest.raises(RuntimeError, match=expected):
        sam2_video.load_sam2_predictor(small, device="cpu")


@pytest.mark.torch
def test_reference_video_pipeline(tmp_path, random_tiny_checkpoint, monkeypatch):
    """Video at half the camera's resolution, prompts from render coverage, masks and pictures."""
    frames = clip_frames(7)
    video = write_video(tmp_path / "generated.mp4", frames, fps=30)
    camera = Camera.look_at((0, 0, -3), (0, 0, 0), width=2 * WIDTH, height=2 * HEIGHT)
    group_masks = np.zeros((HEIGHT, WIDTH, 3), np.float32)  # what render(..., num_groups=3) gives
    group_masks[..., 0] = 1.0
    group_masks[8:24, 8:24] = [0.0, 1.0, 0.0]  # human: the square in frame 0
    group_masks[34:44, 4:60] = [0.0, 0.0, 1.0]  # object: the bar
    monkeypatch.setattr(sam2_video, "load_sam2_predictor", lambda *a, **k: ScriptedPredictor())

    result = segment_reference_video(
        video,
        camera,
        group_masks,
        {"human": 1, "object": 2},
        checkpoint=random_tiny_checkpoint,
        stride=3,
        num_points=3,
        pictures_dir=tmp_path / "pictures",
        progress=False,
    )
    assert result.frames.shape == (3, HEIGHT, WIDTH, 3) and result.fps == pytest.approx(10.0)
    assert (result.camera.width, result.camera.height) == (WIDTH, HEIGHT)
    assert float(result.camera.fx) == pytest.approx(float(camera.fx) / 2)
    points, labels = result.prompts["human"]
    assert (group_masks[points[:, 1].astype(int), points[:, 0].astype(int), 1] == 1.0).all() and labels.all()
    # Frames 0, 3, 6 of the clip: the scripted masks follow the square.
    np.testing.assert_array_equal(result.masks["human"], frames[::3, ..., 0] > 200)
    assert result.cache_path == tmp_path / "generated.mp4.masks.npz" and result.cache_path.is_file()
    assert (tmp_path / "pictures" / "prompts.png").is_file()
    assert (tmp_path / "pictures" / "masks.mp4").is_file()
