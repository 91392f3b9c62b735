"""`zerohsi-jax view`: the demo written as a run config loads back to the same world, the viewer
serves a run's splats, person, cameras and losses, and a real browser (headless Chromium) draws
them and follows the frame slider."""

import os
import time
import urllib.request

import jax
import numpy as np
import pytest

from zerohsi_jax.demo_config import config_ready_demo
from zerohsi_jax.reconstruct import HumanPose, ReconstructConfig, Reconstruction
from zerohsi_jax.reconstruct.pipeline import write_results
from zerohsi_jax.reconstruct.run_files import RunFolder
from zerohsi_jax.synthetic.instances import noisy_estimates

pytest.importorskip("viser", reason="the viewer needs the view extra (pip install -e '.[view]')")

SEEDS = 2


@pytest.fixture(scope="module")
def demo_run(tiny_demo, tmp_path_factory):
    """The tiny demo as `zerohsi-jax demo` leaves it: config.yaml and its files, and `run/`, a
    finished run folder written by the pipeline's own `write_results` (refined poses: the ground
    truth; stage 2: the simulated estimates, 5 cm off). Fitting is left to the pipeline's tests:
    its compilation alone would take this module's whole time budget."""
    root = tmp_path_factory.mktemp("demo")
    body_pose = np.asarray(tiny_demo.truth.human.body_pose)
    estimates = np.stack([noisy_estimates(body_pose, 0.05, 10 + s) for s in range(SEEDS)])
    demo = config_ready_demo(root, tiny_demo, seed=0, schedule=ReconstructConfig(), estimates=estimates)
    truth = demo.truth
    n = truth.viewmats.shape[0]
    seeds = lambda a: np.broadcast_to(np.asarray(a), (SEEDS,) + np.asarray(a).shape).copy()  # noqa: E731
    refined = HumanPose(seeds(truth.human.transl), seeds(truth.human.global_orient), seeds(truth.human.body_pose))
    stage2 = HumanPose(refined.transl + np.float32(0.05), refined.global_orient, estimates)
    rng = np.random.default_rng(0)
    losses = {"camera": [rng.random((SEEDS, 3)) for _ in range(n - 1)],
              "hsi": [rng.random((SEEDS, 4)) for _ in range(n - 1)], "refine": rng.random((SEEDS, 5))}
    result = Reconstruction(viewmats=seeds(truth.viewmats), human_stage2=stage2, human=refined,
                            object_poses=seeds(np.asarray(truth.object_poses.matrix())), timings={}, losses=losses)
    folder = RunFolder(root / "run")
    folder.check_or_write_manifest({"frames": n, "seeds": SEEDS, "size": [demo.inputs.camera.width,
                                    demo.inputs.camera.height], "config": "test", "object": True}, resume=False)
    folder.begin_writing()
    write_results(folder, result)  # frame_rate None, as the demo leaves it: the viewer reads it from the video
    return root, demo


def test_demo_config_loads_back_to_the_same_world(demo_run, tiny_demo):
    """config.yaml through `load_assets` gives the demo's scene, object (in the same world place:
    the saved frame is the exact centroid frame), camera, avatar and initial state; 10 fps."""
    import jax.numpy as jnp

    from zerohsi_jax.app import load_assets
    from zerohsi_jax.reconstruct.state import posed_object
    from zerohsi_jax.run_config import load_run_config
    from zerohsi_jax.run_results import video_frame_rate

    root, demo = demo_run
    cfg = load_run_config(root / "config.yaml")
    assets = load_assets(cfg)
    np.testing.assert_allclose(assets.scene.means, demo.inputs.scene.means, atol=1e-6)
    np.testing.assert_allclose(assets.camera.viewmat, demo.inputs.camera.viewmat, atol=1e-6)
    assert float(assets.camera.fx) == pytest.approx(float(demo.inputs.camera.fx))
    np.testing.assert_allclose(assets.avatar.template.cano_means, tiny_demo.inputs.avatar.template.cano_means,
                               atol=1e-6)
    np.testing.assert_allclose(assets.initial.human.body_pose, tiny_demo.initial.human.body_pose, atol=1e-6)
    # The object: every frame's world positions of the truth are unchanged by the re-centring,
    # and the config's object posed by the config's initial pose lands there too.
    for t in range(demo.truth.viewmats.shape[0]):
        pose = lambda truth, t=t: jax.tree.map(lambda x: jnp.asarray(x)[t], truth.object_poses)  # noqa: E731
        before = posed_object(tiny_demo.inputs.object, pose(tiny_demo.truth)).means
        after = posed_object(demo.inputs.object, pose(demo.truth)).means
        np.testing.assert_allclose(after, before, atol=1e-5)
    from_config = posed_object(assets.object, assets.initial.object_pose).means
    np.testing.assert_allclose(from_config, posed_object(tiny_demo.inputs.object, tiny_demo.initial.object_pose).means,
                               atol=1e-5)
    assert video_frame_rate(cfg) == pytest.approx(10.0)


