"""Blobs in S3-compatible object storage, against a local S3 server (moto's server mode), never a mocked client.

The tiny model's main job writes its images to a bucket: the rows and keys
equal a folder store's, the server serves the blobs (through itself, or as
redirects to presigned URLs), gc removes orphans in the bucket, and a store
moves between a bucket and a folder through export and import.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.core.errors import StoreError
from app.main import create_app
from app.core.settings import Settings
from app.core.store.blobs import ObjectBlobs, key_of
from tests.support.contents import contents
from tests.support.cli import microscope
from tests.support.tiny_model import FACTORY


def test_object_blobs_put_flush_list_read_sign_and_remove(s3_blobs: str) -> None:
    blobs = ObjectBlobs(s3_blobs)
    first, second = blobs.put(b"first image", "png"), blobs.put(b"second image", "jpg")
    assert first == key_of(b"first image", "png") and blobs.put(b"first image", "png") == first
    assert ObjectBlobs(s3_blobs).keys() == set()  # nothing is in the bucket before the flush
    blobs.flush()
    again = ObjectBlobs(s3_blobs)
    assert again.keys() == {first, second} and again.has(first) and again.get(second) == b"second image"
    assert httpx.get(again.signed_url(first, 60)).content == b"first image"
    again.remove(first)
    assert ObjectBlobs(s3_blobs).keys() == {second} and not again.has(first)
    with pytest.raises(ValueError, match="not a blob key"):
        again.get("../../etc/passwd")
    with pytest.raises(StoreError, match="s3://"):
        Settings.load(Path("x"), blobs_url="/some/folder")


def test_a_store_with_its_blobs_in_a_bucket_equals_a_folder_store(s3_blobs: str, tiny_settings: Settings,
                                                                   tiny_weights: Path, tiny_images: Path,
                                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "store"
    result = microscope("--blobs", s3_blobs, "precompute", "all", "--model", FACTORY, "--weights", str(tiny_weights),
                        "--images", str(tiny_images), "--data", str(data), "--steps", "4", "--early-steps", "4",
                        "--size", "48", "--batch", "8", "--device", "cpu")
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (data / "blobs").exists()
    in_bucket = Settings.load(data, blobs_url=s3_blobs)
    stored, folder = contents(in_bucket), contents(tiny_settings)  # tiny_settings: the same command, blobs in a folder
    assert stored == folder and stored["blobs"] == stored["referenced"] and len(stored["blobs"]) > 100

    key = stored["artifacts"][0][2]
    client = TestClient(create_app(in_bucket), follow_redirects=False)
    served = client.get(f"/blobs/{key}")
    assert served.status_code == 200 and served.headers["content-type"] == "image/webp"
    assert "immutable" in served.headers["cache-control"] and served.headers["etag"] == f'"{key.split(".")[0]}"'
    assert served.content == (tiny_settings.blob_dir / key[:2] / key[2:4] / key).read_bytes()
    assert client.get(f"/blobs/{key}", headers={"if-none-match": served.headers["etag"]}).status_code == 304
    assert client.get(f"/blobs/{'0' * 64}.png").status_code == 404
    monkeypatch.setenv("MICROSCOPE_BLOBS_REDIRECT", "1")
    redirecting = TestClient(create_app(Settings.load(data, blobs_url=s3_blobs)), follow_redirects=False)
    moved = redirecting.get(f"/blobs/{key}")
    assert moved.status_code == 307 and httpx.get(moved.headers["location"]).content == served.content


def test_gc_export_and_import_work_against_a_bucket(s3_blobs: str, tiny_settings: Settings, tmp_path: Path,
                                                    s3_endpoint: str) -> None:
    from tests.support.s3 import new_bucket

    bundle = tmp_path / "tiny.tar"
    assert microscope("export", str(bundle), "--data", str(tiny_settings.data_dir)).returncode == 0
    imported = microscope("--blobs", s3_blobs, "import", str(bundle), "--data", str(tmp_path / "bucket-store"))
    assert imported.returncode == 0, imported.stderr
    in_bucket = Settings.load(tmp_path / "bucket-store", blobs_url=s3_blobs)
    assert contents(in_bucket) == contents(tiny_settings)

    orphan = ObjectBlobs(s3_blobs)
    orphan.put(b"nothing points at me", "png")
    orphan.flush()
    collected = microscope("--blobs", s3_blobs, "gc", "--data", str(tmp_path / "bucket-store"), "--grace", "0")
    assert collected.returncode == 0 and collected.stdout.startswith("gc: removed 1 unreferenced blobs"), collected.stdout
    assert contents(in_bucket) == contents(tiny_settings)

    back = tmp_path / "back.tar"
    assert microscope("--blobs", s3_blobs, "export", str(back), "--data", str(tmp_path / "bucket-store")).returncode == 0
    other = new_bucket(s3_endpoint)
    assert microscope("--blobs", other, "import", str(back), "--data", str(tmp_path / "other")).returncode == 0
    assert contents(Settings.load(tmp_path / "other", blobs_url=other)) == contents(tiny_settings)
