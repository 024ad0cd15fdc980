"""Fixtures for the planning tests: real config.json files of public models in tests/data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bigmodel_operator.planning import ModelShape, parse_model_config

CONFIG_DIR = Path(__file__).resolve().parents[2] / "data" / "model-configs"


def _load_config(name: str) -> dict[str, Any]:
    """The stored config.json of a public model (files are named owner--repo.json)."""
    data: dict[str, Any] = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    return data


@pytest.fixture
def config() -> Callable[[str], dict[str, Any]]:
    """Load a stored config.json by name, e.g. ``config("meta-llama--Llama-3.1-8B")``."""
    return _load_config


@pytest.fixture
def shape() -> Callable[[str], ModelShape]:
    """Parse a stored config.json into a ModelShape."""
    return lambda name: parse_model_config(_load_config(name))
