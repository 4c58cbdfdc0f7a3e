"""The deployment files stay consistent with the code (Docker itself cannot run on these machines)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT


def test_compose_file_names_the_services_and_build_targets() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"web", "worker", "redis", "precompute", "precompute-gpu", "postgres"} <= set(services)
    assert services["web"]["environment"]["MICROSCOPE_QUEUE"].startswith("redis://redis:")
    assert services["worker"]["command"][:3] == ["microscope", "worker", "--fill"]
    targets = set(re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE))
    assert services["web"]["build"]["target"] in targets and services["precompute"]["build"]["target"] in targets
    assert services["web"]["volumes"][0].startswith("microscope-data:") and "microscope-data" in compose["volumes"]
    assert services["precompute-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    for path in re.findall(r"^COPY (\S+) \S+$", (ROOT / "Dockerfile").read_text(), re.MULTILINE):
        assert (ROOT / path).exists(), path


def test_compose_config_accepts_the_file_where_docker_compose_exists() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    result = subprocess.run([docker, "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
