"""Fixtures shared by every test tier."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny random Llama model with a locally trained tokenizer (generated offline, cached).

    Lives in `$BIGMODEL_CACHE/models/tiny-llama-v2` (default `~/.cache/bigmodel`); the first run
    writes it in a few seconds, later runs reuse it.
    """
    from bigmodel_training.tinymodel import make_tiny_model

    return make_tiny_model()
