"""A real browser walks the microscope: models -> layer -> unit -> one of its input units.

Playwright drives Debian's Chromium (/usr/bin/chromium, installed by .ci/run);
the server runs as ``microscope serve`` does, in its own process. The last
page's screenshot is kept as a test artifact (test-artifacts/).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from app.core.settings import Settings
from tests.support.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.support.serving import served


@pytest.fixture(scope="module")
def server(web_settings: Settings) -> Iterator[str]:
    with served(web_settings.data_dir) as url:
        yield url


def _images_loaded(page: Page) -> bool:
    return page.evaluate(
        "() => [...document.querySelectorAll('main img')].every(img => img.complete && img.naturalWidth > 0)"
    )


def test_walk_from_the_index_to_an_input_unit(server: str) -> None:
    assert Path(CHROMIUM).is_file(), f"Chromium not found at {CHROMIUM}: apt-get install chromium"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(server + "/")
        page.click('a[href="/models/inceptionv1_caffe"]')
        page.wait_for_url("**/models/inceptionv1_caffe")
        page.click('a[href="/models/inceptionv1_caffe/mixed3b"]')
        page.wait_for_url("**/models/inceptionv1_caffe/mixed3b")
        page.click('a.tile[href="/models/inceptionv1_caffe/mixed3b/0"]')
        page.wait_for_url("**/models/inceptionv1_caffe/mixed3b/0")
        page.wait_for_load_state("networkidle")
        assert page.locator("section.vis img").count() == 4 and _images_loaded(page)
        first_list = page.locator("ol.circuit").first
        shown = first_list.locator("li a").count()
        page.locator("ol.circuit li.more button").first.click()  # htmx: the group's strongest 50 and more
        page.wait_for_function(f"() => document.querySelector('ol.circuit').querySelectorAll('li a').length > {shown}")
        assert page.locator("ol.circuit").first.locator("li a").count() >= 50
        first_input = page.locator("ol.circuit").first.locator("li a").first
        target = first_input.get_attribute("href")
        assert target and target.startswith("/models/inceptionv1_caffe/mixed3a/")
        first_input.click()
        page.wait_for_url("**" + target)
        page.wait_for_load_state("networkidle")
        assert page.locator("h1").inner_text().startswith("mixed3a:" + target.rsplit("/", 1)[1])
        assert page.locator(".examples img").count() >= 4 and _images_loaded(page)
        page.locator(".examples a").first.click()  # htmx: the whole image with the position marked
        page.wait_for_selector("#viewer .marked .box")
        page.screenshot(path=str(ARTIFACTS / "unit-page.png"), full_page=True)
        browser.close()
