"""The report in a real browser, offline: every table and plot renders, the console stays clean.

Needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver) and selenium.
One Chromium serves the module's tests (its start-up is most of their time); each test gets it
back at the same window size with its console log read empty.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from test_report import PLOTS, build_report, build_variant_report

pytestmark = [pytest.mark.browser, pytest.mark.slow]
WIDTH = 1280


def find_binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chrome = find_binary("chromium", "chromium-browser", "google-chrome")
    chromedriver = find_binary("chromedriver") or (
        "/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None
    )
    if chrome is None or chromedriver is None:
        pytest.skip(
            "headless browser test needs chromium and chromedriver on PATH "
            "(Debian: apt-get install chromium chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--window-size={WIDTH},900",
        f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        # Offline before the page loads: anything the report tried to fetch would fail and log an error.
        browser.execute_cdp_cmd("Network.enable", {})
        browser.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def driver(browser):
    browser.set_window_size(WIDTH, 900)
    browser.get_log("browser")  # what an earlier page logged is not this test's
    return browser


def test_report_renders_offline(driver, tmp_path):
    html, _, out = build_report(tmp_path)
    driver.get(out.as_uri())

    tables = driver.find_elements(By.TAG_NAME, "table")
    assert len(tables) == html.count("<table") and len(tables) >= 5  # 2 study, runs, machine, definitions
    assert all(t.is_displayed() for t in tables)
    svgs = driver.find_elements(By.CSS_SELECTOR, "figure > svg")
    assert len(svgs) == len(PLOTS)
    for svg in svgs:
        assert svg.size["width"] > 100 and svg.size["height"] > 100, svg.get_attribute("outerHTML")[:80]
    assert driver.find_elements(By.TAG_NAME, "script") == []

    severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []

    # The whole page in one image, for a person to look at.
    driver.set_window_size(WIDTH, driver.execute_script("return document.documentElement.scrollHeight"))
    shot = tmp_path / "report.png"
    assert driver.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def test_variant_report_renders_offline(driver, tmp_path):
    html, _, out = build_variant_report(tmp_path)
    driver.get(out.as_uri())
    variants = driver.find_element(By.ID, "variants")
    assert variants.is_displayed()
    rows = variants.find_elements(By.CSS_SELECTOR, "table.variants tbody tr")
    assert len(rows) == 9
    marked = variants.find_elements(By.CSS_SELECTOR, "td.marked")
    assert marked and all(int(cell.value_of_css_property("font-weight")) >= 700 for cell in marked)
    svgs = driver.find_elements(By.CSS_SELECTOR, "figure > svg")
    assert len(svgs) == len(PLOTS) + 1  # and the variants' speed against time-to-target plot
    assert all(svg.size["width"] > 100 and svg.size["height"] > 100 for svg in svgs)
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def test_compare_page_renders_offline(driver, tmp_path):
    from test_compare import make_study

    from ddpbench.compare import main as compare_main

    bundles = [make_study(tmp_path / "base"), make_study(tmp_path / "fast", hostname="node-b", throughput_factor=1.5)]
    out = tmp_path / "compare.html"
    assert compare_main([*map(str, bundles), "-o", str(out), "--history"]) == 0
    driver.get(out.as_uri())
    for section in ("machines", "settings", "history", "method"):
        assert driver.find_element(By.ID, section).is_displayed()
    differs = driver.find_elements(By.CSS_SELECTOR, "table.machines td.differs")
    assert differs and {cell.text for cell in differs} >= {"node-a", "node-b"}  # the hosts differ
    higher = driver.find_elements(By.CSS_SELECTOR, 'table.compare td[data-marked="higher"]')
    assert len(higher) == 2 and all(int(c.value_of_css_property("font-weight")) >= 700 for c in higher)
    svg = driver.find_element(By.CSS_SELECTOR, "#plot-history > svg")
    assert svg.size["width"] > 100 and svg.size["height"] > 100
    assert driver.find_elements(By.TAG_NAME, "script") == []
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    driver.set_window_size(WIDTH, driver.execute_script("return document.documentElement.scrollHeight"))
    assert driver.save_screenshot(str(tmp_path / "compare.png"))
