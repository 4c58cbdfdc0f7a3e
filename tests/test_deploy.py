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


def test_the_images_are_pinned_hashed_and_run_unprivileged() -> None:
    """The base image by digest, every package from a hashed lock, and a non-root user in both images."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert base and re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", base.group(1))
    assert re.findall(r"^FROM (\S+) AS", dockerfile, re.MULTILINE) == ["${BASE_IMAGE}", "web"]
    installs = re.findall(r"^RUN pip install (.*)$", dockerfile, re.MULTILINE)
    assert installs and all("--require-hashes -r requirements/" in line or "--no-deps ." in line for line in installs)
    stages = re.split(r"^FROM ", dockerfile, flags=re.MULTILINE)[1:]
    assert all(re.findall(r"^USER (\S+)$", stage, re.MULTILINE)[-1] == "microscope" for stage in stages)


@pytest.mark.parametrize("lock", ["web", "precompute", "test"])
def test_each_lock_pins_a_hashed_version_that_meets_pyproject(lock: str) -> None:
    """requirements/*.lock (scripts/lock) pins every dependency pyproject.toml names, within its bounds."""
    import tomllib

    from packaging.requirements import Requirement

    text = (ROOT / "requirements" / f"{lock}.lock").read_text()
    pins = {m.group(1).lower().replace("_", "-"): m.group(2)
            for m in re.finditer(r"^([A-Za-z0-9_.-]+)==(\S+?)(?: ;.*)? \\$", text, re.MULTILINE)}
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    assert pins and all("--hash=sha256:" in block for block in blocks if "==" in block)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = {"web": ["postgres", "redis", "s3"], "precompute": ["precompute", "efficientnet", "postgres", "redis", "s3", "ray"],
              "test": ["precompute", "efficientnet", "test", "postgres", "redis", "s3", "ray"]}[lock]
    for line in project["dependencies"] + [d for extra in extras for d in project["optional-dependencies"][extra]]:
        requirement = Requirement(line)
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{lock}.lock lacks {name}: run scripts/lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{lock}.lock: {name}=={pins[name]} is not {requirement}"


def test_compose_config_accepts_the_file_where_docker_compose_exists() -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("the docker compose plugin is not installed here")
    result = subprocess.run([docker, "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
