"""The web UI's HTTP API as a hostile client uses it: a request Gradio cannot take (a non-numeric value, too few
inputs, a server-side path given as an upload) gets a message that says what is wrong, and the server logs
one line for it, no traceback. (It got `{"error": null}` while the server logged Gradio's traceback.)"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("gradio")

from nextscale.ui.app import serve  # noqa: E402
from nextscale.ui.config import UIConfig  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def url(tiny_pipeline_dir: Path) -> Iterator[str]:
    blocks, address = serve(UIConfig(port=free_port(), device="cpu", checkpoint=str(tiny_pipeline_dir)), block=False)
    yield address
    blocks.close()


def call(url: str, endpoint: str, data: list) -> tuple[str, object]:
    """POST a call to the API and read its result stream: (the last event's name, its data)."""
    request = urllib.request.Request(f"{url}gradio_api/call/{endpoint}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    event_id = json.loads(urllib.request.urlopen(request, timeout=60).read())["event_id"]
    stream = urllib.request.urlopen(f"{url}gradio_api/call/{endpoint}/{event_id}", timeout=120).read().decode()
    events = [block for block in stream.strip().split("\n\n") if block.startswith("event:")]
    name, _, payload = events[-1].partition("\ndata: ")
    return name.removeprefix("event: "), json.loads(payload)


GENERATE = ["a man", 1, 0, 4.0, "linear", 0, 0, 1.0, 1.0, None]  # prompt, images, seed, cfg, ..., model


@pytest.mark.parametrize(
    ("endpoint", "data", "message"),
    [
        ("generate", GENERATE[:1], r"takes 10 inputs \(prompts .*\); the request gave 1"),
        ("generate", [*GENERATE[:3], "abc", *GENERATE[4:]], r"cfg.*expected a `float`.*'abc'"),
        ("upload_image", [{"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}, None],
         r"/etc/passwd.*not uploaded"),
    ],
    ids=["too-few-inputs", "non-numeric-cfg", "server-side-path"],
)
def test_a_request_gradio_cannot_take_gets_a_message_and_no_traceback(url, capfd, endpoint, data, message):
    import re

    capfd.readouterr()
    name, payload = call(url, endpoint, data)
    assert name == "error" and isinstance(payload, dict) and payload.get("error"), payload
    assert re.search(message, payload["error"]), payload["error"]
    logged = capfd.readouterr()
    assert "Traceback" not in logged.out + logged.err, (logged.out + logged.err)[-2000:]


def test_a_nan_cfg_through_the_api_is_refused_by_name(url):
    """A NaN cfg (JSON's NaN) reached the sampler, which blamed float16."""
    name, payload = call(url, "generate", [*GENERATE[:3], float("nan"), *GENERATE[4:]])
    shown = json.dumps(payload).replace("\\\\_", "_")  # the status is Markdown: its underscores are escaped
    assert name == "complete" and "float16" not in shown and "cfg_scale must be a finite number" in shown, shown
