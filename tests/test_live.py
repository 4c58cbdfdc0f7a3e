"""The live side: the job queue, upload checks, the worker's renders and probes, and the pages around them."""

from __future__ import annotations

import dataclasses
import hashlib

import io
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from app import urls
from app.core.jobs import JobState, JobQueue, QueueFull
from app.main import create_app
from app.core.settings import Settings
from app.core.store import Artifact, Layer, Probe, ProbeGroup, ProbeRender, ProbeUnit, Store, Unit
from app.core.uploads import BadUpload, TooLarge, UploadLimits, Unsupported, check_image
from app.core.zoo import ModelSpec
from precompute.optvis.render import resolve_precision
from precompute.running.recipes import Defaults
from precompute.stages.vis import on_demand_config, run_vis
from precompute.running.context import Stage
from precompute.running.worker import Worker
from tests.support.cli import microscope
from tests.support.live import JPEG, MODEL, TINY, artifact_keys, copy_store, jpeg, worker

@pytest.fixture
def spec(tiny_net) -> ModelSpec:  # noqa: ANN001
    return tiny_net.spec


@pytest.fixture
def net(tiny_net):  # noqa: ANN001, ANN201
    return tiny_net


# The queue ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server of its own on a free loopback port (Debian's redis-server)."""
    from tests.support.serving import free_port

    assert shutil.which("redis-server"), "redis-server not found: scripts/system-deps installs it"
    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                                "--save", "", "--appendonly", "yes"], stdout=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    deadline = time.monotonic() + 30
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.1)
    yield f"redis://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a queue lives: a SQLite file (the default) or a Redis database (several hosts)."""
    if request.param == "sqlite":
        return str(tmp_path / "queue.sqlite3")
    url = request.getfixturevalue("redis_url")
    import redis

    redis.Redis.from_url(url).flushall()
    return url


def test_identical_requests_are_one_job_and_the_queue_is_bounded(location: str) -> None:
    queue = JobQueue(location, capacity=2)
    first = queue.request_render(MODEL, "mixed3a", [1])
    assert (first.state, first.position, first.pending) == ("queued", 1, 1)
    assert queue.request_render(MODEL, "mixed3a", [1]) == first and queue.pending_count(MODEL) == 1
    assert queue.request_render(MODEL, "mixed3a", [2]).position == 2
    with pytest.raises(QueueFull, match="full"):
        queue.request_render(MODEL, "mixed3a", [3])
    assert queue.pending_count(MODEL) == 2
    # The queue is durable: a restarted server (a new JobQueue) sees the same jobs.
    again = JobQueue(location, capacity=2)
    assert again.state(JobQueue.render_key(MODEL, "mixed3a", [2])).position == 2


def _uploads(queue: JobQueue) -> list[str]:
    """Upload keys in the queue's key-value storage (the bytes a probe waits with)."""
    keys = (key.decode() if isinstance(key, bytes) else key for key in queue.huey.storage.result_items())
    return sorted(key for key in keys if key.startswith("upload:"))


def test_a_refused_probe_leaves_no_bytes_behind(location: str) -> None:
    """The capacity is checked before the upload is stored (issue 20: 10 refused uploads once kept 7.9 MB)."""
    queue = JobQueue(location, capacity=1)
    queue.request_probe(MODEL, "a" * 64, b"first image")
    for index in range(10):
        with pytest.raises(QueueFull):
            queue.request_probe(MODEL, f"{index:064d}", b"x" * 100_000)
    assert _uploads(queue) == [f"upload:{'a' * 64}"]


def test_a_failing_job_is_retried_a_bounded_number_of_times_then_recorded_failed(location: str, live: Settings,
                                                                              spec: ModelSpec, net) -> None:  # noqa: ANN001
    from app.core.jobs import MAX_ATTEMPTS

    queue = JobQueue(location)
    runs = []

    def crash(model: str, sha256: str, probe_id: str | None) -> None:
        runs.append(sha256)
        raise RuntimeError("disk on fire")

    with Store.open(live) as store:
        running = worker(store, live, spec, net)
        running.queue = queue
        running.probe = crash  # type: ignore[method-assign]
        queue.request_probe(MODEL, "b" * 64, b"image bytes")
        while running.serve_one():
            pass
    key = JobQueue.probe_key(MODEL, "b" * 64)
    assert len(runs) == MAX_ATTEMPTS
    failed = queue.state(key)
    assert failed.state == "failed" and "disk on fire" in failed.message and f"{MAX_ATTEMPTS} times" in failed.message
    assert _uploads(queue) == []  # failed for good: its bytes are gone
    assert queue.request_probe(MODEL, "b" * 64, b"image bytes")[1].state == "failed"  # the same image fails the same way
    assert _uploads(queue) == []


