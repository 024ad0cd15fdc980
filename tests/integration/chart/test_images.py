"""The container images, checked statically (they cannot be built here: no Docker, no base images).

Each Dockerfile copies only files that exist and that .dockerignore lets through, starts from pinned
base images, installs pinned requirements, and runs as a numeric non-root user; the image names and the
Ray version agree with the operator's defaults and the chart.
"""

from __future__ import annotations

import fnmatch
import re

import pytest
import yaml

from bigmodel_operator.config import OperatorConfig

from .conftest import CHART, REPO

DOCKERFILES = {
    "operator": REPO / "operator" / "Dockerfile",
    "serving-cpu": REPO / "serving" / "Dockerfile.cpu",
    "serving-vllm": REPO / "serving" / "Dockerfile.vllm",
    "trainer": REPO / "training" / "Dockerfile",
}


def _allowed_by_dockerignore(path: str) -> bool:
    allowed = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.removesuffix("/**")):
            allowed = negate
    return allowed


@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile(image: str) -> None:
    text = DOCKERFILES[image].read_text()
    for args in re.findall(r"^COPY (?!.*--from)(.+)$", text, re.MULTILINE):
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"{image}: COPY {source} does not exist"
            assert _allowed_by_dockerignore(source), f"{image}: .dockerignore excludes {source}"
    for name, ref in re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", text, re.MULTILINE):
        tag = ref.rsplit(":", 1)[-1]
        assert ":" in ref and re.search(r"\d+\.\d+", tag), f"{image}: {name}={ref} is not a pinned version"
    user = re.findall(r"^USER (\S+)$", text, re.MULTILINE)[-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) > 0, f"{image}: runs as {user}"
    for lock in re.findall(r"docs/images/[\w.-]+\.lock", text):
        lines = [ln for ln in (REPO / lock).read_text().splitlines() if ln and not ln.startswith("#")]
        assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\[\],-]+==\S+", ln) for ln in lines), f"{lock} is not pinned"


def test_names_and_versions_agree_with_the_operator_and_chart() -> None:
    defaults = OperatorConfig()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == "ghcr.io/bigmodel-operator/operator"
    for field, image in (("vllm", "serving-vllm"), ("transformers", "serving-cpu"), ("trainer", "trainer")):
        assert getattr(defaults.images, field).rsplit(":", 1)[0] == f"ghcr.io/bigmodel-operator/{image}"
        assert values["operatorConfig"]["images"][field] == getattr(defaults.images, field)
    for image in ("serving-cpu", "serving-vllm"):
        # Each serving image installs the operator's Ray version from the lock it copies in; a Ray base
        # image, where one is used, carries the same version.
        dockerfile = DOCKERFILES[image].read_text()
        for base in re.findall(r"rayproject/ray:(\S+)", dockerfile):
            assert base.startswith(f"{defaults.ray_version}-py311"), f"{image}: Ray base {base}"
        locks = re.findall(r"COPY\s+(?:--\S+\s+)*(docs/images/[\w.-]+\.lock)", dockerfile)
        assert locks, f"{image} installs no pinned lock"
        for lock in locks:
            assert f"\nray=={defaults.ray_version}\n" in (REPO / lock).read_text(), f"{lock} lacks ray"
    script = (REPO / "docs" / "images.sh").read_text()
    for image, path in DOCKERFILES.items():
        assert f"{image}) echo {path.relative_to(REPO)}" in script


def test_pinned_requirements_cover_the_project_dependencies() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    base = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.MULTILINE | re.DOTALL)
    assert base
    names = [re.split(r"[<>=\[ ]", dep.strip().strip('",'))[0].lower() for dep in base[1].splitlines() if dep.strip()]
    for lock in sorted((REPO / "docs" / "images").glob("*.lock")):
        pinned = {ln.split("==")[0].lower() for ln in lock.read_text().splitlines() if "==" in ln}
        missing = [name for name in names if name.replace("_", "-") not in pinned]
        assert not missing, f"{lock.name} lacks {missing}: run docs/images/lock.sh"
