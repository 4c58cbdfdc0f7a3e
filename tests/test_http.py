"""HTTP behaviour every route shares: HEAD, 405 with Allow, gzip, and the OpenAPI schema under schemathesis."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app import urls
from app.main import create_app
from app.core.settings import Settings
from tests.support.serving import served


@pytest.fixture
def client(web_settings: Settings) -> Iterator[httpx.Client]:
    with TestClient(create_app(web_settings), base_url="http://microscope", follow_redirects=False) as client:
        yield client


def _get_routes(client: httpx.Client) -> list[str]:
    unit = client.get(urls.unit("inceptionv1_caffe", "mixed3b", 0, json=True)).json()
    return [
        urls.home(), urls.home(json=True), urls.model("inceptionv1_caffe"), urls.model("inceptionv1_caffe", json=True),
        urls.layer("inceptionv1_caffe", "mixed3b"), urls.layer("inceptionv1_caffe", "mixed3b", json=True),
        urls.unit("inceptionv1_caffe", "mixed3b", 0), urls.unit("inceptionv1_caffe", "mixed3b", 0, json=True),
        unit["top_examples"][0]["url"], unit["top_examples"][0]["url"] + ".json",
        unit["inputs"][0]["more_url"], urls.search("mixed3b:3"), urls.search("goldfish", json=True),
        unit["visualizations"][0]["image_url"], urls.static("style.css"), "/openapi.json", "/docs",
    ]


def test_head_answers_every_get_route_with_its_headers_and_no_body(client: httpx.Client) -> None:
    for url in _get_routes(client):
        got, head = client.get(url), client.head(url)
        assert head.status_code == got.status_code, url
        assert head.content == b"" and head.headers.get("content-type") == got.headers.get("content-type"), url
        if "content-length" in got.headers:
            assert head.headers["content-length"] == got.headers["content-length"], url


def test_a_wrong_method_is_405_with_allow(client: httpx.Client) -> None:
    for url in (urls.unit("inceptionv1_caffe", "mixed3b", 0), urls.unit("inceptionv1_caffe", "mixed3b", 0, json=True), urls.home()):
        response = client.post(url)
        assert response.status_code == 405 and response.headers["allow"] == "GET", url
    assert client.delete(urls.home(json=True)).json()["error"] == "Method Not Allowed"


def test_html_and_json_are_gzipped_and_images_are_not(client: httpx.Client) -> None:
    page = client.get(urls.unit("inceptionv1_caffe", "mixed3b", 0), headers={"Accept-Encoding": "gzip"})
    assert page.headers["content-encoding"] == "gzip" and "Accept-Encoding" in page.headers["vary"]
    assert int(page.headers["content-length"]) < len(page.text) / 3
    twin = client.get(urls.unit("inceptionv1_caffe", "mixed3b", 0, json=True), headers={"Accept-Encoding": "gzip"})
    assert twin.headers["content-encoding"] == "gzip" and twin.json()["unit"]["index"] == 0
    image = client.get(twin.json()["visualizations"][0]["image_url"], headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in image.headers


def test_openapi_documents_the_errors_the_routes_return(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            assert {"400", "404"} <= codes and "422" not in codes, path
            assert "200" in codes if method == "get" else {"202", "503"} <= codes, path
    assert client.get(urls.layer("inceptionv1_caffe", "mixed3b", json=True) + "?page=0").status_code == 400
    # found by schemathesis: a rank past SQLite's integers was a 500
    assert client.get(urls.example("inceptionv1_caffe", "mixed3b", 0, "top", 10**25, json=True)).status_code == 404


def test_schemathesis_with_every_check_passes(web_settings: Settings, tmp_path: Path) -> None:
    """Property-based requests from the schema, every check (status codes, Allow on 405, content types...)."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(
        '[parameters]\n"path.model" = "inceptionv1_caffe"\n"path.layer" = "mixed3b"\n'
        '"path.kind" = "top"\n"path.direction" = "inputs"\n"path.other" = "mixed3a"\n'
    )
    with served(web_settings.data_dir) as url:
        result = subprocess.run(
            [str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(config), "run",
             f"{url}/openapi.json", "--checks", "all", "--max-examples", "25", "--seed", "1"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,  # its cache stays out of the checkout
        )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "passed" in result.stdout


def test_allow_names_every_method_of_a_url(client: httpx.Client) -> None:
    """A GET and a POST of one URL are two routes; a 405 names both (found by schemathesis)."""
    render = urls.render("inceptionv1_caffe", "mixed3b", 0, json=True)
    assert client.request("OPTIONS", render).headers["allow"] == "GET, POST"
    probes = client.get(urls.probes("inceptionv1_caffe"))  # not a layer called "probes"
    assert probes.status_code == 405 and probes.headers["allow"] == "POST"
