"""The try-it page (`GET <route>/ui`), driven in a real headless Chromium against the session's Ray Serve: it
calls the HTTP API every client calls, its progress bar follows the engine's real steps, errors stand beside
their fields, Cancel stops the generation, and nothing is fetched from another host."""

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from browser import chromium, console_errors, requested_urls
from helpers import pixels
from served import API_KEY, KEYED, MODEL, http, serve_log_lines

pytestmark = pytest.mark.slow
STOPPED = r"instill-http call abandoned by its caller: cancelled at step (\d+); stopped after step (\d+)"
# Records what the progress bar and its text showed, for a test to read after the call.
WATCH_PROGRESS = """
const bar = document.getElementById("progress"), text = document.getElementById("progress-text");
window.seen = [];
new MutationObserver(() => seen.push([bar.value, bar.max, text.textContent])).observe(bar, {attributes: true});
"""


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, cluster):
    """The page, freshly loaded with an empty history, once it has read the deployment's status."""
    browser.get(f"http://127.0.0.1:{cluster.ports.http}/{MODEL}/ui")
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    WebDriverWait(browser, 30).until(lambda _: by_id(browser, "generate").is_enabled())
    return browser


def by_id(browser, id_: str):
    return browser.find_element(By.ID, id_)


def fill(browser, fields: dict) -> None:
    for id_, value in fields.items():
        field = by_id(browser, id_)
        field.clear()
        field.send_keys(str(value))


def pick_aspect_ratio(browser, ratio: str) -> None:
    radio = browser.find_element(By.CSS_SELECTOR, f"input[name=aspect-ratio][value='{ratio}']")
    radio.find_element(By.XPATH, "..").click()  # its label: the shape drawn


def generate(browser, images: int, timeout: float = 120) -> list[dict]:
    """Click Generate; the figures shown once `images` of them have come back."""
    # Disabled while the call runs: read in the click's own turn, since a small call may be over by the next command.
    assert browser.execute_script("const button = document.getElementById('generate'); button.click(); "
                                  "return button.disabled;")
    WebDriverWait(browser, timeout).until(
        lambda _: by_id(browser, "progress-text").text.startswith("Done") or by_id(browser, "form-error").text)
    assert by_id(browser, "form-error").text == ""
    figures = shown_images(browser)
    assert len(figures) == images
    return figures


def shown_images(browser) -> list[dict]:
    return browser.execute_script("""
        return [...document.querySelectorAll("#results figure")].map((figure) => {
          const image = figure.querySelector("img"), link = figure.querySelector("a[download]");
          return {src: image.src, width: image.naturalWidth, height: image.naturalHeight,
                  caption: figure.querySelector("figcaption").textContent, href: link.href, file: link.download};
        });""")


def mean_difference(first: dict, second: dict) -> float:
    """Mean difference of two shown JPEGs, in pixel levels (0 to 255)."""
    first, second = (pixels(Image.open(io.BytesIO(base64.b64decode(image["src"].partition(",")[2]))))
                     for image in (first, second))
    return float(np.abs(first - second).mean())


