"""The abuse suite: what a hostile or careless visitor does to a live server on loopback.

Each test starts `microscope serve` (and, where it says so, `microscope worker`)
as real processes on a private copy of the tiny store, drives them over HTTP
in bounded loops, and prints what it measured (``pytest -s`` shows it). The
hostile archives are in `test_hostile_bundles.py`.
"""

from __future__ import annotations

import io
import random
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image
from sqlalchemy import func, select

from app import urls
from app.core.jobs import JobQueue
from app.core.settings import Settings
from app.core.store import Artifact, Layer, Store, Unit, UnitTuning
from tests.conftest import ROOT
from tests.support.live_processes import TINY_ARGS, running_worker
from tests.support.serving import served
from tests.support.cli import microscope
from tests.support.live import MODEL, copy_store
from tests.support.tiny_model import FACTORY

#: Two clients behind a proxy that names them (the only way to be two clients on loopback).
PNG = {"content-type": "image/png"}
PROXY = {"MICROSCOPE_TRUST_FORWARDED": "1", "MICROSCOPE_RATE_LIMIT": "10000/minute"}


def _tiny_png(index: int) -> bytes:
    """A distinct 1x1 PNG of under 100 bytes: the cheapest valid probe there is."""
    out = io.BytesIO()
    Image.new("RGB", (1, 1), (index % 256, index // 256 % 256, 7)).save(out, "PNG")
    return out.getvalue()


def _upload_bytes_in_queue(settings: Settings) -> int:
    """Bytes of uploads the queue's storage holds (what a refused upload must not add to)."""
    storage = JobQueue.for_store(settings).huey.storage
    return sum(len(bytes(value)) for key, value in storage.result_items().items()
               if (key.decode() if isinstance(key, bytes) else key).startswith("upload:"))


@pytest.fixture
def live(tiny_unrendered: Settings, tmp_path: Path) -> Settings:
    return copy_store(tiny_unrendered, tmp_path / "store")


def test_a_flood_of_tiny_probes_from_one_client_leaves_room_for_another(live: Settings) -> None:
    with served(live.data_dir, **PROXY, MICROSCOPE_CLIENT_JOBS="10") as url, httpx.Client(base_url=url) as client:
        answers = [client.post(urls.probes(MODEL), content=_tiny_png(i), headers={**PNG, "x-forwarded-for": "203.0.113.1"})
                   for i in range(60)]
        codes = [answer.status_code for answer in answers]
        other = client.post(urls.probes(MODEL), content=_tiny_png(999), headers={**PNG, "x-forwarded-for": "203.0.113.2"})
    print(f"flood: client A sent 60 tiny PNGs: {codes.count(202)} queued, {codes.count(429)} refused (429); "
          f"client B then got {other.status_code}")
    assert codes.count(202) == 10 and codes.count(429) == 50
    assert other.status_code == 202
    assert "jobs waiting" in answers[-1].json()["error"]
    assert JobQueue.for_store(live).pending_count(MODEL) == 11


def test_refused_uploads_leave_no_bytes_in_the_queue(live: Settings) -> None:
    photo = [_tiny_png(i) for i in range(3)]
    big = []
    for index in range(20):  # 100 KB PNGs of seeded noise (PNG cannot compress it), each distinct
        out = io.BytesIO()
        Image.frombytes("RGB", (190, 180), random.Random(index).randbytes(190 * 180 * 3)).save(out, "PNG")
        big.append(out.getvalue())
    with served(live.data_dir, MICROSCOPE_QUEUE_LIMIT="2", MICROSCOPE_RATE_LIMIT="10000/minute") as url, \
            httpx.Client(base_url=url) as client:
        before = _upload_bytes_in_queue(live)
        accepted = [client.post(urls.probes(MODEL), content=data, headers=PNG) for data in photo[:2]]
        kept = _upload_bytes_in_queue(live)
        refused = [client.post(urls.probes(MODEL), content=data, headers=PNG) for data in big]
        after = _upload_bytes_in_queue(live)
    refused_bytes = sum(len(data) for data in big)
    print(f"refused uploads: {len(refused)} uploads of {refused_bytes:,} bytes answered "
          f"{sorted({r.status_code for r in refused})}; queue upload bytes {before} -> {kept} (2 accepted) -> {after}")
    assert [a.status_code for a in accepted] == [202, 202] and all(r.status_code == 503 for r in refused)
    assert before == 0 and after == kept == sum(len(data) for data in photo[:2])


def test_the_policy_off_and_renders_refuse_what_they_should(live: Settings) -> None:
    render, probe = urls.render(MODEL, "res1", 3, json=True), urls.probes(MODEL)
    seen = {}
    for policy in ("off", "renders", "all"):
        with served(live.data_dir, MICROSCOPE_LIVE=policy) as url, httpx.Client(base_url=url) as client:
            seen[policy] = (client.post(render).status_code, client.post(probe, content=_tiny_png(len(policy)), headers=PNG).status_code,
                            client.post(urls.render_layer(MODEL, "res2", json=True)).status_code,
                            client.get(urls.probe_form(MODEL)).status_code)
            page = client.get(urls.unit(MODEL, "res1", 3)).text
            assert ("hx-post" in page) == (policy != "off")
    print(f"policy: (render, probe, layer render, probe form) answered {seen}")
    assert seen == {"off": (403, 403, 403, 403), "renders": (202, 403, 202, 403), "all": (202, 202, 202, 200)}


def test_a_post_without_the_token_or_from_another_origin_is_refused(live: Settings) -> None:
    token = "a-long-random-token"
    render = urls.render(MODEL, "res1", 5, json=True)
    with served(live.data_dir, MICROSCOPE_TOKEN=token) as url, httpx.Client(base_url=url) as client:
        host = url.removeprefix("http://")
        results = {
            "no token": client.post(render).status_code,
            "a wrong token": client.post(render, headers={"x-microscope-token": "guess"}).status_code,
            "the token, another Origin": client.post(render, headers={"x-microscope-token": token,
                                                                      "origin": "https://evil.example"}).status_code,
            "the token, a Referer of another site": client.post(render, headers={
                "x-microscope-token": token, "referer": "https://evil.example/page"}).status_code,
            "the token, the server's own Origin": client.post(render, headers={"x-microscope-token": token,
                                                                               "origin": f"http://{host}"}).status_code,
            "a DELETE without the token": client.delete(urls.probe(MODEL, "x" * 22, True)).status_code,
        }
    print(f"token and Origin: {results}")
    assert results == {"no token": 403, "a wrong token": 403, "the token, another Origin": 403,
                       "the token, a Referer of another site": 403, "the token, the server's own Origin": 202,
                       "a DELETE without the token": 403}


def test_headers_on_pages_json_blobs_and_probes(live: Settings) -> None:
    with served(live.data_dir) as url, httpx.Client(base_url=url) as client:
        unit = client.get(urls.unit(MODEL, "res1", 0, json=True))
        responses = {"page": client.get(urls.unit(MODEL, "res1", 0)), "json": unit,
                     "blob": client.get(unit.json()["top_examples"][0]["crop_url"]), "404": client.get("/nope"),
                     "probe answer": client.post(urls.probes(MODEL), content=_tiny_png(1), headers=PNG)}
    for name, response in responses.items():
        policy = response.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "frame-ancestors 'none'" in policy, name
        assert response.headers["x-content-type-options"] == "nosniff", name
        assert response.headers["referrer-policy"] == "same-origin", name
    assert responses["probe answer"].headers["cache-control"] == "private, no-store"
    assert str(live.data_dir) not in responses["page"].text


def test_gc_and_a_precompute_stage_beside_a_filling_worker_lose_nothing(live: Settings, tiny_weights: Path) -> None:
    """A worker fills the store while gc runs again and again (forced past the heartbeat) and a vis stage
    writes the same SQLite file: every committed picture is still served, and nobody fails."""
    stage = [sys.executable, "-m", "precompute.cli", "precompute", "vis", "--data", str(live.data_dir), "--model", FACTORY,
             "--weights", str(tiny_weights), "--device", "cpu", "--layers", "res2", "--units", "all", "--batch", "4", "--steps", "24", "--size", "48"]
    gcs = []
    with running_worker(live, tiny_weights, "--model", FACTORY, "--fill") as worker:
        refused = microscope("gc", "--data", str(live.data_dir))
        beside = subprocess.Popen(stage, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (beside.poll() is None or len(gcs) < 5):
            gcs.append(microscope("gc", "--force", "--data", str(live.data_dir)))
            time.sleep(0.5)
        _, stage_errors = beside.communicate(timeout=300)
        worker_alive = worker.poll() is None
    worker_errors = worker.stderr.read().decode() if worker.stderr else ""
    with Store.open(live, readonly=True) as store, store.session() as session:
        keys = session.scalars(select(Artifact.blob_key)).all()
        by_stage = session.scalar(select(func.count()).select_from(Artifact).join(Unit).join(Layer)
                                  .where(Layer.name == "res2"))
        tuned = session.scalar(select(func.count()).select_from(UnitTuning))
    with served(live.data_dir) as url, httpx.Client(base_url=url) as client:
        missing = [key for key in keys if client.get(urls.blob(key)).status_code != 200]
    print(f"gc beside a filling worker: {len(gcs)} forced gc runs, removed "
          f"{[line for g in gcs for line in g.stdout.splitlines()][:1]}...; the vis stage exited {beside.returncode}; "
          f"{len(keys)} pictures committed, {len(missing)} not served")
    assert refused.returncode == 2 and "worker" in refused.stderr
    assert all(g.returncode == 0 for g in gcs), [g.stderr for g in gcs if g.returncode]
    assert beside.returncode == 0, stage_errors[-2000:]
    assert worker_alive and "Traceback" not in worker_errors and "failed" not in worker_errors, worker_errors[-2000:]
    # The stage's 16, and the worker's fill beside it: tuning curves first, then renders.
    assert by_stage == 16 and (tuned or len(keys) > 16) and missing == []