@pytest.fixture(scope="module")
def viewer(demo_run):
    from zerohsi_jax.view.app import start_viewer

    root, _ = demo_run
    said = []
    v = start_viewer(root / "run", port=0, max_scene_splats=1000, log=said.append)
    v.said = said
    yield v
    v.close()


def test_viewer_serves_the_run(viewer, demo_run):
    root, demo = demo_run
    with urllib.request.urlopen(viewer.url, timeout=30) as r:
        assert r.status == 200 and b"<html" in r.read(4096).lower()
    # The scene is subsampled for display, and says so in the panel and on the console.
    n_scene = demo.inputs.scene.num
    assert viewer.data.scene.count == n_scene > 1000
    assert f"1,000 of {n_scene:,}" in viewer.scene_note.content
    assert any(f"1,000 of {n_scene:,} scene splats" in line for line in viewer.said)
    # The frame rate comes from the config's video (the run recorded none): 10 fps.
    assert viewer.data.frame_rate == pytest.approx(10.0) and viewer.fps_number.value == pytest.approx(10.0)
    assert viewer.seed_dropdown.options == ("seed 0", "seed 1")
    # The person: the avatar's splats at the refined root, and 5 cm off for stage 2.
    refined = viewer.person_arrays(0, "refined", "avatar")
    stage2 = viewer.person_arrays(0, "stage2", "avatar")
    assert refined.centers.shape == (viewer.frames, demo.inputs.avatar.num_gaussians, 3)
    np.testing.assert_allclose((stage2.centers - refined.centers).mean(axis=(0, 1)), [0.05] * 3, atol=0.02)
    vertices = viewer.person_arrays(1, "refined", "mesh")
    ours = demo.inputs.body(global_orient=demo.truth.human.global_orient, body_pose=demo.truth.human.body_pose,
                            transl=demo.truth.human.transl).vertices
    np.testing.assert_allclose(vertices, ours, atol=1e-5)
    # The timeline: only the frame's node is visible; losses of the frame are shown.
    viewer.set_frame(2)
    nodes = viewer._person(viewer._person_key())
    assert [node.visible for node in nodes] == [t == 2 for t in range(viewer.frames)]
    hsi = np.load(root / "run" / "losses.npz")["hsi"][0, 1]
    assert f"{hsi[-1]:.5g}" in viewer.loss_text.content
    np.testing.assert_allclose(viewer.data.run.seeds[0].object_poses[2][:3, 3], viewer._object_frame.position)
    # Play advances the frames by itself; pause stops them.
    viewer.play_button.value = True  # a click: its callback toggles
    seen = {viewer.frame}
    deadline = time.monotonic() + 10
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        seen.add(viewer.frame)
    viewer.play_button.value = True
    assert len(seen) >= 2 and viewer.play_button.label == "Play"
    viewer.set_frame(0)


# ------------------------------------------------------------------------------ a real browser


@pytest.fixture(scope="module")
def browser():
    from zerohsi_jax.view.browser import HeadlessChromium, find_chromium

    if find_chromium() is None:
        reason = ("no Chromium on this machine (apt-get install chromium, or set ZEROHSI_CHROMIUM): "
                  "the viewer was not checked in a browser")
        if os.environ.get("ZEROHSI_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; ZEROHSI_REQUIRE_BROWSER=1 requires it")
        print(reason)
        pytest.skip(reason)
    with HeadlessChromium(width=900, height=640, timeout=120) as b:
        yield b