def test_a_generation_moves_the_progress_bar_by_real_steps_and_shows_the_images_with_their_seeds(page, cluster):
    _, status, _ = http(cluster.ports, MODEL)
    page.find_element(By.ID, "prompt").send_keys("a lighthouse at dusk")
    pick_aspect_ratio(page, "16:9")
    fill(page, {"n": 2, "steps": 10})
    page.execute_script(WATCH_PROGRESS)
    first, second = generate(page, images=2)

    # The bar followed the engine's steps, base then refiner, up to the 10 steps of the request.
    seen = page.execute_script("return seen")
    values = [value for value, total, _ in seen if total == 10]
    assert values == sorted(values) and values[-1] == 10 and any(0 < value < 10 for value in values)
    texts = [text for _, _, text in seen]
    assert any(text.startswith("Base: step") for text in texts) and "Refiner: step 10 of 10" in texts

    seed = int(by_id(page, "seed").get_attribute("value"))  # drawn by the page, as "keep this seed" is off
    width, height = status["sizes"]["16:9"]
    for image, image_seed in ((first, seed), (second, seed + 1)):
        assert (image["width"], image["height"]) == (width, height)
        assert image["caption"] == f"Seed {image_seed}"
        assert image["href"].startswith("data:image/jpeg;base64,") and image["file"] == f"sdxl-{image_seed}.jpg"
    stages = r"text encoders [\d.]+, base [\d.]+, refiner [\d.]+, VAE decode [\d.]+, encoding [\d.]+"
    assert re.fullmatch(rf"{width}×{height}\. Seconds: {stages}\.", by_id(page, "timings").text)

    # "Reuse seed" puts the second image's seed into the form; generating it alone gives the same image, up to
    # the float rounding of a batch of one instead of two (a level or two, which JPEG spreads a little).
    page.find_elements(By.CSS_SELECTOR, "#results button.reuse")[1].click()
    assert by_id(page, "seed").get_attribute("value") == str(seed + 1) and by_id(page, "keep-seed").is_selected()
    fill(page, {"n": 1})
    [again] = generate(page, images=1)
    assert again["caption"] == f"Seed {seed + 1}"
    assert mean_difference(again, second) < 0.5 < 10 < mean_difference(again, first)

    # Both generations are in the history, newest first, with their settings.
    cards = page.find_elements(By.CSS_SELECTOR, "#history li")
    assert len(cards) == 2
    assert [len(card.find_elements(By.TAG_NAME, "img")) for card in cards] == [1, 2]
    assert f"seeds {seed + 1} ·" in cards[0].text and f"seeds {seed}, {seed + 1}" in cards[1].text
    assert all("a lighthouse at dusk" in card.text and f"16:9 ({width}×{height})" in card.text for card in cards)


def test_a_bad_value_is_shown_beside_its_field_in_the_pages_words(page):
    page.find_element(By.ID, "prompt").send_keys("a cat")
    fill(page, {"n": 9})
    by_id(page, "generate").click()
    WebDriverWait(page, 30).until(lambda _: by_id(page, "n-error").text)
    assert by_id(page, "n-error").text == "Must be from 1 to 4 on this deployment, got 9."
    assert by_id(page, "n").get_attribute("aria-invalid") == "true"
    assert "n-error" in by_id(page, "n").get_attribute("aria-describedby")
    assert page.switch_to.active_element == by_id(page, "n")
    assert by_id(page, "generate").is_enabled() and shown_images(page) == []

    # The next error replaces it, beside its own field.
    fill(page, {"n": 1, "guidance-scale": "lots"})
    by_id(page, "generate").click()
    WebDriverWait(page, 30).until(lambda _: by_id(page, "guidance-scale-error").text)
    assert by_id(page, "guidance-scale-error").text == 'Must be a number, got "lots".'
    assert by_id(page, "n-error").text == "" and by_id(page, "n").get_attribute("aria-invalid") is None


def progress_is_still(browser) -> bool:
    """The bar shows a value: a <progress> without one is indeterminate (position -1) and animates."""
    return browser.execute_script("return document.getElementById('progress').position") != -1


def test_a_rejected_request_stops_the_bar_and_marks_the_earlier_images_stale(page):
    page.find_element(By.ID, "prompt").send_keys("a cat")
    fill(page, {"steps": 2})
    generate(page, images=1)
    assert "stale" not in by_id(page, "results").get_attribute("class")

    fill(page, {"n": 9})
    by_id(page, "generate").click()
    WebDriverWait(page, 30).until(lambda _: by_id(page, "n-error").text)
    WebDriverWait(page, 10).until(lambda _: by_id(page, "generate").is_enabled())
    assert by_id(page, "progress-text").text == "Not generated: see the message in the form."
    assert progress_is_still(page)
    assert "stale" in by_id(page, "results").get_attribute("class")
    assert by_id(page, "timings").text == "The images above are from an earlier request."

    fill(page, {"n": 1})  # the next images replace them, current again
    generate(page, images=1)
    assert "stale" not in by_id(page, "results").get_attribute("class") and progress_is_still(page)


def test_cancel_stops_the_generation_within_a_step_and_the_page_is_ready_again(page, cluster):
    page.find_element(By.ID, "prompt").send_keys("a long one")
    pick_aspect_ratio(page, "21:9")
    fill(page, {"steps": 100})
    by_id(page, "refiner").send_keys(Keys.SPACE)  # off: base steps only
    by_id(page, "generate").click()
    WebDriverWait(page, 60).until(lambda _: int(by_id(page, "progress").get_attribute("value")) >= 3)
    by_id(page, "cancel").click()

    WebDriverWait(page, 30).until(lambda _: by_id(page, "generate").is_enabled())
    assert re.fullmatch(r"Cancelled at step \d+ of 100\.", by_id(page, "progress-text").text)
    assert not by_id(page, "cancel").is_enabled() and shown_images(page) == []
    request_id = by_id(page, "request-id").text.removeprefix("Request id: ")
    [stop] = serve_log_lines(cluster, request_id, STOPPED)
    cancelled_at, stopped_after = int(stop[1]), int(stop[2])
    assert 3 <= cancelled_at < 100 and stopped_after - cancelled_at <= 1