def test_an_input_error_is_recorded_with_its_message_and_not_retried(location: str, live: Settings, spec: ModelSpec,
                                                                     net) -> None:  # noqa: ANN001
    queue = JobQueue(location)
    with Store.open(live) as store:
        running = worker(store, live, spec, net)
        running.queue = queue
        queue.request_probe(MODEL, "c" * 64, b"not an image at all")
        assert running.serve_one() and not running.serve_one()
    failed = queue.state(JobQueue.probe_key(MODEL, "c" * 64))
    assert failed.state == "failed" and failed.message and _uploads(queue) == []


def test_a_dead_workers_job_goes_back_to_the_queue(location: str) -> None:
    queue = JobQueue(location)
    queue.request_render(MODEL, "mixed3a", [1])
    key, _ = queue.take("gone", MODEL)
    assert queue.state(key).state == "running" and queue.pending_count(MODEL) == 0
    queue.beat("alive", "working")  # this process, beating now: its jobs stay where they are
    queue.request_render(MODEL, "mixed3a", [2])
    kept, _ = queue.take("alive", MODEL)
    assert queue.recover() == 1
    assert queue.state(key).state == "queued" and queue.state(kept).state == "running"
    assert queue.take("next", MODEL)[0] == key
    queue.done(key)
    assert queue.state(key).state == "none"


def test_each_model_has_its_own_job_list(location: str) -> None:
    """A worker holds one network: it takes only its model's jobs, the other model's wait for theirs."""
    queue = JobQueue(location)
    queue.request_render("resnet50", "layer1_0", [1])
    queue.request_render(MODEL, "mixed3a", [1])
    assert queue.take("inception-worker", MODEL)[0] == JobQueue.render_key(MODEL, "mixed3a", [1])
    assert queue.take("inception-worker", MODEL) is None
    other = JobQueue.render_key("resnet50", "layer1_0", [1])
    assert queue.state(other) == JobState("queued", 1, 1) and queue.take("resnet-worker", "resnet50")[0] == other


# Uploads -----------------------------------------------------------------------------------


def _encoded(image: Image.Image, kind: str) -> bytes:
    out = io.BytesIO()
    image.save(out, kind)
    return out.getvalue()


@pytest.mark.parametrize(("data", "error", "message"), [
    (b"", BadUpload, "empty"),
    (b"<html>not an image</html>", Unsupported, "not an image"),
    (_encoded(Image.new("RGB", (30, 30)), "GIF"), Unsupported, "GIF"),
    (_encoded(Image.new("RGB", (300, 200), "red"), "JPEG")[:400], BadUpload, "truncated"),
    (_encoded(Image.new("1", (9000, 9000)), "PNG"), TooLarge, "pixels"),
    (b"\xff" * 2_000_001, TooLarge, "bytes"),
])
def test_bad_uploads_are_refused_with_a_reason(data: bytes, error: type, message: str) -> None:
    with pytest.raises(error, match=message) as raised:
        check_image(data, UploadLimits(max_bytes=2_000_000, max_pixels=50_000_000))
    assert 400 <= raised.value.status_code < 500


def test_a_photo_passes_the_upload_checks(tiny_images: Path) -> None:
    photo = jpeg(tiny_images)
    checked = check_image(photo, UploadLimits())
    assert checked.format == "JPEG" and checked.width == Image.open(io.BytesIO(photo)).width and len(checked.sha256) == 64


# The worker --------------------------------------------------------------------------------


