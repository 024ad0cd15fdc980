"""`bigmodel operator`: run kopf with our handlers."""

from __future__ import annotations

import logging

from bigmodel_operator.config import load_config


def run_operator(
    *,
    namespaces: list[str],
    all_namespaces: bool,
    liveness: str | None,
    verbose: bool,
    config_file: str | None,
) -> int:
    """Run until interrupted. Watches every namespace unless some are named."""
    import kopf

    from bigmodel_operator import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=verbose)  # kopf owns the logging set-up
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    config = load_config(config_file)
    kopf.run(
        clusterwide=all_namespaces or not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        standalone=True,
        memo=kopf.Memo(config=config),
    )
    return 0
