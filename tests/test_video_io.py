"""Reference video input: temporal resampling, resizing, intrinsics scaling, errors; writers and pictures."""

import numpy as np
import pytest

from zerohsi_jax.io import (
    AspectRatioError,
    VideoError,
    fit_video_to_camera,
    load_video_for_camera,
    mask_overlay,
    natural_sort_key,
    overlay,
    probe_video,
    read_video,
    side_by_side,
    write_image,
    write_video,
)
from zerohsi_jax.splat import Camera

WIDTH, HEIGHT, SQUARE = 96, 64, 16


def square_x(t: int) -> int:
    return 4 + 3 * t  # left edge of the square in frame t


def moving_square_frames(num_frames: int) -> np.ndarray:
    frames = np.zeros((num_frames, HEIGHT, WIDTH, 3), np.uint8)
    frames[..., 2] = 40  # dark blue background
    for t in range(num_frames):
        frames[t, 24 : 24 + SQUARE, square_x(t) : square_x(t) + SQUARE] = 255
    return frames


def bright_centroid(frame: np.ndarray) -> tuple[float, float]:
    rows, cols = np.nonzero(frame.mean(axis=-1) > 128)
    return cols.mean() + 0.5, rows.mean() + 0.5  # pixel centres


@pytest.fixture(scope="module")
def square_video(tmp_path_factory):
    path = tmp_path_factory.mktemp("video") / "square.mp4"
    write_video(path, moving_square_frames(16), fps=30)
    return path


def test_written_mp4_reads_back_every_frame(square_video):
    info = probe_video(square_video)
    assert (info.width, info.height, info.fps) == (WIDTH, HEIGHT, 30.0)
    frames, fps = read_video(square_video, stride=1, progress=False)
    assert frames.shape == (16, HEIGHT, WIDTH, 3) and frames.dtype == np.uint8 and fps == 30.0
    # H.264 is lossy, but a flat square survives it closely.
    assert np.abs(frames.astype(int) - moving_square_frames(16).astype(int)).mean() < 4.0
    assert not list(square_video.parent.glob("*.part*")), "no temporary file left behind"


