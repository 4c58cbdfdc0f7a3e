"""A real browser on the live side: a render appears without a reload, a probe, and the honest message.

Chromium (Playwright) against ``microscope serve`` and, where the test says
so, a ``microscope worker`` process on the same private store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from app.core.settings import Settings
from tests.support.live_processes import running_worker
from tests.support.serving import served
from tests.support.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.support.live import copy_store, jpeg
from tests.support.tiny_model import FACTORY


@pytest.fixture(scope="module")
def live(tiny_unrendered: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """The tiny model's store (tests/support/tiny_model.py), examples and circuits but no image."""
    return copy_store(tiny_unrendered, tmp_path_factory.mktemp("browser-live") / "store")


@pytest.fixture(scope="module")
def server(live: Settings) -> Iterator[str]:
    with served(live.data_dir) as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def test_without_a_worker_the_page_says_so_and_how_to_start_one(server: str, browser: Browser) -> None:
    page = browser.new_page()
    page.goto(server + "/models/tiny/res1/10")
    page.wait_for_selector(".live[data-state=queued]")  # htmx posted the request once the page loaded
    message = page.locator(".live .queue-state").inner_text()
    assert "No worker is running" in message and "microscope worker --data" in message
    assert page.locator(".live .placeholder img").count() == 1
    page.close()


def test_an_unrendered_unit_appears_without_a_reload(server: str, browser: Browser, live: Settings,
                                                     tiny_weights: Path) -> None:
    page = browser.new_page()
    with running_worker(live, tiny_weights, "--model", FACTORY):
        page.goto(server + "/models/tiny/res1/11")
        page.evaluate("window.notReloaded = true")
        page.wait_for_selector(".live[data-state=rendered] img", timeout=90_000)
        assert page.evaluate("window.notReloaded") is True  # swapped in by htmx, not a reload
        assert page.evaluate("document.querySelector('.live img').naturalWidth") > 0
    page.close()


def test_probe_an_uploaded_photo_and_toggle_a_heatmap(server: str, browser: Browser, live: Settings,
                                                      tiny_weights: Path, tiny_images: Path, tmp_path: Path) -> None:
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(jpeg(tiny_images, 7))
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    with running_worker(live, tiny_weights, "--model", FACTORY):
        page.goto(server + "/models/tiny")
        page.click("text=probe it with your own image")
        page.set_input_files("input[type=file]", str(photo))
        page.click("form.probe button")
        page.wait_for_selector(".probe-layer", timeout=90_000)  # the waiting page reloads itself when done
    assert page.locator(".probe-layer").count() == 4 and page.locator(".probe-unit").count() == 32
    assert page.locator("table.classes tr").count() == 6
    heat = page.locator(".probe-unit .heat").first
    assert float(heat.evaluate("e => getComputedStyle(e).opacity")) == 0
    page.locator(".probe-unit label.heat-view").first.click()  # (the attribution maps above start shown)
    page.wait_for_function("() => getComputedStyle(document.querySelector('.probe-unit .heat')).opacity === '1'")
    assert page.locator(".attribution-map").count() >= 5  # the top class's and the top unit's maps
    assert float(page.locator(".attribution-map .heat").first.evaluate("e => getComputedStyle(e).opacity")) == 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "probe-page.png"))
    page.close()