def test_a_unit_rendered_on_demand_is_the_unit_precompute_renders(live: Settings, tmp_path: Path, tiny_unrendered: Settings,
                                                                  spec: ModelSpec, net) -> None:  # noqa: ANN001
    queue = JobQueue.for_store(live)
    queue.request_render(MODEL, "stem_0", [5])
    with Store.open(live) as store:
        stats = worker(store, live, spec, net).run(until_idle=True)
        assert stats.jobs == 1
        # precompute vis with the same recipe, over a batch that includes unit 5: it skips it.
        config = on_demand_config(spec.layer("stem_0"), range(4, 8), defaults=TINY, batch=4, input_size=spec.input_size)
        result = run_vis(Stage(store, net, "w", torch.device("cpu"), progress=False), config)
        assert (result.rendered, result.skipped) == (3, 1)
    alone = artifact_keys(live, "stem_0")[5]
    other = copy_store(tiny_unrendered, tmp_path / "batched")
    with Store.open(other) as store:
        run_vis(Stage(store, net, "w", torch.device("cpu"), progress=False), on_demand_config(spec.layer("stem_0"), range(4, 8), defaults=TINY, batch=4,
                                                                                         input_size=spec.input_size))
    batched = artifact_keys(other, "stem_0")[5]
    assert alone[1] == batched[1]  # the same recipe digest
    if resolve_precision("auto", torch.device("cpu")) == "bf16":
        # Each image's own seed and transform draws: the same pixels alone or in a batch of four
        # (bf16 here; in fp32, oneDNN's batched convolutions round differently and Adam amplifies it).
        assert alone[0] == batched[0]


def _served_during(running: Worker, prefix: str) -> list[str]:
    """What ``running`` was doing (its fill's key, starting with ``prefix``) each time it served a request."""
    served: list[str] = []
    original = running.serve_one

    def serve_and_record() -> bool:
        took = original()
        if took and running.doing.startswith(prefix):
            served.append(running.doing)
        return took

    running.serve_one = serve_and_record  # type: ignore[method-assign]
    return served


def test_fill_tunes_every_main_layer_first_and_serves_requests_between_passes(live: Settings, spec: ModelSpec,
                                                                             net) -> None:  # noqa: ANN001
    from sqlalchemy import select

    from app.core.store import UnitTuning

    queue = JobQueue.for_store(live)
    with Store.open(live) as store:
        running = worker(store, live, spec, net, fill=True, fill_batch=4)
        served = _served_during(running, "tune:")
        queue.request_render(MODEL, "mixed", [9])
        assert running.fill_one()  # the first main layer's tuning, during which the waiting request is served
        assert served == ["tune:tiny:stem_0"] and 9 in set(artifact_keys(live, "mixed"))
        while running.tune_one():
            pass
        with store.session() as session:
            tuned = {row for row in session.scalars(select(UnitTuning.unit_id))}
        assert len(tuned) == sum(layer.channels for layer in spec.main_layers)
        assert not queue.claimed()
        again = worker(store, live, spec, net, fill=True, tune=True)
        assert not again.tune_one()  # another worker finds every layer tuned with this recipe


def test_fill_draws_the_first_units_of_every_main_layer_before_any_analysis(live: Settings, spec: ModelSpec,
                                                                            net) -> None:  # noqa: ANN001
    """Issue 34's first hour: a layer page's first units are drawn before the tuning (and what follows it)."""
    from app.core.store import UnitTuning

    with Store.open(live) as store:
        running = worker(store, live, spec, net, fill=True, fill_batch=2, first_look=2, tune=True)
        main = [layer.name for layer in spec.main_layers]
        for _ in main:
            assert running.fill_one()
        assert {name: sorted(artifact_keys(live, name)) for name in main} == {name: [0, 1] for name in main}
        with store.session() as session:
            assert session.scalar(select(func.count()).select_from(UnitTuning)) == 0
        served = _served_during(running, "tune:")
        JobQueue.for_store(live).request_render(MODEL, "mixed", [5])
        assert running.fill_one() and served == [f"tune:tiny:{main[0]}"]  # then the analyses, requests between


def test_the_model_page_says_what_the_worker_does_and_what_comes_next(live: Settings) -> None:
    queue = JobQueue.for_store(live)
    queue.beat("w", "fill:tiny:mixed:0-3")  # this process's heartbeat: alive
    page = TestClient(create_app(live)).get(urls.model(MODEL))
    assert "Now: drawing units 0-3 of mixed." in page.text and "then the first units of every main layer" in page.text
    queue.beat("w", "tune:tiny:res1")
    data = TestClient(create_app(live)).get(urls.model(MODEL, json=True)).json()
    assert data["workers"] == ["computing the tuning curves of res1"]


