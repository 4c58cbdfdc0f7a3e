"""The ``microscope`` command as a user runs it: figures, one-line errors, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support.cli import microscope


@pytest.mark.slow
def test_model_eval_reaches_the_readme_accuracy(weights_dir: Path, images_dir: Path) -> None:
    result = microscope("model", "eval", "--weights", str(weights_dir), "--images", str(images_dir))
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["images"] == 1000 and figures["skipped"] == 0
    assert figures["top1"] >= 0.78 and figures["top5"] >= 0.93, figures
    assert figures["seconds"] > 0


def test_eval_skips_and_counts_unreadable_images(weights_dir: Path, images_dir: Path, tmp_path: Path) -> None:
    for synset in ("n01440764", "n01443537"):
        (tmp_path / synset).mkdir()
        source = next((images_dir / synset).iterdir())
        (tmp_path / synset / source.name).write_bytes(source.read_bytes())
    (tmp_path / "n01443537/truncated.jpg").write_bytes(source.read_bytes()[:2000])
    (tmp_path / "n01443537/not-an-image.png").write_text("hello")
    result = microscope("model", "eval", "--weights", str(weights_dir), "--images", str(tmp_path))
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    assert (figures["images"], figures["skipped"]) == (2, 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model", "eval", "--model", "inception"], "unknown model 'inception'; did you mean inceptionv1"),
        (["model", "eval", "--weights", "/nonexistent"], "weights folder /nonexistent does not exist"),
        (["precompute", "catalog", "--model", "resnet"], "unknown model 'resnet'"),
        (["info"], "no store at"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(args: list[str], message: str, tmp_path: Path) -> None:
    result = microscope(*args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert not (tmp_path / "microscope-data").exists()


def test_eval_of_an_empty_folder_is_refused(weights_dir: Path, tmp_path: Path) -> None:
    result = microscope("model", "eval", "--weights", str(weights_dir), "--images", str(tmp_path))
    assert result.returncode == 2 and "holds no JPEG, PNG or WebP images" in result.stderr


def test_catalog_then_info(tmp_path: Path) -> None:
    assert microscope("precompute", "catalog", cwd=tmp_path).returncode == 0
    again = microscope("precompute", "catalog", cwd=tmp_path)
    assert "0 layers and 0 units added" in again.stdout
    info = microscope("info", "--json", cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    (model,) = json.loads(info.stdout)
    assert model["name"] == "inceptionv1_caffe" and len(model["layers"]) == 67
    text = microscope("info", cwd=tmp_path).stdout
    assert "mixed4c_5x5_bottleneck" in text and "13768 units" in text


def test_the_server_side_commands_need_neither_torch_nor_the_precompute_package(tmp_path: Path) -> None:
    """As in the web image: `precompute` cannot be imported, the server's commands still work."""
    code = (
        "import sys; sys.modules['precompute'] = None; sys.modules['torch'] = None;"
        "from app.core.cli import main, with_plugins; cli = with_plugins();"
        "names = {c.name or c.callback.__name__ for c in cli.registered_commands};"
        "assert {'serve', 'info', 'gc', 'export'} <= names and 'worker' not in names, names;"
        f"sys.argv = ['microscope', 'info', '--data', {str(tmp_path / 'none')!r}]; main(cli)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "error:" in result.stderr and "Traceback" not in result.stderr, result.stderr
