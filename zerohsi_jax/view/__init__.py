"""`zerohsi-jax view RUN_DIR`: a finished run in the browser, on viser (the `view` extra).

Modules: `app` (the viewer: loading a run and its config, the scene graph and the controls),
`splats` (Gaussians as a browser draws them, display subsets), `people` (the avatar's Gaussians
and the SMPL-X mesh of every frame), `browser` (headless Chromium through the DevTools protocol,
for tests and `--screenshot`). viser is imported only when a viewer starts.
"""

from .browser import BrowserError, HeadlessChromium, find_chromium
from .splats import SplatArrays, splat_arrays, subset

__all__ = ["BrowserError", "HeadlessChromium", "SplatArrays", "find_chromium", "splat_arrays", "subset"]