def test_stride_keeps_every_third_frame_and_resize_scales_positions(square_video):
    frames, fps = read_video(square_video, stride=3, size=(WIDTH // 2, HEIGHT // 2), progress=False)
    # Frames 0, 3, 6, 9, 12, 15 of 16: ceil(16 / 3), as 153 -> 51 in the paper.
    assert frames.shape == (6, HEIGHT // 2, WIDTH // 2, 3)
    assert fps == pytest.approx(10.0)
    for k, frame in enumerate(frames):
        t = 3 * k
        expected_x = (square_x(t) + SQUARE / 2) / 2
        expected_y = (24 + SQUARE / 2) / 2
        x, y = bright_centroid(frame)
        assert abs(x - expected_x) < 0.75 and abs(y - expected_y) < 0.75, (t, x, y)


def test_max_frames_and_min_frames(square_video):
    frames, _ = read_video(square_video, stride=3, max_frames=4, progress=False)
    assert len(frames) == 4
    assert bright_centroid(frames[3])[0] == pytest.approx(square_x(9) + SQUARE / 2, abs=0.75)
    with pytest.raises(VideoError, match=r"square\.mp4.*6 frame\(s\).*at least 51"):
        read_video(square_video, stride=3, min_frames=51, progress=False)


def test_fit_video_to_camera_scales_intrinsics():
    camera = Camera(np.eye(4), fx=1000.0, fy=1100.0, cx=960.0, cy=540.0, width=1920, height=1080)
    fitted = fit_video_to_camera((1920, 1080), camera, render_size=(480, 270))
    assert (fitted.width, fitted.height) == (480, 270)
    np.testing.assert_allclose(
        [fitted.fx, fitted.fy, fitted.cx, fitted.cy], [250.0, 275.0, 240.0, 135.0], rtol=1e-6
    )
    np.testing.assert_array_equal(fitted.viewmat, camera.viewmat)
    # Default render size: the video's own size. 854x480 is 16:9 within rounding.
    fitted = fit_video_to_camera((854, 480), camera)
    assert (fitted.width, fitted.height) == (854, 480)
    assert float(fitted.fy) == pytest.approx(1100.0 * 480 / 1080)


def test_aspect_ratio_mismatch_is_an_error_naming_sizes_and_fix(square_video):
    camera = Camera(np.eye(4), 100.0, 100.0, 64.0, 64.0, 128, 128)  # square, the video is 3:2
    with pytest.raises(AspectRatioError) as info:
        load_video_for_camera(square_video, camera, progress=False)
    message = str(info.value)
    for part in ("square.mp4", "96x64", "1.5000", "128x128", "1.0000", "Crop the video", "camera's width"):
        assert part in message
    with pytest.raises(AspectRatioError):
        read_video(square_video, size=(64, 64), progress=False)


def test_load_video_for_camera_returns_frames_at_the_camera_size(square_video):
    camera = Camera(np.eye(4), 120.0, 120.0, 96.0, 64.0, 192, 128)  # 2x the video, same aspect
    frames, fps, fitted = load_video_for_camera(square_video, camera, stride=3, progress=False)
    assert frames.shape == (6, 128, 192, 3) and fps == pytest.approx(10.0)
    assert fitted.width == 192 and float(fitted.fx) == pytest.approx(120.0)
    frames, _, fitted = load_video_for_camera(square_video, camera, render_size=(48, 32), progress=False)
    assert frames.shape[1:3] == (32, 48) and float(fitted.fx) == pytest.approx(30.0)


def test_image_folder_sorted_naturally(tmp_path):
    source = moving_square_frames(12)
    for t in range(12):  # written out of order, named 0.png ... 11.png: lexical order would put 10 after 1
        write_image(tmp_path / f"{(t * 5) % 12}.png", source[(t * 5) % 12])
    (tmp_path / "notes.txt").write_text("not a frame")
    frames, fps = read_video(tmp_path, stride=3, folder_fps=24.0, progress=False)
    assert frames.shape == (4, HEIGHT, WIDTH, 3) and fps == pytest.approx(8.0)
    np.testing.assert_array_equal(frames, source[::3])  # png is lossless
    assert sorted(["10.jpg", "2.jpg", "1.jpg"], key=natural_sort_key) == ["1.jpg", "2.jpg", "10.jpg"]


def test_webm_and_odd_sizes(tmp_path):
    frames = np.zeros((3, 33, 47, 3), np.uint8)
    frames[:, 10:20, 10:20] = 255
    path = write_video(tmp_path / "odd.webm", frames, fps=12)
    back, fps = read_video(path, stride=1, progress=False)
    # yuv420p needs even sizes: one repeated row and column.
    assert back.shape == (3, 34, 48, 3) and fps == pytest.approx(12.0)
    assert bright_centroid(back[0]) == pytest.approx((15.0, 15.0), abs=0.75)


def test_missing_empty_and_unreadable_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.mp4"):
        read_video(tmp_path / "nothere.mp4")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoError, match="empty.*holds no frames"):
        read_video(empty)
    bogus = tmp_path / "bogus.mp4"
    bogus.write_bytes(b"this is not a video")
    with pytest.raises(VideoError, match=r"bogus\.mp4.*codec.*ffmpeg"):
        read_video(bogus)
    with pytest.raises(VideoError, match="unsupported video suffix"):
        (tmp_path / "clip.gif").write_bytes(b"GIF89a")
        read_video(tmp_path / "clip.gif")
    with pytest.raises(ValueError, match="no frames"):
        write_video(tmp_path / "none.mp4", [], fps=10)
    assert not (tmp_path / "none.mp4").exists() and not list(tmp_path.glob("*.part*"))


def test_pictures():
    image = np.zeros((8, 10, 3), np.uint8)
    render = np.full((8, 10, 3), 1.0)
    panel = side_by_side(image, render, overlay(image, render, 0.5), gap=2)
    assert panel.shape == (8, 34, 3) and panel.dtype == np.uint8
    assert panel[0, 12].tolist() == [255, 255, 255] and panel[0, 24].tolist() == [128, 128, 128]
    mask = np.zeros((8, 10), bool)
    mask[2:6, 2:6] = True
    tinted = overlay(image, mask, alpha=1.0, color=(0, 255, 0))
    assert tinted[3, 3].tolist() == [0, 255, 0] and tinted[0, 0].tolist() == [0, 0, 0]
    pic = mask_overlay(
        np.zeros((64, 64, 3), np.uint8),
        {"human": np.pad(mask, ((0, 56), (0, 54)))},
        colors={"human": (255, 0, 0)},
        legend=False,
    )
    assert pic[4, 4, 0] > 100 and pic[4, 4, 1] == 0 and pic[40, 40].tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="different heights"):
        side_by_side(image, np.zeros((9, 10, 3)))
