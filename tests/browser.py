"""Real-browser test helpers: the UI served by its own console entry point in a subprocess, and a headless
Chromium driven by Selenium (Debian's `chromium` and `chromium-driver`; `.ci/run` installs them).

Everything is bounded in time: the server must answer within SERVER_START_SECONDS, every wait in the page
has its own timeout, and the server is stopped (terminate, then kill) at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest

SERVER_START_SECONDS = 180
CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = ("/usr/bin/chromedriver",)
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,1800",
)
SCREENSHOTS = Path(os.environ.get("NEXTSCALE_UI_SCREENSHOTS", Path(__file__).resolve().parents[1] / "outputs" /
                                  "ui-screenshots"))

Value = TypeVar("Value")


def first_existing(paths: Sequence[str]) -> str | None:
    return next((path for path in paths if Path(path).is_file()), None)


def require_browser() -> tuple[str, str]:
    """(chromium, chromedriver); skip where they are missing, but fail in CI, which must install them."""
    chromium, driver = first_existing(CHROMIUM), first_existing(CHROMEDRIVER)
    if chromium is None or driver is None:
        message = "chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(message + "; .ci/run installs them")
        pytest.skip(message)
    return chromium, driver


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except OSError:
        return None


def fetch(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


class Server:
    """`python -m nextscale.ui` on a free loopback port; its log is kept for the assertions."""

    def __init__(self, args: Sequence[str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = log
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False",
                   PYTHONUNBUFFERED="1")
        self._log_file = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nextscale.ui", "--port", str(self.port), "--device", "cpu", *args],
            stdout=self._log_file, stderr=subprocess.STDOUT, env=env,
        )
        self.started_in = self._wait_ready()

    def _wait_ready(self) -> float:
        started = time.perf_counter()
        while time.perf_counter() - started < SERVER_START_SECONDS:
            if self.process.poll() is not None:
                raise RuntimeError(f"the UI server exited with {self.process.returncode}:\n{self.log_text()}")
            if http_status(self.url) == 200:
                return time.perf_counter() - started
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"the UI server did not answer within {SERVER_START_SECONDS} s:\n{self.log_text()}")

    def log_text(self) -> str:
        self._log_file.flush()
        return self.log.read_text()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=15)
        self._log_file.close()


@contextmanager
def serve(args: Sequence[str], log: Path) -> Iterator[Server]:
    server = Server(args, log)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def chromium() -> Iterator[object]:
    """A headless Chromium with a fresh profile, closed (and its profile removed) afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = require_browser()
    profile = tempfile.mkdtemp(prefix="nextscale-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(condition: Callable[[], Value | None], timeout: float, what: str, interval: float = 0.05) -> Value:
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.perf_counter() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # the page re-renders under us (stale elements): try again
            value = None
        if value:
            return value
        if time.perf_counter() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def screenshot(driver: object, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))  # type: ignore[attr-defined]
    return path
