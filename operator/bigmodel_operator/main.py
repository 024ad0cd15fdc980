"""`bigmodel operator`: run kopf with our handlers."""

from __future__ import annotations

import logging
import sys

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
    # kopf imports the `kubernetes` client when it is installed (it is, in development venvs) and
    # uses it only to log in; kopf's own kubeconfig/service-account login needs nothing. Keeping the
    # library out saves ~40 MiB of RSS and a second of start-up (docs/development.md).
    sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]
    import kopf

    from bigmodel_operator import handlers  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=verbose)  # kopf owns the logging set-up
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not verbose:
        # kopf logs every handler call at INFO; at thousands of watch events that is most of the CPU.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    config = load_config(config_file)
    kopf.run(
        clusterwide=all_namespaces or not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness,
        standalone=True,
        memo=kopf.Memo(config=config),
    )
    return 0