def _project(points, camera):
    """Pixels of world points in the browser's view, from the camera the client reports to the
    server (OpenCV axes, vertical field of view)."""
    import viser.transforms as vtf

    rot = vtf.SO3(np.asarray(camera.wxyz)).as_matrix()  # camera-to-world
    local = (points - np.asarray(camera.position)) @ rot
    f = 0.5 * camera.image_height / np.tan(0.5 * camera.fov)
    z = np.maximum(local[:, 2], 1e-6)
    return np.stack([f * local[:, 0] / z + 0.5 * camera.image_width, f * local[:, 1] / z + 0.5 * camera.image_height],
                    -1)


def _changed(a, b, threshold=30):
    return np.abs(a.astype(np.int16) - b).max(axis=-1) > threshold


def test_a_browser_draws_the_splats_and_the_person_and_follows_the_slider(browser, viewer):
    from zerohsi_jax.view.app import VIEWER_READY_JS, hide_notifications

    browser.open(viewer.url)
    browser.wait_for(VIEWER_READY_JS)
    hide_notifications(browser)
    first = browser.settled_screenshot()
    # The 3D view, left of the control panel: drawn, not a blank or error page.
    panel_left = int(browser.evaluate("document.querySelector('[role=slider]').closest('.mantine-Paper-root')"
                                      ".getBoundingClientRect().left"))
    view = first[:, : panel_left - 10]
    assert view.std() > 20 and len(np.unique(view.reshape(-1, 3), axis=0)) > 500, "the 3D view is blank"
    # The splats: the room's colours cover the view; the red box (0.85, 0.2, 0.15) is drawn.
    palette = np.unique((viewer.data.scene.rgbs * 255).round().astype(np.int16), axis=0)
    sample = view.reshape(-1, 3)[:: 97].astype(np.int16)
    near = np.abs(sample[:, None, :] - palette[None]).max(-1).min(-1) < 40
    assert near.mean() > 0.5, f"only {near.mean():.0%} of the view has the scene's splat colours"
    red = (view[..., 0] > 150) & (view[..., 1] < 110) & (view[..., 2] < 110)
    assert red.sum() > 30, "the object's splats are not drawn"

    # The person: hiding it changes the picture exactly where its splats project.
    (client,) = viewer.server.get_clients().values()
    viewer.show_person.value = False
    without = browser.settled_screenshot()
    viewer.show_person.value = True
    changed = _changed(first, without)[:, : panel_left - 10]  # the panel's checkbox changes too
    assert changed.sum() > 50, "the person is not drawn"
    pixels = _project(viewer.person_arrays().centers[0], client.camera)
    lo, hi = pixels.min(0) - 12, pixels.max(0) + 12
    ys, xs = np.nonzero(changed)
    inside = (xs >= lo[0]) & (xs <= hi[0]) & (ys >= lo[1]) & (ys <= hi[1])
    # A few edge pixels of the frustum's lines, drawn over the splats, change too.
    assert inside.mean() > 0.85, f"the picture changed outside the person ({inside.mean():.0%} inside)"
    assert lo[0] < xs.mean() < hi[0] and lo[1] < ys.mean() < hi[1]

    # Moving the frame slider with the mouse: the server follows, and the picture changes.
    track = browser.evaluate("(() => { const r = [...document.querySelectorAll('[role=slider]')]"
                             f".find(e => e.getAttribute('aria-valuemax') === '{viewer.frames - 1}')"
                             ".closest('.mantine-Slider-root').getBoundingClientRect();"
                             " return [r.right - 2, r.top + r.height / 2]; })()")
    browser.click(*track)
    deadline = time.monotonic() + 30
    while viewer.frame != viewer.frames - 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert viewer.frame == viewer.frames - 1, "the slider did not reach the server"
    last = browser.settled_screenshot()
    moved = _changed(last, first)[:, : panel_left - 10]
    assert moved.sum() > 100, "moving the frame slider did not change the picture"
