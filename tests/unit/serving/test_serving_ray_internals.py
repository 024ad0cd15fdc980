"""The Ray names serving depends on beyond `ray.serve.llm`'s public API still hold in the installed Ray.

When this fails after a Ray upgrade, the message lists what changed; fix serving/bigmodel_serving/ray_internals.py
(the one module that touches Ray Serve LLM's private package) and nothing else.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
PRIVATE_PACKAGE = "ray.llm." + "_internal"  # spelled apart so that this file is not a hit itself


def test_the_pinned_rays_private_names_still_hold() -> None:
    import ray

    from bigmodel_serving.ray_internals import check_pinned_ray

    problems = check_pinned_ray()
    assert not problems, (
        f"Ray {ray.__version__} no longer offers what bigmodel_serving/ray_internals.py expects:\n  "
        + "\n  ".join(problems)
        + "\nAdapt ray_internals.py (and only it) to the new Ray."
    )


def test_adapter_config_is_what_rays_multiplexer_takes() -> None:
    from bigmodel_serving.ray_internals import adapter_config

    first, second = adapter_config("tiny:lora", "/adapters/lora"), adapter_config("tiny:lora", "/adapters/lora")
    assert (first.model_id, first.local_path, first.max_total_tokens) == ("tiny:lora", "/adapters/lora", None)
    assert first.lora_assigned_int_id != second.lora_assigned_int_id  # vLLM tells adapters apart by this id


def test_only_ray_internals_imports_rays_private_modules() -> None:
    found = subprocess.run(
        ["git", "grep", "-l", "-F", PRIVATE_PACKAGE], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.split()
    assert found == ["serving/bigmodel_serving/ray_internals.py"]
