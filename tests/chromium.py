"""Headless Chromium for the suite's page checks: fetch it, and render a page to a screenshot and a few values.

The browser is the chrome-headless-shell build that the npm package @sparticuz/chromium ships (MIT; brotli-compressed
binary, its NSS libraries, SwiftShader and a font), fetched from the npm registry, the one source of browsers that
CI's network reaches. `make test` fetches it once into .venv/chromium:

    python tests/chromium.py fetch .venv/chromium

`render` drives the browser over the DevTools protocol on a pipe (--remote-debugging-pipe: NUL-separated JSON on
file descriptors 3 and 4), so that no WebSocket client is needed.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import io
import json
import os
import select
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path

PACKAGE = "@sparticuz/chromium"
VERSION = "153.0.0"  # HeadlessChrome 153.0.8010.0
TARBALL = f"https://registry.npmjs.org/{PACKAGE}/-/chromium-{VERSION}.tgz"
# the registry's dist.integrity of that version (npm view @sparticuz/chromium@153.0.0 dist.integrity)
SHA512 = "jiGWqSvPMdu4+P9TilYqAR7yEGPEHINx+lCvE/NqNO/EHYzF/x1hUiI5T6ioVIt7dEy7n88byyT0vk+dnsgQwA=="
DEFAULT_HOME = Path(__file__).resolve().parents[1] / ".venv" / "chromium"
FLAGS = ["--no-sandbox", "--no-zygote", "--disable-gpu", "--no-first-run", "--hide-scrollbars", "--mute-audio",
         "--font-render-hinting=none", "--disable-background-networking", "--disable-component-update"]


def fetch(dest: Path) -> Path:
    """Download the package, check its sha512, and unpack the browser, its libraries and fonts into dest."""
    if (dest / "chromium").is_file() and (dest / "VERSION").is_file() and (dest / "VERSION").read_text() == VERSION:
        (dest / "chromium").touch()  # up to date for make, whose rule depends on this file
        return dest / "chromium"
    import brotli

    with urllib.request.urlopen(TARBALL, timeout=300) as response:
        data = response.read()
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != SHA512:
        raise SystemExit(f"{TARBALL}: sha512 {digest}, expected {SHA512}")
    work = Path(tempfile.mkdtemp(prefix="chromium.", dir=dest.parent if dest.parent.is_dir() else None))
    with tarfile.open(fileobj=io.BytesIO(data)) as tgz:
        members = {m.name: tgz.extractfile(m).read() for m in tgz.getmembers() if m.name.startswith("package/bin/")}
    for name in ("al2023.tar", "swiftshader.tar", "fonts.tar"):
        with tarfile.open(fileobj=io.BytesIO(brotli.decompress(members[f"package/bin/{name}.br"]))) as tar:
            tar.extractall(work, filter="data")
    binary = work / "chromium"
    binary.write_bytes(brotli.decompress(members["package/bin/chromium.br"]))
    binary.chmod(0o755)
    (work / "fonts.conf").write_text(
        f'<?xml version="1.0"?>\n<!DOCTYPE fontconfig SYSTEM "fonts.dtd">\n<fontconfig>\n  <dir>{dest / "fonts"}</dir>\n'
        f"  <dir>/usr/share/fonts</dir>\n  <cachedir>{dest / 'fonts-cache'}</cachedir>\n</fontconfig>\n"
    )
    (work / "VERSION").write_text(VERSION)
    if dest.exists():
        shutil.rmtree(dest)
    work.rename(dest)  # whole or not at all: a killed fetch leaves only its temporary folder
    return dest / "chromium"


def browser(home: Path | None = None) -> Path:
    """The fetched browser (FLOWVAE_CHROMIUM, else .venv/chromium/chromium); an error that says how to fetch it."""
    path = Path(os.environ.get("FLOWVAE_CHROMIUM") or (home or DEFAULT_HOME) / "chromium")
    if not path.is_file():
        raise FileNotFoundError(f"no headless Chromium at {path}: run `make test` (or python tests/chromium.py fetch {path.parent})")
    return path


def _above_4(fd: int) -> int:
    """fd moved above 4, so that the `3<&` and `4>&` of bash below cannot overwrite one pipe end with the other."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


class Page:
    """One page in a headless browser, driven over the DevTools pipe."""

    def __init__(self, binary: Path, width: int, height: int) -> None:
        home = binary.parent
        env = {**os.environ, "LD_LIBRARY_PATH": f"{home / 'lib'}:{home}", "FONTCONFIG_FILE": str(home / "fonts.conf")}
        self.profile = tempfile.mkdtemp(prefix="chromium-profile.")
        to_browser_r, self.to_browser = map(_above_4, os.pipe())
        self.from_browser, from_browser_w = map(_above_4, os.pipe())
        # the browser reads commands on fd 3 and writes replies on fd 4: the shell puts the pipe's ends there
        command = [str(binary), *FLAGS, f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                   "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$@" 3<&{to_browser_r} 4>&{from_browser_w}', "bash", *command],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(to_browser_r, from_browser_w),
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self.buffer = b""
        self.next_id = 0
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def call(self, method: str, timeout: float = 60.0, session: bool = False, **params) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self.buffer:
                raw, self.buffer = self.buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            readable, _, _ = select.select([self.from_browser], [], [], max(0.0, deadline - time.monotonic()))
            if not readable:
                raise TimeoutError(f"{method}: no reply from the browser in {timeout:.0f} s")
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"{method}: the browser exited (code {self.proc.poll()})")
            self.buffer += chunk

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, ready: str, timeout: float = 60.0) -> None:
        """Navigate to url and wait until the JavaScript expression `ready` is true."""
        self.call("Page.navigate", session=True, url=url)
        self.wait(ready, timeout, where=url)

    def wait(self, ready: str, timeout: float = 60.0, where: str = "the page") -> None:
        """Wait until the JavaScript expression `ready` is true (an exception in it counts as false)."""
        deadline = time.monotonic() + timeout
        while not self.evaluate(f"(() => {{ try {{ return Boolean({ready}); }} catch (e) {{ return false; }} }})()"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{where}: `{ready}` still false after {timeout:.0f} s")
            time.sleep(0.2)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for fd in (self.to_browser, self.from_browser):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> "Page":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def crop(png: bytes, left: int = 0, height: int | None = None) -> bytes:
    """The screenshot without its first `left` columns of pixels, cut to its top `height` rows."""
    from PIL import Image

    image = Image.open(io.BytesIO(png))
    out = io.BytesIO()
    image.crop((left, 0, image.width, height or image.height)).save(out, format="PNG")
    return out.getvalue()


def ink(png: bytes) -> tuple[float, int]:
    """(fraction of pixels that are not the page's background colour, number of distinct colours) of a screenshot."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(pixels, axis=0, return_counts=True)
    return 1.0 - counts.max() / len(pixels), len(colours)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "fetch":
        raise SystemExit("usage: python tests/chromium.py fetch DEST")
    print(fetch(Path(sys.argv[2]).resolve()))
