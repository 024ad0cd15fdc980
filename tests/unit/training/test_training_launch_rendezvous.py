"""torchrun's c10d rendezvous in an Indexed Job: pod 0 hosts the store, whatever DNS says yet (issue 20)."""

from __future__ import annotations

import pytest

from bigmodel_training.launch import rendezvous_conf


@pytest.mark.parametrize(
    ("index", "expected"),
    [("0", "join_timeout=1800,is_host=true"), ("1", "join_timeout=1800,is_host=false")],
)
def test_the_job_index_says_which_pod_hosts_the_store(index: str, expected: str) -> None:
    assert rendezvous_conf("c10d", "join_timeout=1800", {"JOB_COMPLETION_INDEX": index}) == expected


def test_an_empty_conf_gets_only_is_host() -> None:
    assert rendezvous_conf("c10d", "", {"JOB_COMPLETION_INDEX": "3"}) == "is_host=false"


@pytest.mark.parametrize(
    ("backend", "conf", "env"),
    [
        ("c10d", "join_timeout=1800", {}),  # not in an Indexed Job: torch decides, as before
        ("static", "", {"JOB_COMPLETION_INDEX": "0"}),  # --standalone and static rendezvous host nothing
        ("c10d", "is_host=false", {"JOB_COMPLETION_INDEX": "0"}),  # the user's own choice is kept
    ],
)
def test_left_alone_outside_an_indexed_jobs_c10d_rendezvous(backend: str, conf: str, env: dict[str, str]) -> None:
    assert rendezvous_conf(backend, conf, env) == conf
