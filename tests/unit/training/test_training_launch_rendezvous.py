"""torchrun's c10d rendezvous in an Indexed Job: pod 0 hosts the store, whatever DNS says yet, and the
other pods wait for it as long as the rendezvous waits for joiners (issue 20)."""

from __future__ import annotations

import pytest
from torch.distributed.elastic.rendezvous import RendezvousParameters
from torch.distributed.run import parse_args

from bigmodel_training.launch import rendezvous_conf


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        ("0", "join_timeout=1800,is_host=true"),
        ("1", "join_timeout=1800,is_host=false,read_timeout=1800"),
    ],
)
def test_the_job_index_says_which_pod_hosts_the_store(index: str, expected: str) -> None:
    assert rendezvous_conf("c10d", "join_timeout=1800", {"JOB_COMPLETION_INDEX": index}) == expected


def test_without_a_join_timeout_torchs_default_is_waited() -> None:
    assert rendezvous_conf("c10d", "", {"JOB_COMPLETION_INDEX": "3"}) == "is_host=false,read_timeout=600"


@pytest.mark.parametrize(
    ("backend", "conf", "env"),
    [
        ("c10d", "join_timeout=1800", {}),  # not in an Indexed Job: torch decides, as before
        ("static", "", {"JOB_COMPLETION_INDEX": "0"}),  # --standalone and static rendezvous host nothing
        ("c10d", "is_host=false", {"JOB_COMPLETION_INDEX": "0"}),  # the user's own choice is kept
        ("c10d", "is_host=true,read_timeout=5", {"JOB_COMPLETION_INDEX": "1"}),
    ],
)
def test_left_alone_outside_an_indexed_jobs_c10d_rendezvous(backend: str, conf: str, env: dict[str, str]) -> None:
    assert rendezvous_conf(backend, conf, env) == conf


def test_torch_reads_what_it_adds() -> None:
    """The operator's command (builders/trainer_job.py) parsed by torchrun, then the conf as torch's
    rendezvous reads it."""
    args = parse_args(
        ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", "--rdzv-endpoint=job-0.job:29400",
         "--rdzv-conf=join_timeout=1800", "-m", "bigmodel_training"]
    )  # fmt: skip
    conf = rendezvous_conf(args.rdzv_backend, args.rdzv_conf, {"JOB_COMPLETION_INDEX": "1"})
    settings = dict(part.split("=", 1) for part in conf.split(","))
    params = RendezvousParameters("c10d", args.rdzv_endpoint, "job", 2, 2, **settings)
    assert params.get_as_bool("is_host") is False
    assert params.get_as_int("read_timeout") == 1800 and params.get_as_int("join_timeout") == 1800
