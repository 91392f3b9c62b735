"""The interactive viewer of a finished run, served by viser (the viewer nerfstudio and gsplat use).

What it draws: the scene's and the object's Gaussians as splats (the object moved by its pose
of the frame), the person of the frame (the avatar's Gaussians or the SMPL-X mesh), the tracked
camera of the frame as a frustum showing that video frame, and the camera path. Controls: a
frame slider with play/pause, the seed (for batched runs), the pose set (refined or stage 2),
the person's drawing, per-frame losses, and how many splats are sent to the browser.

A large scene is shown as a random subset with a control that says how many of how many: a
browser cannot sort millions of splats per frame without freezing, and nothing is dropped unsaid.
Person drawings are built per (seed, poses, drawing) when first shown, one scene node per frame
(the timeline then only switches visibility).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from pathlib import Path

import numpy as np
from jaxtyping import Float, UInt8

from ..run_results import RunResults, load_config_of, load_run, render_camera, resolve_frame_rate
from .people import avatar_frames, camera_centres, mesh_frames
from .splats import SplatArrays, splat_arrays, subset

VIEWER_READY_JS = "document.querySelector('canvas') !== null && document.querySelectorAll('[role=slider]').length > 0"
"""True in the page once the client has its canvas and the viewer's controls (the server's messages arrived)."""
DEFAULT_MAX_SCENE_SPLATS = 300_000
DEFAULT_MAX_PERSON_SPLATS = 60_000
POSE_SETS = {"refined (stage 3)": "refined", "stage 2 (HSI fit)": "stage2"}
DRAWINGS = ("avatar Gaussians", "SMPL-X mesh")
MESH_COLOR = (110, 170, 235)
CURRENT_CAMERA_COLOR = (235, 120, 20)
OTHER_CAMERA_COLOR = (90, 90, 90)


@dataclasses.dataclass
class ViewerData:
    """Everything the viewer shows, loaded from a run folder and its config."""

    run: RunResults
    scene: SplatArrays
    object: SplatArrays | None
    camera: object  # zerohsi_jax.splat.Camera at the run's render size
    videos: list[UInt8[np.ndarray, "T H W 3"] | None]
    frame_rate: float
    avatar: object
    body: object
    config_path: Path


def load_viewer_data(run_dir, *, config=None, fps: float | None = None, log=print) -> ViewerData:
    """Read a finished run and load what its config names (through `app.load_assets`)."""
    from ..app import load_assets
    from ..io import load_video_for_camera

    run = load_run(run_dir)
    cfg = load_config_of(run_dir, config, needed_for="the viewer")
    rate = resolve_frame_rate(run, cfg, fps)
    assets = load_assets(cfg, render_size=run.image_size)
    camera = render_camera(cfg, run)
    videos: list[np.ndarray | None] = []
    for s in range(len(run.seeds)):
        if s >= len(cfg.video.paths):
            log(f"view: seed {s} has no video in {cfg.base_dir}/config.yaml; its cameras are drawn without frames")
            videos.append(None)
            continue
        path = cfg.path(cfg.video.paths[s])
        try:
            frames, _, _ = load_video_for_camera(path, camera, stride=cfg.video.stride, max_frames=run.frames,
                                                 render_size=(camera.width, camera.height), progress=False)
        except (OSError, ValueError) as err:
            log(f"view: cannot read the video of seed {s} ({err}); its cameras are drawn without frames")
            videos.append(None)
            continue
        if len(frames) < run.frames:
            log(f"view: {path} keeps {len(frames)} frames, the run has {run.frames}; the rest show no frame")
        videos.append(frames)
    return ViewerData(
        run=run,
        scene=splat_arrays(assets.scene),
        object=None if assets.object is None or not run.has_object else splat_arrays(assets.object),
        camera=camera, videos=videos, frame_rate=rate, avatar=assets.avatar, body=assets.body,
        config_path=Path(cfg.base_dir) / "config.yaml",
    )


# ------------------------------------------------------------------------------ geometry helpers


def rotation_wxyz(rotation: Float[np.ndarray, "3 3"]) -> Float[np.ndarray, "4"]:
    import viser.transforms as vtf

    return np.asarray(vtf.SO3.from_matrix(np.asarray(rotation, np.float64)).wxyz)


def world_up(viewmats: Float[np.ndarray, "N 4 4"]) -> Float[np.ndarray, "3"]:
    """The scene's up direction from its cameras: the mean of their image-up axes (-y, OpenCV),
    snapped to the nearest world axis when within 35 degrees (cameras are pitched, rarely rolled,
    and a scene built y-up or z-up should orbit about that axis)."""
    up = -viewmats[:, 1, :3].mean(axis=0)
    up = up / max(np.linalg.norm(up), 1e-12)
    axis = np.zeros(3)
    k = int(np.argmax(np.abs(up)))
    axis[k] = np.sign(up[k])
    return axis if float(up @ axis) > np.cos(np.deg2rad(35.0)) else up


def scene_scale(centres: Float[np.ndarray, "N 3"]) -> float:
    """A robust size of the scene (metres): the 5-95 percentile extent's diagonal."""
    lo, hi = np.percentile(centres, 5, axis=0), np.percentile(centres, 95, axis=0)
    return float(max(np.linalg.norm(hi - lo), 1e-3))


