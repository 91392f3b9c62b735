"""A headless Chromium driven through the DevTools protocol: load a page, click, take screenshots.

Used to check the viewer in a real browser (tests) and for `zerohsi-jax view --screenshot`. It
runs the system's Chromium (Debian's `chromium` package, or $ZEROHSI_CHROMIUM); it never downloads
a browser. WebGL runs on the CPU (SwiftShader), so each frame is slow but exact enough to test.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from jaxtyping import UInt8

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
HEADLESS_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # WebGL on the CPU: newer Chromium needs this to keep SwiftShader as WebGL's fallback.
    "--enable-unsafe-swiftshader", "--hide-scrollbars", "--mute-audio",
)  # fmt: skip


class BrowserError(RuntimeError):
    """Chromium could not be started or did not answer; the message says what to install or check."""


def find_chromium() -> str | None:
    """The Chromium to run: $ZEROHSI_CHROMIUM, else the first of CHROMIUM_NAMES on PATH."""
    explicit = os.environ.get("ZEROHSI_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class HeadlessChromium:
    """`with HeadlessChromium() as browser: browser.open(url); image = browser.screenshot()`."""

    def __init__(self, executable: str | None = None, *, width: int = 1200, height: int = 760,
                 timeout: float = 60.0):
        self.executable = executable or find_chromium()
        if self.executable is None:
            raise BrowserError("no Chromium found: install Debian's package (apt-get install chromium) or set "
                               "ZEROHSI_CHROMIUM to a Chromium binary")
        self.width, self.height, self.timeout = int(width), int(height), float(timeout)
        self._ids = itertools.count(1)
        self._process = None
        self._socket = None
        self._profile = None

    # ------------------------------------------------------------------------ start and stop
    def __enter__(self) -> HeadlessChromium:
        from websockets.sync.client import connect

        # A fresh profile per browser: no state leaks between runs, and DevToolsActivePort is ours.
        self._profile = tempfile.mkdtemp(prefix="zerohsi-chromium-")
        self._process = subprocess.Popen(
            [self.executable, *HEADLESS_FLAGS, f"--user-data-dir={self._profile}", "--remote-debugging-port=0",
             f"--window-size={self.width},{self.height}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            port = self._devtools_port()
            page = self._page_socket_url(port)
            self._socket = connect(page, max_size=256 * 2**20, open_timeout=self.timeout)
            self.call("Page.enable")
            self.call("Runtime.enable")
            self.call("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._socket is not None:
            try:
                self._socket.close()
            except Exception:  # noqa: BLE001 - closing a dead connection is not an error
                pass
            self._socket = None
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
            self._process = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    def _devtools_port(self) -> int:
        marker = Path(self._profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise BrowserError(f"{self.executable} exited at start (code {self._process.returncode}); run it "
                                   "with --headless by hand to see why")
            if marker.is_file() and marker.read_text().strip():
                return int(marker.read_text().split()[0])
            time.sleep(0.1)
        raise BrowserError(f"{self.executable} did not open its DevTools port within {self.timeout:.0f} s")

    def _page_socket_url(self, port: int) -> str:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=self.timeout) as r:
                pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)
        raise BrowserError(f"{self.executable} opened no page")

    # ------------------------------------------------------------------------ the protocol
    def call(self, method: str, **params) -> dict:
        """Send one DevTools command and return its result (events arriving meanwhile are dropped)."""
        ident = next(self._ids)
        self._socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"Chromium did not answer {method} within {self.timeout:.0f} s")
            message = json.loads(self._socket.recv(timeout=left))
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (awaited when it is a promise)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"JavaScript error: {result['exceptionDetails'].get('text')} in {expression[:80]!r}")
        return result.get("result", {}).get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)
        self.wait_for("document.readyState === 'complete'")

    def wait_for(self, expression: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}")
            time.sleep(0.2)

    def click(self, x: float, y: float) -> None:
        """A left click at page pixel (x, y), as a mouse gives it."""
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=float(x), y=float(y), button="left",
                      clickCount=0 if kind == "mouseMoved" else 1)

    def screenshot(self) -> UInt8[np.ndarray, "H W 3"]:
        import base64

        import cv2

        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def settled_screenshot(self, *, interval: float = 1.0, stable: int = 3, timeout: float | None = None,
                           tolerance: float = 0.3) -> UInt8[np.ndarray, "H W 3"]:
        """A screenshot once the page has stopped changing: `stable` screenshots in a row, `interval`
        seconds apart, each within `tolerance` grey levels (mean absolute difference) of the one
        before. The viewer fades its scene in and sorts splats in the background over many
        software-rendered frames, so one unchanged pair is not enough."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        previous, calm = self.screenshot(), 0
        while True:
            time.sleep(interval)
            current = self.screenshot()
            calm = calm + 1 if np.abs(current.astype(np.int16) - previous).mean() < tolerance else 0
            if calm >= stable:
                return current
            if time.monotonic() > deadline:
                raise BrowserError("the page kept changing; no settled screenshot")
            previous = current


__all__ = ["HEADLESS_FLAGS", "BrowserError", "HeadlessChromium", "find_chromium"]
