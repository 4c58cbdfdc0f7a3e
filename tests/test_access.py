"""Hosting it: the live policy, the token and login, the Origin check, per-client limits, headers, settings."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import urls
from app.main import create_app
from app.core.settings import Settings, SettingsError, variables
from tests.conftest import ROOT
from tests.support.cli import microscope
from tests.support.live import MODEL, jpeg

BASE = "http://microscope"


def _client(settings: Settings, **changes: object) -> TestClient:
    return TestClient(create_app(dataclasses.replace(settings, **changes)), base_url=BASE, follow_redirects=False)


def test_the_default_policy_follows_the_interface_the_server_listens_on(live: Settings) -> None:  # noqa: F811
    assert dataclasses.replace(live, host="127.0.0.1").live_policy == "all"
    assert dataclasses.replace(live, host="::1").live_policy == "all"
    assert dataclasses.replace(live, host="0.0.0.0").live_policy == "off"
    assert dataclasses.replace(live, host="0.0.0.0", live="renders").live_policy == "renders"


def test_policy_off_refuses_every_live_request_and_shows_no_buttons(live: Settings, tiny_images: Path) -> None:  # noqa: F811
    client = _client(live, host="0.0.0.0")
    refused = client.post(urls.render(MODEL, "res1", 3, json=True))
    assert refused.status_code == 403 and "MICROSCOPE_LIVE=off" in refused.json()["error"]
    assert client.post(urls.render_layer(MODEL, "res1", json=True)).status_code == 403
    assert client.post(urls.probes(MODEL), content=jpeg(tiny_images, 1),
                       headers={"content-type": "image/jpeg"}).status_code == 403
    assert client.get(urls.probe_form(MODEL)).status_code == 403
    unit = client.get(urls.unit(MODEL, "res1", 3))
    assert unit.status_code == 200 and "hx-post" not in unit.text
    assert client.get(urls.unit(MODEL, "res1", 3, json=True)).json()["render_url"] is None
    assert client.get(urls.model(MODEL, json=True)).json()["probe_url"] is None
    assert "Live side on this server: **off**" in client.get("/openapi.json").json()["info"]["description"]


def test_policy_renders_allows_renders_and_refuses_uploads(live: Settings, tiny_images: Path) -> None:  # noqa: F811
    client = _client(live, live="renders")
    assert client.post(urls.render(MODEL, "res1", 3, json=True)).status_code == 202
    upload = client.post(urls.probes(MODEL), content=jpeg(tiny_images, 1), headers={"content-type": "image/jpeg"})
    assert upload.status_code == 403 and "probes are off" in upload.json()["error"]
    assert client.get(urls.model(MODEL, json=True)).json()["probe_url"] is None
    assert 'hx-post="/models/tiny/res1/3/render"' in client.get(urls.unit(MODEL, "res1", 3)).text


def test_a_token_guards_every_post_and_the_login_keeps_it_in_an_httponly_cookie(live: Settings) -> None:  # noqa: F811
    client = _client(live, token="s3cret-token")
    url = urls.render(MODEL, "res1", 4, json=True)
    assert client.post(url).status_code == 403
    assert client.post(url, headers={"X-Microscope-Token": "wrong"}).status_code == 403
    assert client.post(url, headers={"X-Microscope-Token": "s3cret-token"}).status_code == 202
    assert client.get("/login").status_code == 200
    bad = client.post("/login", data={"token": "guess", "next": "/"})
    assert bad.status_code == 403 and "not the token of this server" in bad.text
    good = client.post("/login", data={"token": "s3cret-token", "next": "//evil.example/x"})
    assert good.status_code == 303 and good.headers["location"] == "/"  # no open redirect
    cookie = good.headers["set-cookie"]
    assert "microscope_token=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.post(urls.render(MODEL, "res1", 5, json=True)).status_code == 202  # the cookie carries it


def test_a_post_from_another_origin_is_refused(live: Settings) -> None:  # noqa: F811
    client = _client(live)
    url = urls.render(MODEL, "res1", 6, json=True)
    assert client.post(url, headers={"Origin": "https://evil.example"}).status_code == 403
    assert client.post(url, headers={"Referer": "https://evil.example/page"}).status_code == 403
    assert client.post(url, headers={"Origin": "null"}).status_code == 403
    assert client.post(url, headers={"Origin": BASE}).status_code == 202


def test_one_client_cannot_take_the_whole_queue_or_flood_it(live: Settings) -> None:  # noqa: F811
    shared = _client(live, client_jobs=2, trust_forwarded=True)
    first = {"X-Forwarded-For": "203.0.113.1"}
    assert shared.post(urls.render(MODEL, "res1", 1, json=True), headers=first).status_code == 202
    assert shared.post(urls.render(MODEL, "res1", 2, json=True), headers=first).status_code == 202
    third = shared.post(urls.render(MODEL, "res1", 7, json=True), headers=first)
    assert third.status_code == 429 and "2 jobs waiting" in third.json()["error"]
    other = {"X-Forwarded-For": "203.0.113.2"}
    assert shared.post(urls.render(MODEL, "res1", 7, json=True), headers=other).status_code == 202
    # Without trust, the header is the client's own word: ignored.
    untrusted = _client(live, client_jobs=50, rate_limit="3/minute")
    codes = [untrusted.post(urls.render(MODEL, "res1", 8 + i, json=True),
                            headers={"X-Forwarded-For": f"198.51.100.{i}"}).status_code for i in range(4)]
    assert codes[:3] == [202, 202, 202] and codes[3] == 429


def test_security_headers_on_pages_json_and_blobs(live: Settings) -> None:  # noqa: F811
    client = _client(live)
    blob = client.get(client.get(urls.unit(MODEL, "res1", 0, json=True)).json()["top_examples"][0]["crop_url"])
    for response in (client.get("/"), client.get(urls.model(MODEL, json=True)), blob, client.get("/nope")):
        policy = response.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
    docs = client.get("/docs")
    assert docs.status_code == 200 and "cdn.jsdelivr" not in docs.text and "unpkg" not in docs.text
    assert str(live.data_dir) not in client.get(urls.unit(MODEL, "res1", 0)).text


def test_a_malformed_setting_stops_start_up_with_one_line_naming_it(live: Settings) -> None:  # noqa: F811
    for variable, value in (("MICROSCOPE_QUEUE_LIMIT", "lots"), ("MICROSCOPE_PROBE_MAX_BYTES", "0"),
                            ("MICROSCOPE_LIVE", "maybe"), ("MICROSCOPE_RATE_LIMIT", "fast"),
                            ("MICROSCOPE_BLOBS_REDIRECT", "yes")):
        with pytest.raises(SettingsError, match=variable):
            Settings.load(live.data_dir, environ={variable: value})
    result = microscope("serve", "--data", str(live.data_dir), env={"MICROSCOPE_QUEUE_LIMIT": "lots"})
    assert result.returncode == 2 and "MICROSCOPE_QUEUE_LIMIT is a whole number, not 'lots'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_every_setting_is_in_the_settings_table() -> None:
    table = (ROOT / "docs" / "settings.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`(MICROSCOPE_[A-Z_]+)`", table))
    assert set(variables().values()) <= listed, set(variables().values()) - listed