def test_fill_renders_main_layers_first_and_serves_requests_between_steps(live: Settings, spec: ModelSpec,
                                                                           net) -> None:  # noqa: ANN001
    queue = JobQueue.for_store(live)
    with Store.open(live) as store:
        running = worker(store, live, spec, net, fill=True, fill_batch=4, tune=False)
        assert [layer.name for layer in running.fill_order()[:3]] == ["stem_0", "mixed", "res1"]
        served = _served_during(running, "fill:")
        queue.request_render(MODEL, "mixed", [7])
        assert running.serve_one()  # the request first
        queue.request_render(MODEL, "mixed", [8])
        assert running.fill_one()  # a fill batch, during which the waiting request is served
        assert served and served[0].startswith("fill:tiny:stem_0:0-3")
    rendered = artifact_keys(live, "stem_0")
    assert sorted(rendered) == [0, 1, 2, 3]
    assert {7, 8} <= set(artifact_keys(live, "mixed"))
    assert queue.pending_count(MODEL) == 0 and not queue.claimed()


def test_fill_factors_two_layers_then_renders_their_directions_and_serves_requests_between_steps(
        live: Settings, spec: ModelSpec, net) -> None:  # noqa: ANN001
    """After the tuning, the fill computes NMF groups and a dictionary of two layers (issue 22: the main command's
    worker does), each with its examples; a request waiting meanwhile is served; then the directions are rendered."""
    from app.core.store import Factorization

    queue = JobQueue.for_store(live)
    with Store.open(live) as store:
        running = worker(store, live, spec, net, fill=True, fill_batch=4, tune=False, factor=True,
                         factor_settings={"steps": 60, "samples": 2000, "batch": 128, "examples": 4, "image_batch": 8,
                                          "expansion": 2, "groups": 4})
        served = _served_during(running, "factor:")
        queue.request_render(MODEL, "mixed", [5])
        assert running.fill_one()
        assert served == ["factor:tiny:mixed:nmf"] and 5 in set(artifact_keys(live, "mixed"))
        while running.factor_one():
            pass
        with store.session() as session:
            made = set(session.scalars(select(Layer.name).join(Factorization, Factorization.layer_id == Layer.id)))
        assert made == {"mixed_nmf", "res1_nmf", "mixed_sae", "res1_sae"}
        assert {"mixed_nmf", "mixed_sae"} <= set(running.spec.layer_names)
        derived = [layer.name for layer in running.fill_order() if layer.is_derived]
        assert running.fill_order().index(spec.layer("res2")) < running.fill_order().index(running.spec.layer(derived[0]))
        queue.request_render(MODEL, "res1_sae", [3])  # a direction's page asks for its render
        assert running.serve_one() and 3 in set(artifact_keys(live, "res1_sae"))
        assert not queue.claimed()


# The pages ---------------------------------------------------------------------------------


@pytest.fixture
def client(live: Settings) -> TestClient:
    return TestClient(create_app(live), follow_redirects=False)


