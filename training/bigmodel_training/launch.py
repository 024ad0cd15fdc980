"""`python -m bigmodel_training launch ...`: torchrun, with the workers' failure passed through.

The arguments are torchrun's own (`torch.distributed.run`), for example

    python -m bigmodel_training launch --nproc-per-node=8 --standalone -m bigmodel_training --config FILE
    python -m bigmodel_training launch --nnodes=2 --nproc-per-node=8 --rdzv-backend=c10d \\
        --rdzv-endpoint=JOB-0.SVC:29400 --rdzv-id=UID --max-restarts=2 -m bigmodel_training --config FILE

and torch's elastic agent does everything: starting one worker per GPU, the rendezvous of the
nodes, restarting every worker of every node from the last checkpoint when one fails or a node is
replaced (--max-restarts), forwarding SIGTERM. What torchrun does not do is say why a worker
failed: it exits 1 and writes no termination message. So each worker writes its
{"reason", "message"} report into its own file (`$BIGMODEL_RANK_REPORTS/rank-N.json`, with its
exit code), and when the workers failed the most specific report becomes the pod's termination
message and its exit code the pod's: one rank's DatasetInvalid (exit 3) wins over the "connection
reset" its peers saw, so the Job's podFailurePolicy and the FineTuneJob status read exactly what
they read from one process. SIGTERM (preemption) ends with exit 143 once the workers have saved.

In an Indexed Job (several pods) the rendezvous endpoint is pod 0's own name, `<job>-0.<job>`:
pod 0 hosts torch's c10d store. torch guesses that from DNS (does the endpoint resolve to one of my
addresses?), and a pod that has just started may not be listed yet, so pod 0 would dial itself
and fail. `JOB_COMPLETION_INDEX`, which the Job controller sets, says it for sure (`is_host`); the
other pods wait for that store as long as the rendezvous waits for them (`read_timeout`).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bigmodel_training.errors import (
    EXIT_ERROR,
    EXIT_OK,
    EXIT_TERMINATED,
    RANK_REPORTS_ENV,
    REASON_ERROR,
    write_termination_message,
)

log = logging.getLogger(__name__)
# Exit codes that say more than "something failed": bad config, bad data, OOM, unsupported, I/O, NaN.
SPECIFIC_EXITS = (2, 3, 4, 5, 6, 7)
JOB_INDEX_ENV = "JOB_COMPLETION_INDEX"  # set by the Job controller in every pod of an Indexed Job


DEFAULT_JOIN_TIMEOUT_S = 600  # torch's own default for the rendezvous' join_timeout


def rendezvous_conf(backend: str, conf: str, env: dict[str, str]) -> str:
    """torchrun's --rdzv-conf, with `is_host` added in an Indexed Job's pods: pod 0 hosts the c10d
    store (the endpoint is its name), the others connect to it. The others also wait for pod 0's
    store as long as the rendezvous waits for joiners (`read_timeout` = `join_timeout`; torch's
    default is 60 s, and pod 0 may start minutes later: an image pull on another node). What the
    conf already says is kept."""
    index = env.get(JOB_INDEX_ENV)
    if backend != "c10d" or index is None:
        return conf
    settings = dict(part.split("=", 1) for part in conf.split(",") if "=" in part)
    added = []
    if "is_host" not in settings:
        added.append(f"is_host={'true' if index == '0' else 'false'}")
    if index != "0" and "read_timeout" not in settings:
        added.append(f"read_timeout={settings.get('join_timeout', DEFAULT_JOIN_TIMEOUT_S)}")
    return ",".join(part for part in (conf, *added) if part)


def _specificity(report: dict[str, Any]) -> tuple[int, float]:
    """Sort key, smallest first: a named reason, then a specific exit code, then SIGTERM, then the rest."""
    code = int(report.get("exit_code") or EXIT_ERROR)
    if report.get("reason") not in (None, REASON_ERROR):
        rank = 0
    elif code in SPECIFIC_EXITS:
        rank = 1
    elif code == EXIT_TERMINATED:
        rank = 2
    else:
        rank = 3
    return rank, -float(report.get("time") or 0.0)


def pick_report(directory: Path) -> dict[str, Any] | None:
    """The most specific worker report in `directory`, or None when no worker wrote one."""
    reports = []
    for path in sorted(directory.glob("rank-*.json")):
        try:
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return min(reports, key=_specificity) if reports else None


def _signal_exit(code: int) -> int:
    """A process exit code as a shell reports it (killed by signal N: 128 + N)."""
    return 128 - code if code < 0 else code


def main(argv: Sequence[str]) -> int:
    """Run torchrun with `argv`; return the exit code the pod should end with."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    reports = Path(os.environ.get(RANK_REPORTS_ENV) or tempfile.mkdtemp(prefix="bigmodel-ranks-"))
    reports.mkdir(parents=True, exist_ok=True)
    os.environ[RANK_REPORTS_ENV] = str(reports)  # the workers inherit the launcher's environment
    args = parse_args(list(argv))
    args.rdzv_conf = rendezvous_conf(args.rdzv_backend, args.rdzv_conf or "", dict(os.environ))
    try:
        run(args)
    except ChildFailedError as exc:
        report = pick_report(reports)
        if report is None:
            rank, failure = exc.get_first_failure()
            code = _signal_exit(failure.exitcode) or EXIT_ERROR
            message = f"worker {rank} exited with code {failure.exitcode} without a report (see the pod log)"
            write_termination_message(REASON_ERROR, message)
            return code
        write_termination_message(str(report.get("reason") or REASON_ERROR), str(report.get("message") or ""))
        return int(report.get("exit_code") or EXIT_ERROR)
    except SignalException as exc:
        log.warning("launcher stopped by %s", exc.sigval.name)
        report = pick_report(reports)
        if report is not None:
            write_termination_message(str(report.get("reason") or REASON_ERROR), str(report.get("message") or ""))
        return EXIT_TERMINATED if exc.sigval == signal.SIGTERM else 128 + int(exc.sigval)
    return EXIT_OK
