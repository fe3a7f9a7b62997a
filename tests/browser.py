"""A headless Chromium driven by Selenium, for the tests of the try-it page. It is Debian's `chromium` and
`chromium-driver` (`make test` installs them): no browser or driver is downloaded when the tests run."""

from __future__ import annotations

import json
import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def chromium(width: int = 1100, height: int = 900) -> webdriver.Chrome:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("the page tests need Debian's chromium and chromium-driver: `make test` installs them")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    # No sandbox: Chromium refuses to start its sandbox as root, which CI runs as.
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(argument)
    # Console messages, and every request the page makes (Chromium's performance log).
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(options=options, service=Service(driver))


def requested_urls(browser: webdriver.Chrome) -> list[str]:
    """Every URL the browser asked for since the last call (data: and blob: URLs included)."""
    events = (json.loads(entry["message"])["message"] for entry in browser.get_log("performance"))
    return [event["params"]["request"]["url"] for event in events if event["method"] == "Network.requestWillBeSent"]


def console_errors(browser: webdriver.Chrome) -> list[str]:
    """The console's errors since the last call: failed loads, scripts' errors, content security violations."""
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
