"""Fixtures shared by the serving unit tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def make_ingress(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """make_ingress(engine, model=, key=, app_name=): our ingress serving `model` from `engine` (a stand-in for
    the engine's handle, kept as `.engine_stub`), with alice's `key` in tmp_path (`.keys_dir`, for the test's auth
    settings). After the test the replica's guard forgets the ingress."""
    from bigmodel_serving.ingress import BigModelIngress
    from bigmodel_serving.ingress_guard import unregister

    def make(engine: Any, *, model: str, key: str, app_name: str) -> Any:
        (tmp_path / "alice").write_text(key)
        card = {"id": model, "object": "model", "owned_by": "unit", "permission": [], "metadata": {}}
        made = BigModelIngress({model: engine}, {model: card}, app_name=app_name)
        made.keys_dir, made.engine_stub = tmp_path, engine
        return made

    try:
        yield make
    finally:
        unregister()