def test_the_page_loads_nothing_from_another_host_and_breaks_no_content_security_rule(page, cluster):
    requested_urls(page)  # empties the logs of what earlier tests left in them
    console_errors(page)
    page.refresh()
    WebDriverWait(page, 30).until(lambda _: by_id(page, "generate").is_enabled())
    page.find_element(By.ID, "prompt").send_keys("a cat")
    fill(page, {"steps": 2})
    generate(page, images=1)

    urls = requested_urls(page)
    route = f"http://127.0.0.1:{cluster.ports.http}/{MODEL}/"
    assert {f"{route}ui", f"{route}ui/app.js", f"{route}ui/style.css", route} <= set(urls)
    assert [url for url in urls if not url.startswith((route, "data:", "blob:"))] == []
    assert console_errors(page) == []


def test_every_control_is_labelled_the_keyboard_picks_a_shape_and_a_phone_gets_one_column(page):
    unlabelled = page.execute_script("""
        return [...document.querySelectorAll("input, textarea, select, button, progress")]
          .filter((control) => !(control.labels?.length || control.getAttribute("aria-labelledby")
                                 || control.getAttribute("aria-label") || control.textContent.trim()))
          .map((control) => control.outerHTML);""")
    assert unlabelled == []
    assert by_id(page, "progress-text").get_attribute("aria-live") == "polite"

    square = page.find_element(By.CSS_SELECTOR, "input[name=aspect-ratio]:checked")
    assert square.get_attribute("value") == "1:1"
    square.send_keys(Keys.ARROW_RIGHT)  # radio buttons: the arrow keys move the choice
    assert page.find_element(By.CSS_SELECTOR, "input[name=aspect-ratio]:checked").get_attribute("value") == "5:4"
    # The hidden radio button's focus shows on its shape.
    assert page.execute_script("return getComputedStyle(document.activeElement.nextElementSibling).outlineStyle") \
        == "solid"

    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                         {"width": 375, "height": 812, "deviceScaleFactor": 2, "mobile": True})
    try:
        form, output = (page.find_element(By.CSS_SELECTOR, selector).rect for selector in ("#form", ".output"))
        assert form["x"] == output["x"] and output["y"] >= form["y"] + form["height"]  # one column
        assert page.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_deployment_with_a_key_asks_for_it_and_the_page_keeps_it_for_the_session_only(browser, cluster):
    browser.get(f"http://127.0.0.1:{cluster.ports.http}/{KEYED}/ui")
    WebDriverWait(browser, 30).until(lambda _: by_id(browser, "generate").is_enabled())
    assert by_id(browser, "authorization").is_displayed()
    browser.find_element(By.ID, "prompt").send_keys("a cat")
    fill(browser, {"steps": 2, "authorization": "sk-test-wrong"})
    by_id(browser, "generate").click()
    WebDriverWait(browser, 30).until(lambda _: by_id(browser, "authorization-error").text)
    assert by_id(browser, "authorization-error").text == "This is not the deployment's API key."
    assert progress_is_still(browser)

    fill(browser, {"authorization": ""})  # a missing key: its own words, and the bar still too
    by_id(browser, "generate").click()
    WebDriverWait(browser, 30).until(lambda _: "needs" in by_id(browser, "authorization-error").text)
    assert by_id(browser, "authorization-error").text == "This deployment needs its API key."
    WebDriverWait(browser, 10).until(lambda _: by_id(browser, "generate").is_enabled())
    assert progress_is_still(browser)

    fill(browser, {"authorization": API_KEY})
    generate(browser, images=1)
    assert by_id(browser, "authorization-error").text == ""
    stored = browser.execute_script("return [sessionStorage.getItem('sdxl-api-key'), JSON.stringify(localStorage)]")
    assert stored[0] == API_KEY and API_KEY not in stored[1]