def _assign(node, name: str, value) -> None:
    """Set a node property only when it changes: every assignment is a message to each browser,
    and a timeline step touches every frame's nodes."""
    current = getattr(node, name)
    if isinstance(value, tuple):
        if np.array_equal(np.asarray(current), np.asarray(value)):
            return
    elif current == value:
        return
    setattr(node, name, value)


# ------------------------------------------------------------------------------ the viewer


class Viewer:
    """A viser server showing one run; `set_frame`, the GUI handles and `server` are public so
    that scripts and tests drive it like a person would."""

    def __init__(self, data: ViewerData, *, host: str = "127.0.0.1", port: int = 8080,
                 max_scene_splats: int = DEFAULT_MAX_SCENE_SPLATS,
                 max_person_splats: int = DEFAULT_MAX_PERSON_SPLATS, log=print):
        import viser

        self.data, self.log = data, log
        self.run = data.run
        self.frames = self.run.frames
        self._lock = threading.RLock()
        self._person_nodes: dict[tuple, list] = {}
        self._person_arrays: dict[tuple, object] = {}
        self._camera_nodes: dict[int, list] = {}
        self._trajectory = {}
        self._shown_person: tuple | None = None
        self._scene_node = None
        self._told_subset = False  # the console hears of a subset once; the panel always shows it
        self._plotted_seed = 0  # the loss plot is built with seed 0's losses
        self._stopped = threading.Event()
        self.frame = 0
        self.server = viser.ViserServer(host=host, port=port, verbose=False)
        all_viewmats = np.concatenate([s.viewmats for s in self.run.seeds])
        self.up = world_up(all_viewmats)
        self.server.scene.set_up_direction(tuple(float(v) for v in self.up))
        self.scale = scene_scale(data.scene.centers)
        self._build_gui(max_scene_splats, max_person_splats)
        self._draw_scene()
        self._draw_object_node()
        self._set_initial_view()
        with self._lock:
            self._refresh()
        self._player = threading.Thread(target=self._play_loop, name="zerohsi-view-player", daemon=True)
        self._player.start()

    # ------------------------------------------------------------------------ address and lifetime
    @property
    def port(self) -> int:
        return int(self.server.get_port())

    @property
    def url(self) -> str:
        host = self.server.get_host()
        return f"http://{'localhost' if host in ('0.0.0.0', '::') else host}:{self.port}"

    def close(self) -> None:
        self._stopped.set()
        self.server.stop()

    # ------------------------------------------------------------------------ the GUI
    def _build_gui(self, max_scene_splats: int, max_person_splats: int) -> None:
        gui = self.server.gui
        run = self.run
        with gui.add_folder("Timeline"):
            self.frame_slider = gui.add_slider("frame", 0, max(self.frames - 1, 1), 1, 0,
                                               disabled=self.frames < 2)
            self.play_button = gui.add_button("Play", icon=None)
            self.fps_number = gui.add_number("fps", float(self.data.frame_rate), min=0.1, max=120.0, step=0.1,
                                             hint="playback rate (the run's frame rate to start with)")
        with gui.add_folder("Result"):
            self.seed_dropdown = gui.add_dropdown("seed", [f"seed {s}" for s in range(len(run.seeds))],
                                                  disabled=len(run.seeds) < 2,
                                                  hint="the videos of a batched run, one result each")
            self.poses_dropdown = gui.add_dropdown("poses", list(POSE_SETS), hint="after the refinement, or the "
                                                   "per-frame HSI fit before it")
            self.drawing_dropdown = gui.add_dropdown("person", list(DRAWINGS))
            self.show_person = gui.add_checkbox("show person", True)
            self.show_object = gui.add_checkbox("show object", self.data.object is not None,
                                                disabled=self.data.object is None)
            self.show_scene = gui.add_checkbox("show scene", True)
            self.all_cameras = gui.add_checkbox("all cameras", False, hint="every frame's camera, not only this one")
        with gui.add_folder("Display"):
            n_scene = self.data.scene.count
            self.scene_count = gui.add_slider("scene splats", 0, max(n_scene, 1), max(1, n_scene // 200),
                                              min(n_scene, max_scene_splats),
                                              hint="splats of the scene sent to the browser (a random subset)")
            self.scene_note = gui.add_markdown("")
            self.person_cap = int(max_person_splats)
            self.person_note = gui.add_markdown("")
        with gui.add_folder("Losses"):
            self.loss_text = gui.add_markdown("")
            self.loss_plots = self._loss_plots()
        with gui.add_folder("Run"):
            gui.add_markdown(f"`{run.root}`  \n{len(run.seeds)} seed(s), {self.frames} frames at "
                             f"{self.data.frame_rate:g} fps  \nconfig: `{self.data.config_path}`")

        self.frame_slider.on_update(lambda _: self._locked(self._on_frame))
        self.play_button.on_click(lambda _: self._locked(self._toggle_play))
        for handle in (self.seed_dropdown, self.poses_dropdown, self.drawing_dropdown, self.show_person,
                       self.show_object, self.all_cameras):
            handle.on_update(lambda _: self._locked(self._refresh))
        self.show_scene.on_update(lambda _: self._locked(self._on_scene_visibility))
        self.scene_count.on_update(lambda _: self._locked(self._draw_scene))
        self.playing = False

    def _locked(self, fn) -> None:
        with self._lock:
            fn()

    def _loss_plots(self):
        """Final loss of each frame's camera tracking and HSI fit (frames 1..T-1)."""
        import viser.uplot as uplot

        losses = self.run.losses
        if self.frames < 2 or not any(k in losses for k in ("camera", "hsi")):
            return None
        x = np.arange(1, self.frames, dtype=np.float64)
        series, data = [uplot.Series(label="frame")], [x]
        for key, label, colour in (("camera", "camera tracking", "#2b7bba"), ("hsi", "HSI fit", "#d9480f")):
            if key in losses:
                data.append(np.asarray(losses[key][0, :, -1], np.float64))
                series.append(uplot.Series(label=label, stroke=colour, width=2))
        return self.server.gui.add_uplot(tuple(data), tuple(series), title="final loss per frame", aspect=1.6)

    # ------------------------------------------------------------------------ state
    @property
    def seed(self) -> int:
        return int(self.seed_dropdown.value.split()[-1])

    @property
    def stage(self) -> str:
        return POSE_SETS[self.poses_dropdown.value]

    @property
    def drawing(self) -> str:
        return "avatar" if self.drawing_dropdown.value == DRAWINGS[0] else "mesh"

    def set_frame(self, t: int) -> None:
        """Show frame t: moves the slider, whose update shows the frame (as a person moving it does)."""
        self.frame_slider.value = int(np.clip(t, 0, self.frames - 1))

    def person_arrays(self, seed: int | None = None, stage: str | None = None, drawing: str | None = None):
        """What is drawn for the person of (seed, poses, drawing), the current ones by default:
        `SplatArrays` (T, N, ...) for the avatar, vertices (T, V, 3) for the mesh."""
        key = (self.seed if seed is None else seed, stage or self.stage, drawing or self.drawing)
        with self._lock:
            self._person(key)
            return self._person_arrays[key]

    def _on_frame(self) -> None:
        self.frame = int(np.clip(self.frame_slider.value, 0, self.frames - 1))
        self._refresh()

    def _toggle_play(self) -> None:
        self.playing = not self.playing
        self.play_button.label = "Pause" if self.playing else "Play"

    def _play_loop(self) -> None:
        while not self._stopped.wait(1.0 / max(float(self.fps_number.value), 0.1)):
            if self.playing and self.frames > 1:
                with self._lock:
                    self.frame_slider.value = (self.frame + 1) % self.frames  # its update shows the frame

    # ------------------------------------------------------------------------ drawing
    def _draw_scene(self) -> None:
        full = self.data.scene
        n = int(self.scene_count.value)
        shown = subset(full, n)
        if self._scene_node is not None:
            self._scene_node.remove()
        self._scene_node = self.server.scene.add_gaussian_splats(
            "/scene", shown.centers, shown.covariances, shown.rgbs, shown.opacities, visible=self.show_scene.value)
        note = f"scene: **{shown.count:,} of {full.count:,}** splats shown"
        if shown.count < full.count:
            note += " (a random subset; raise *scene splats* to send more)"
            if not self._told_subset:
                self.log(f"view: showing {shown.count:,} of {full.count:,} scene splats (the 'scene splats' control "
                         "sends more; --max-splats sets the start)")
                self._told_subset = True
        self.scene_note.content = note

    def _on_scene_visibility(self) -> None:
        self._scene_node.visible = bool(self.show_scene.value)

    def _draw_object_node(self) -> None:
        self._object_frame = None
        if self.data.object is None:
            return
        obj = self.data.object
        self._object_frame = self.server.scene.add_frame("/object", show_axes=False)
        self.server.scene.add_gaussian_splats("/object/splats", obj.centers, obj.covariances, obj.rgbs,
                                              obj.opacities)

    def _person_key(self) -> tuple:
        return (self.seed, self.stage, self.drawing)

    def _person(self, key: tuple) -> list:
        """The T scene nodes of one (seed, poses, drawing), built the first time they are shown."""
        if key in self._person_nodes:
            return self._person_nodes[key]
        seed, stage, drawing = key
        params = self.run.seeds[seed].poses[stage]
        viewmats = self.run.seeds[seed].viewmats
        began = time.perf_counter()
        nodes = []
        base = f"/person/seed_{seed}/{stage}/{drawing}"
        if drawing == "avatar":
            frames = avatar_frames(self.data.avatar, params, viewmats)
            per_frame = frames.count
            if per_frame > self.person_cap:
                frames = subset(frames, self.person_cap)
                self.log(f"view: showing {frames.count:,} of {per_frame:,} avatar splats per frame "
                         "(--max-person-splats sets it)")
            self._person_arrays[key] = frames
            self.person_note.content = f"person: **{frames.count:,} of {per_frame:,}** avatar splats per frame"
            for t in range(self.frames):
                f = frames.frame(t)
                nodes.append(self.server.scene.add_gaussian_splats(
                    f"{base}/frame_{t:04d}", f.centers, f.covariances, f.rgbs, f.opacities, visible=False))
        else:
            vertices, faces = mesh_frames(self.data.body, params)
            self._person_arrays[key] = vertices
            for t in range(self.frames):
                nodes.append(self.server.scene.add_mesh_simple(f"{base}/frame_{t:04d}", vertices[t], faces,
                                                               color=MESH_COLOR, side="double", visible=False))
        self.log(f"view: {drawing} of seed {seed} ({stage}) ready in {time.perf_counter() - began:.1f} s")
        self._person_nodes[key] = nodes
        return nodes

    def _cameras(self, seed: int) -> list:
        """The frustums of one seed's tracked cameras, each with its video frame."""
        if seed in self._camera_nodes:
            return self._camera_nodes[seed]
        cam = self.data.camera
        fov = 2.0 * float(np.arctan(0.5 * cam.height / float(cam.fy)))
        aspect = cam.width / cam.height
        viewmats = self.run.seeds[seed].viewmats
        video = self.data.videos[seed] if seed < len(self.data.videos) else None
        centres = camera_centres(viewmats)
        nodes = []
        for t in range(self.frames):
            image = None if video is None or t >= len(video) else video[t]
            nodes.append(self.server.scene.add_camera_frustum(
                f"/cameras/seed_{seed}/frame_{t:04d}", fov, aspect, scale=0.04 * self.scale,
                thickness=0.003 * self.scale, color=OTHER_CAMERA_COLOR, image=image,
                wxyz=rotation_wxyz(viewmats[t, :3, :3].T), position=centres[t], visible=False))
        if self.frames > 1:
            segments = np.stack([centres[:-1], centres[1:]], axis=1)
            self._trajectory[seed] = self.server.scene.add_line_segments(
                f"/cameras/seed_{seed}/path", segments, OTHER_CAMERA_COLOR, thickness=0.002 * self.scale,
                visible=False)
        self._camera_nodes[seed] = nodes
        return nodes

    def _refresh(self) -> None:
        """Make the scene show the current frame, seed, poses and drawing."""
        t, seed = self.frame, self.seed
        key = self._person_key()
        if self._shown_person is not None and self._shown_person != key:
            for node in self._person_nodes[self._shown_person]:
                node.visible = False
        nodes = self._person(key)
        for i, node in enumerate(nodes):
            _assign(node, "visible", bool(self.show_person.value) and i == t)
        self._shown_person = key
        if self._object_frame is not None:
            pose = self.run.seeds[seed].object_poses[t]
            self._object_frame.wxyz = rotation_wxyz(pose[:3, :3])
            self._object_frame.position = pose[:3, 3]
            self._object_frame.visible = bool(self.show_object.value)
        for s in range(len(self.run.seeds)):
            if s != seed and s not in self._camera_nodes:
                continue
            for i, node in enumerate(self._cameras(s)):
                _assign(node, "visible", s == seed and (i == t or bool(self.all_cameras.value)))
                _assign(node, "color", CURRENT_CAMERA_COLOR if i == t else OTHER_CAMERA_COLOR)
            if s in self._trajectory:
                _assign(self._trajectory[s], "visible", s == seed)
        self.loss_text.content = self._loss_text(seed, t)
        if self.loss_plots is not None and self._plotted_seed != seed:
            self._update_loss_plot(seed)
            self._plotted_seed = seed

    def _update_loss_plot(self, seed: int) -> None:
        data = list(self.loss_plots.data)
        keys = [k for k in ("camera", "hsi") if k in self.run.losses]
        for i, key in enumerate(keys):
            data[i + 1] = np.asarray(self.run.losses[key][seed, :, -1], np.float64)
        self.loss_plots.data = tuple(data)

    def _loss_text(self, seed: int, t: int) -> str:
        losses = self.run.losses
        lines = [f"**frame {t}**, seed {seed}"]
        if t == 0:
            lines.append("frame 0 is the initial state: nothing is fitted there")
        else:
            for key, label in (("camera", "camera tracking"), ("hsi", "HSI fit")):
                if key in losses:
                    trace = losses[key][seed, t - 1]
                    lines.append(f"{label}: {trace[0]:.5g} → **{trace[-1]:.5g}** ({trace.shape[-1]} iterations)")
                else:
                    lines.append(f"{label}: not run")
        if "refine" in losses:
            trace = losses["refine"][seed]
            lines.append(f"refinement (whole sequence): {trace[0]:.5g} → **{trace[-1]:.5g}**")
        return "  \n".join(lines)

    def _set_initial_view(self) -> None:
        """Start behind and above the first tracked camera, looking at the person: the frame's
        frustum and its picture are in view, and the scene is seen as the video saw it."""
        seed0 = self.run.seeds[0]
        eye = camera_centres(seed0.viewmats[:1])[0]
        target = np.asarray(seed0.poses["refined"]["transl"][0], np.float64)
        back = eye - target
        distance = max(float(np.linalg.norm(back)), 1e-3)
        right = seed0.viewmats[0, 0, :3]  # the camera's x axis in the world
        # Off to the side, so that the frustum does not stand between the eye and the person.
        position = eye + 0.5 * back + 0.35 * distance * self.up + 0.45 * distance * right
        cam = self.data.camera
        init = self.server.initial_camera
        init.position = tuple(float(v) for v in position)
        init.look_at = tuple(float(v) for v in target)
        init.up = tuple(float(v) for v in self.up)
        init.fov = 2.0 * float(np.arctan(0.5 * cam.height / float(cam.fy)))


# ------------------------------------------------------------------------------ the command


def start_viewer(run_dir, *, host: str = "127.0.0.1", port: int = 8080, config=None, fps: float | None = None,
                 max_scene_splats: int = DEFAULT_MAX_SCENE_SPLATS,
                 max_person_splats: int = DEFAULT_MAX_PERSON_SPLATS, frame: int = 0, log=print) -> Viewer:
    """Load a finished run and serve its viewer (returns at once; `viewer.close()` stops it)."""
    load_run(run_dir)  # an unfinished or damaged run is refused before anything else
    try:
        import viser  # noqa: F401
    except ImportError:
        raise ImportError("the viewer needs viser: pip install 'zerohsi-jax[view]' (or pip install viser)") from None
    data = load_viewer_data(run_dir, config=config, fps=fps, log=log)
    if not 0 <= frame < data.run.frames:
        raise ValueError(f"--frame {frame}: the run has frames 0..{data.run.frames - 1}")
    viewer = Viewer(data, host=host, port=port, max_scene_splats=max_scene_splats,
                    max_person_splats=max_person_splats, log=log)
    viewer.set_frame(frame)
    return viewer


def view_command(run_dir, *, host: str = "127.0.0.1", port: int = 8080, config=None, fps: float | None = None,
                 max_scene_splats: int = DEFAULT_MAX_SCENE_SPLATS, max_person_splats: int = DEFAULT_MAX_PERSON_SPLATS,
                 frame: int = 0, screenshot=None) -> int:
    """`zerohsi-jax view`: serve until Ctrl+C; with `screenshot`, save one picture taken by headless
    Chromium instead and stop."""
    viewer = start_viewer(run_dir, host=host, port=port, config=config, fps=fps, max_scene_splats=max_scene_splats,
                          max_person_splats=max_person_splats, frame=frame)
    try:
        if screenshot is not None:
            from ..io import write_image
            from .browser import BrowserError

            try:
                image = take_screenshot(viewer.url)
            except BrowserError as err:
                print(f"zerohsi-jax view: error: no screenshot: {err}", file=sys.stderr)
                return 2
            write_image(screenshot, image)
            print(f"view: wrote {screenshot} ({image.shape[1]}x{image.shape[0]})")
            return 0
        print(f"zerohsi-jax view: open {viewer.url} in a browser (Ctrl+C stops the viewer)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        viewer.close()


def take_screenshot(url: str, *, width: int = 1200, height: int = 760, timeout: float = 120.0) -> np.ndarray:
    """The viewer at `url` as headless Chromium draws it once it has settled."""
    from .browser import HeadlessChromium

    with HeadlessChromium(width=width, height=height, timeout=timeout) as browser:
        browser.open(url)
        browser.wait_for(VIEWER_READY_JS)
        hide_notifications(browser)
        return browser.settled_screenshot()


def hide_notifications(browser) -> None:
    """Hide the client's pop-up notices (e.g. 'software WebGL'): they would cover the picture."""
    browser.evaluate("(() => { const s = document.createElement('style'); "
                     "s.textContent = '.mantine-Notifications-root { display: none !important; }'; "
                     "document.head.appendChild(s); return true; })()")


__all__ = [
    "DEFAULT_MAX_PERSON_SPLATS",
    "DEFAULT_MAX_SCENE_SPLATS",
    "Viewer",
    "ViewerData",
    "load_viewer_data",
    "start_viewer",
    "take_screenshot",
    "view_command",
]
