"""The try-it page's edit mode in a real headless Chromium against the session's Ray Serve: a picture chosen
from disk, a mask painted with the keyboard alone, and the inpainted image shown with the mode and size that
usage reports."""

import re

import numpy as np
import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from browser import chromium, console_errors
from served import MODEL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def by_id(browser, id_: str):
    return browser.find_element(By.ID, id_)


def white_pixels(browser) -> int:
    """The mask's painted pixels, as the page will send them."""
    return browser.execute_script("return edit.mask.getContext('2d').getImageData(0, 0, 256, 256).data"
                                  ".filter((value, index) => index % 4 === 0 && value === 255).length")


def test_a_picture_painted_with_keys_and_pointer_is_inpainted_and_the_mode_is_shown(browser, cluster, tmp_path):
    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(photo)
    browser.get(f"http://127.0.0.1:{cluster.ports.http}/{MODEL}/ui")
    WebDriverWait(browser, 30).until(lambda _: by_id(browser, "generate").is_enabled())
    console_errors(browser)  # empties the log
    assert not by_id(browser, "edit-tools").is_displayed()

    by_id(browser, "image").send_keys(str(photo))
    WebDriverWait(browser, 10).until(lambda _: by_id(browser, "edit-tools").is_displayed())
    mask = by_id(browser, "mask")
    assert not browser.find_element(By.CSS_SELECTOR, "input[name=aspect-ratio]").is_enabled()  # the picture's shape
    assert mask.get_attribute("aria-label") == "Mask painter" and "arrow keys" in by_id(browser, "mask-help").text
    assert by_id(browser, "brush-at").text.endswith("nothing painted yet.")

    # Keyboard only: move the brush, a dab with Space, then a stroke with Space held while the arrows move it.
    mask.send_keys(Keys.ARROW_LEFT, Keys.ARROW_UP, Keys.SPACE)
    ActionChains(browser).key_down(Keys.SPACE).send_keys(Keys.ARROW_RIGHT * 4).key_up(Keys.SPACE).perform()
    at = by_id(browser, "brush-at").text
    assert re.match(r"Brush at \d+, \d+ of 256×256, size \d+; some of the picture is painted", at), at
    painted = white_pixels(browser)
    assert 0 < painted < 256 * 256 / 4  # a stroke, not the whole picture

    # And with the pointer: a drag paints a stroke of its own, below the keyboard's.
    ActionChains(browser).move_to_element_with_offset(mask, -60, 60).click_and_hold().move_by_offset(80, 0) \
        .release().perform()
    assert white_pixels(browser) > painted

    by_id(browser, "prompt").send_keys("a lighthouse")
    by_id(browser, "steps").send_keys("4")
    by_id(browser, "generate").click()
    WebDriverWait(browser, 120).until(
        lambda _: by_id(browser, "progress-text").text.startswith("Done") or by_id(browser, "form-error").text)
    assert by_id(browser, "form-error").text == ""
    (size,) = browser.execute_script("return [...document.querySelectorAll('#results img')].map("
                                     "(image) => [image.naturalWidth, image.naturalHeight])")
    assert size == [256, 256]
    assert by_id(browser, "mode-used").text == "Mode: inpainting, at 256×256."
    assert console_errors(browser) == []

    by_id(browser, "remove-picture").click()  # back to text-to-image
    assert not by_id(browser, "edit-tools").is_displayed() and by_id(browser, "mode-used").text == ""
    assert browser.find_element(By.CSS_SELECTOR, "input[name=aspect-ratio]").is_enabled()