def test_an_unrendered_unit_page_queues_its_render_and_says_when_no_worker_runs(
        client: TestClient, live: Settings, spec: ModelSpec, net) -> None:  # noqa: ANN001
    page = client.get(urls.unit(MODEL, "res1", 12))
    assert f'hx-post="{urls.render(MODEL, "res1", 12)}"' in page.text and "top dataset example" in page.text
    assert client.get(urls.unit(MODEL, "res1", 12, json=True)).json()["render_url"] == urls.render(MODEL, "res1", 12)
    queued = client.post(urls.render(MODEL, "res1", 12))
    assert queued.status_code == 202 and 'hx-trigger="every 5s"' in queued.text
    assert "No worker is running" in queued.text and "microscope worker --data" in queued.text
    status = client.get(urls.render(MODEL, "res1", 12, json=True)).json()
    assert (status["state"], status["position"], status["workers"]) == ("queued", 1, 0)
    assert client.post(urls.render(MODEL, "res1", 12, json=True)).json()["position"] == 1  # joined, not added
    with Store.open(live) as store:
        worker(store, live, spec, net).run(until_idle=True)
    done = client.get(urls.render(MODEL, "res1", 12))
    assert 'data-state="rendered"' in done.text and "hx-trigger" not in done.text
    image = client.get(client.get(urls.render(MODEL, "res1", 12, json=True)).json()["unit"]["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/webp"
    assert client.get(urls.unit(MODEL, "res1", 12, json=True)).json()["render_url"] is None


def test_a_layer_can_be_queued_whole_and_the_queue_refuses_a_flood(client: TestClient, live: Settings) -> None:
    answer = client.post(urls.render_layer(MODEL, "res2_conv3_0", json=True))
    assert answer.status_code == 202 and answer.json()["missing"] == 16 and answer.json()["queued"] == 16
    assert JobQueue.for_store(live).pending_count(MODEL) == 2  # 8 units a job
    limited = dataclasses.replace(live, queue_limit=2)
    full = TestClient(create_app(limited)).post(urls.render(MODEL, "res1", 13, json=True))
    assert full.status_code == 503 and "queue is full" in full.json()["error"]
    assert client.post(urls.render(MODEL, "nolayer", 1)).status_code == 404


def test_a_probe_from_upload_to_result_and_gc(client: TestClient, live: Settings, spec: ModelSpec, net,  # noqa: ANN001
                                              tiny_images: Path) -> None:
    photo = jpeg(tiny_images, 3)
    answer = client.post(urls.probes(MODEL), content=photo, headers={"content-type": "image/jpeg"})
    assert answer.status_code == 202 and answer.json()["state"] == "queued"
    sha = answer.json()["id"]
    assert sha != hashlib.sha256(photo).hexdigest() and len(sha) == 22  # random: nobody finds it from the image
    assert client.post(urls.probes(MODEL), content=photo, headers=JPEG).json()["id"] == sha  # waiting already: the same probe
    waiting = client.get(urls.probe(MODEL, sha))
    assert waiting.status_code == 200 and "No worker is running" in waiting.text and "hx-trigger" in waiting.text
    refused = client.post(urls.probes(MODEL), content=b"GIF89a", headers={"content-type": "image/gif"})
    assert refused.status_code == 415 and "error" in refused.json()
    with Store.open(live) as store:
        worker(store, live, spec, net).run(until_idle=True)
    assert client.get(urls.probe_status(MODEL, sha)).headers.get("HX-Refresh") == "true"
    result = client.get(urls.probe(MODEL, sha, json=True)).json()
    assert result["state"] == "done" and len(result["classes"]) == 5
    assert [layer["name"] for layer in result["layers"]] == [layer.name for layer in spec.main_layers]
    assert all(len(layer["units"]) == 8 for layer in result["layers"])
    top = result["layers"][-1]["units"]
    assert [unit["activation"] for unit in top] == sorted((unit["activation"] for unit in top), reverse=True)
    heat = client.get(top[0]["heatmap_url"])
    assert heat.status_code == 200 and Image.open(io.BytesIO(heat.content)).mode == "RGBA"
    # Users' images: private to the probe's URL, never cached by others, not served from /blobs.
    for url in (urls.probe(MODEL, sha), urls.probe(MODEL, sha, True), result["image_url"], top[0]["heatmap_url"]):
        assert client.get(url).headers["cache-control"] == "private, no-store", url
    for url in (result["image_url"], top[0]["heatmap_url"]):
        assert client.get(urls.blob(url.split("/")[-1])).status_code == 404
    other = urls.probe_image(MODEL, sha, "0" * 64 + ".png")
    assert client.get(other).status_code == 404
    page = client.get(urls.probe(MODEL, sha))
    groups = sum(len(layer["groups"]) for layer in result["layers"])
    maps = sum(len(target["maps"]) for target in result["attributions"])
    assert page.text.count('class="heat-toggle"') == 8 * len(result["layers"]) + groups + maps
    assert result["classes"][0]["label"] in page.text
    # The same image again: the stored result at once, from the API and from the form.
    again = client.post(urls.probes(MODEL), content=photo, headers={"content-type": "image/jpeg"})
    assert again.status_code == 200 and again.json()["state"] == "done"
    form = client.post(urls.probe_form(MODEL), files={"image": ("photo.jpg", photo, "image/jpeg")})
    assert form.status_code == 303 and form.headers["location"] == urls.probe(MODEL, sha)
    # Probes are the users' data: gc removes them, and their images with them.
    assert microscope("gc", "--data", str(live.data_dir), "--probes-older-than", "1").stdout.startswith("gc: removed 0 probes")
    assert microscope("gc", "--data", str(live.data_dir), "--probes-older-than", "0", "--grace", "0").returncode == 0
    assert client.get(urls.probe(MODEL, sha)).status_code == 404
    with Store.open(live, readonly=True) as store, store.session() as session:
        assert session.scalar(select(Probe.id)) is None and session.scalar(select(ProbeUnit.id)) is None
        assert not store.blobs.has(top[0]["heatmap_url"].split("/")[-1])


def test_a_probes_neuron_groups_render_on_demand_and_go_with_it(client: TestClient, live: Settings, spec: ModelSpec,
                                                               net, tiny_images: Path) -> None:  # noqa: ANN001
    """Building Blocks' view: each layer's groups with a map and units; a group's direction rendered by a worker."""
    probe_id = client.post(urls.probes(MODEL), content=jpeg(tiny_images, 7), headers=JPEG).json()["id"]
    with Store.open(live) as store:
        worker(store, live, spec, net).run(until_idle=True)
    result = client.get(urls.probe(MODEL, probe_id, json=True)).json()
    layer = result["layers"][-1]
    groups = layer["groups"]
    assert 1 <= len(groups) <= 6 and 0 <= layer["groups_fvu"] < 1
    assert [g["share"] for g in groups] == sorted((g["share"] for g in groups), reverse=True)
    assert abs(sum(g["share"] for g in groups) - 1) < 0.01
    for group in groups:
        weights = [w["weight"] for w in group["units"]]
        assert weights == sorted(weights, reverse=True) and all(0 < w <= 1 for w in weights)
        assert group["units"][0]["unit"]["layer"] == layer["name"] and group["render"]["state"] == "none"
        assert Image.open(io.BytesIO(client.get(group["heatmap_url"]).content)).mode == "RGBA"
    status_url = groups[0]["render"]["status_url"]
    page = client.get(urls.probe(MODEL, probe_id)).text
    assert "Neuron groups" in page and f'hx-post="{status_url}"' in page
    assert client.post(status_url + ".json", headers={"origin": "https://elsewhere.example"}).status_code == 403
    for wrong in (urls.probe_group_render(MODEL, probe_id, layer["name"], 99, True),
                  urls.probe_group_render(MODEL, probe_id, "nolayer", 0, True),
                  urls.probe_group_render(MODEL, "no-such-probe", layer["name"], 0, True)):
        assert client.post(wrong).status_code == 404, wrong
    asked = client.post(status_url + ".json")
    assert asked.status_code == 202 and asked.json()["state"] == "queued"
    assert client.post(status_url + ".json").json()["state"] == "queued"  # the same request joins the job
    with Store.open(live) as store:  # enough steps to see the direction's objective climb
        stats = worker(store, live, spec, net, defaults=Defaults(steps=48, early_steps=48, size=32)).run(until_idle=True)
    assert stats.jobs == 1 and stats.failed == 0
    done = client.get(status_url + ".json").json()
    assert done["state"] == "rendered" and done["recipe"]["technique"] == "group" and done["objective"] > 0
    assert client.post(status_url + ".json").status_code == 200  # rendered: nothing queued again
    picture = client.get(done["image_url"])
    assert picture.status_code == 200 and picture.headers["cache-control"] == "private, no-store"
    assert Image.open(io.BytesIO(picture.content)).size == (TINY.size, TINY.size)
    # The render optimized the group's own direction: it scores higher on it than where it started.
    from precompute.optvis import objectives
    from precompute.optvis.param import PARAMETERIZATIONS
    from precompute.optvis.render import render
    from precompute.optvis.transform import STANDARD
    score = objectives.direction(layer["name"], torch.tensor([_group_vector(live, probe_id, layer["name"], 0)]))
    start = render(net, score, PARAMETERIZATIONS["fourier"](TINY.size), done["recipe"]["unit_seeds"], STANDARD, steps=0)
    assert done["objective"] > 1.5 * float(start.objective[0])
    keys = [g["heatmap_url"].split("/")[-1] for g in groups] + [done["image_url"].split("/")[-1]]
    assert client.delete(urls.probe(MODEL, probe_id, True)).status_code == 202
    assert client.get(status_url + ".json").status_code == 410
    with Store.open(live) as store:
        worker(store, live, spec, net).run(until_idle=True)
        assert not any(store.blobs.has(key) for key in keys)
        with store.session() as session:
            assert session.scalar(select(ProbeGroup.id)) is None and session.scalar(select(ProbeRender.id)) is None


def _group_vector(settings: Settings, probe_id: str, layer: str, group: int) -> list[float]:
    with Store.open(settings, readonly=True) as store, store.session() as session:
        return session.scalar(select(ProbeGroup.vector).join(Probe).join(Layer, ProbeGroup.layer_id == Layer.id)
                              .where(Probe.public_id == probe_id, Layer.name == layer, ProbeGroup.group == group))


def test_the_owner_deletes_a_probe_and_its_images(client: TestClient, live: Settings, spec: ModelSpec, net,  # noqa: ANN001
                                                 tiny_images: Path) -> None:
    photo = jpeg(tiny_images, 5)
    probe_id = client.post(urls.probes(MODEL), content=photo, headers=JPEG).json()["id"]
    with Store.open(live) as store:
        worker(store, live, spec, net).run(until_idle=True)
    result = client.get(urls.probe(MODEL, probe_id, json=True)).json()
    keys = [result["image_url"].split("/")[-1]] + [u["heatmap_url"].split("/")[-1] for l in result["layers"] for u in l["units"]]
    keys += [g["heatmap_url"].split("/")[-1] for l in result["layers"] for g in l["groups"]]
    assert len(keys) > 1 + 8 * len(result["layers"])  # its neuron groups' maps go with it too
    assert result["delete_url"] and 'action="' + result["delete_url"] in client.get(urls.probe(MODEL, probe_id)).text
    missing = client.delete(urls.probe(MODEL, "no-such-probe", True))
    assert missing.status_code == 404 and "no probe" in missing.json()["error"]
    assert client.delete(urls.probe(MODEL, probe_id, True), headers={"origin": "https://elsewhere.example"}).status_code == 403
    gone = client.delete(urls.probe(MODEL, probe_id, True))
    assert gone.status_code == 202 and gone.json()["state"] == "deleted"
    assert client.get(urls.probe(MODEL, probe_id)).status_code == 410  # gone for everyone at once
    assert client.get(result["image_url"]).status_code == 404
    assert client.post(urls.probes(MODEL), content=photo, headers=JPEG).status_code == 409  # until the worker has removed it
    with Store.open(live) as store:
        worker(store, live, spec, net).run(until_idle=True)
        with store.session() as session:
            assert session.scalar(select(Probe.id).where(Probe.public_id == probe_id)) is None
        assert not any(store.blobs.has(key) for key in keys)
    assert client.get(urls.probe(MODEL, probe_id)).status_code == 404
    again = client.post(urls.probe_form(MODEL), files={"image": ("p.jpg", photo, "image/jpeg")})
    fresh = again.headers["location"].rsplit("/", 1)[1]
    assert again.status_code == 303 and fresh != probe_id  # probed anew, under a new id
    # Deleted while it waits: the worker never computes it, and its upload goes.
    assert client.post(urls.probe_delete(MODEL, fresh)).status_code == 303
    with Store.open(live) as store:
        worker(store, live, spec, net).run(until_idle=True)
        with store.session() as session:
            assert session.scalar(select(Probe.id).where(Probe.sha256 == hashlib.sha256(photo).hexdigest())) is None
    assert _uploads(JobQueue.for_store(live)) == []
    assert client.get(urls.probe(MODEL, fresh)).status_code == 404


def test_uploads_are_checked_off_the_event_loop_and_a_known_image_is_not_decoded_again(
        client: TestClient, live: Settings, spec: ModelSpec, net, tiny_images: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    import asyncio

    import app.live

    checks = []

    def check(data: bytes, limits: UploadLimits):  # noqa: ANN202
        try:
            asyncio.get_running_loop()
            checks.append("on the event loop")
        except RuntimeError:
            checks.append("in a thread")
        return check_image(data, limits)

    monkeypatch.setattr(app.live, "check_image", check)
    photo = jpeg(tiny_images, 6)
    assert client.post(urls.probes(MODEL), content=photo, headers=JPEG).status_code == 202
    assert client.post(urls.probes(MODEL), content=photo, headers=JPEG).status_code == 202  # waiting: joined, not decoded
    with Store.open(live) as store:
        worker(store, live, spec, net).run(until_idle=True)
    assert client.post(urls.probes(MODEL), content=photo, headers=JPEG).status_code == 200  # stored: answered from its digest
    assert checks == ["in a thread"]
    assert client.app.state.microscope.upload_checks.total_tokens == 4


def test_bad_uploads_through_http_store_nothing(client: TestClient, live: Settings) -> None:
    before = JobQueue.for_store(live).pending_count(MODEL)
    truncated = _encoded(Image.new("RGB", (300, 200), "red"), "JPEG")[:300]
    assert client.post(urls.probes(MODEL), content=truncated, headers=JPEG).status_code == 400
    assert client.post(urls.probes(MODEL), content=b"", headers=JPEG).status_code == 400
    assert client.post(urls.probes(MODEL), content=truncated).status_code == 415  # no type: not an image/* body
    refused = client.post(urls.probes(MODEL), data={"image": "x"})  # what a cross-site form could send
    assert refused.status_code == 415 and "Content-Type image/jpeg" in refused.json()["error"]
    assert client.post(urls.probes("nomodel"), content=truncated, headers=JPEG).status_code == 404
    small = TestClient(create_app(dataclasses.replace(live, probe_max_bytes=1000)))
    assert small.post(urls.probes(MODEL), content=b"x" * 5000, headers=JPEG).status_code == 413
    photo = _encoded(Image.new("RGB", (64, 64), "blue"), "PNG")
    flood = [("image", (f"{i}.png", photo, "image/png")) for i in range(5)]
    assert client.post(urls.probe_form(MODEL), files=flood).status_code == 400
    assert client.post(urls.probe_form(MODEL), data={"note": "no file"}).status_code == 400
    assert JobQueue.for_store(live).pending_count(MODEL) == before


def test_the_live_server_imports_no_torch_and_keeps_the_store_read_only(live: Settings) -> None:
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from fastapi.testclient import TestClient;"
        "from app.main import create_app; from app.core.settings import Settings;"
        f"app = create_app(Settings.load(Path({str(live.data_dir)!r}))); client = TestClient(app);"
        "assert client.post('/models/tiny/res1/14/render').status_code == 202;"
        "assert client.get('/models/tiny/probe').status_code == 200;"
        "print('torch' in sys.modules, app.state.microscope.store.readonly)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False True"


def test_model_page_links_the_probe_and_follows_the_fill(client: TestClient, live: Settings) -> None:
    page = client.get(urls.model(MODEL))
    assert urls.probe_form(MODEL) in page.text and 'id="coverage"' in page.text and "every 10s" not in page.text
    JobQueue.for_store(live).beat("someone", "filling")
    following = TestClient(create_app(live)).get(urls.model(MODEL))
    assert "every 10s" in following.text and following.status_code == 200
    assert httpx.codes.is_success(client.get(urls.probe_form(MODEL)).status_code)


def test_a_heatmap_puts_each_position_at_its_receptive_fields_centre(spec: ModelSpec) -> None:
    from precompute.live.probe import heatmaps

    layer = spec.layer("res1")
    maps = torch.zeros(2, layer.size, layer.size)
    maps[0, 3, 9] = 5.0
    maps[1] = -1.0  # never above zero: transparent everywhere
    for side in (spec.input_size, spec.input_size // 2):
        hot, cold = (np.asarray(Image.open(io.BytesIO(data))) for data in heatmaps(maps, layer, spec.input_size, side))
        y, x = np.unravel_index(hot[..., 3].argmax(), hot.shape[:2])
        scale = side / spec.input_size
        centre = ((layer.offset + 3 * layer.stride) * scale, (layer.offset + 9 * layer.stride) * scale)
        assert abs(y - centre[0]) <= 1 and abs(x - centre[1]) <= 1, (side, y, x, centre)
        assert round(0.7 * 255) < hot[..., 3].max() <= round(0.85 * 255) and cold[..., 3].max() == 0


def test_two_workers_fill_different_batches(live: Settings, spec: ModelSpec, net) -> None:  # noqa: ANN001
    queue = JobQueue.for_store(live)
    with Store.open(live) as store:
        first = worker(store, live, spec, net, fill=True, fill_batch=4, tune=False)
        second = worker(store, live, spec, net, fill=True, fill_batch=4, tune=False)
        first.queue.beat(first.name, "filling")
        assert queue.claim(first.name, "fill:tiny:stem_0:0-3")  # the first is busy with units 0-3
        assert second.fill_one()
    assert sorted(artifact_keys(live, "stem_0")) == [4, 5, 6, 7]
    assert queue.claimed() == {"fill:tiny:stem_0:0-3"}
