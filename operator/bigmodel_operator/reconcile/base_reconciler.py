"""The reconcile skeleton BigModel and FineTuneJob share; each subclass adds only what is its own.

One pass, for either kind:
    run(key) ─ skip when settled (state.py) ─ reconcile(body) ─ settle
                                                 │ observe → Blockers (conditions.Blocker) → pure status
                                                 │ children through `write_children` (one error policy)
                                                 └ write_status (only our fields, only when changed)
    a raise ─ report_failure: the summary condition says ReconcileError, then the runner backs off.

Error policy of a child write, the same for both kinds:
- the apiserver refuses it (4xx, e.g. 422): a ChildRejected blocker, status written, then
  AlreadyReportedError so that the runner retries with backoff;
- 5xx/429 (the client already retried): raised, reported as ReconcileError, retried with backoff;
- a child of an earlier object of the same name: a WaitingForOldChildren blocker and RetryLaterError
  (its deletion event, or the backoff, runs us again);
- a child we do not control: a ChildNotControlled blocker (a person has to act; the resync looks again).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from bigmodel_operator import conditions as c
from bigmodel_operator.conditions import Blocker, Reason
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.kube import ApiError, Kube
from bigmodel_operator.reconcile.children import AlreadyReportedError, ApplyResult, NotControlledError, OldChildError
from bigmodel_operator.reconcile.runner import RetryLaterError
from bigmodel_operator.reconcile.state import ClusterState, Key

log = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any], str, str, str], None]  # (body, type, reason, message)
PROBLEM_REASONS = frozenset(
    {Reason.RECONCILE_ERROR, Reason.CHILD_REJECTED, Reason.CHILD_NOT_CONTROLLED, Reason.WAITING_FOR_OLD_CHILDREN}
)
"""Summary reasons about the operator's own writes: announced by an Event for both kinds."""


@dataclass
class ChildWrites:
    """How applying the children went: a refusal to retry, or a wait for old children."""

    rejected: ApiError | None = None
    waiting: bool = False


class BaseReconciler:
    """Holds the collaborators; `run(key)` is the entry point, `reconcile(body)` the kind's own pass."""

    kind: ClassVar[str]
    summary: ClassVar[str]  # the condition a failure lands in: Ready, Complete
    status_fields: ClassVar[tuple[str, ...]]  # the status keys this reconciler writes (others have other writers)
    cleared_fields: ClassVar[tuple[str, ...]] = ()  # ours alone: cleared when a status no longer reports them
    progress_reasons: ClassVar[frozenset[str]] = frozenset()  # summary reasons not worth an Event

    def __init__(self, kube: Kube, state: ClusterState, config: OperatorConfig, emit: EventSink) -> None:
        self.kube = kube
        self.state = state
        self.config = config
        self.emit = emit

    async def reconcile(self, body: dict[str, Any]) -> None:
        raise NotImplementedError

    def forget(self, body: dict[str, Any]) -> None:
        """Drop what is remembered about this object (by uid); called when it is deleted."""

    async def run(self, key: Key) -> None:
        """Reconcile the cached body of `key`, recording what it reads; report a failure before re-raising."""
        body = self.state.get(*key)
        if body is None:
            return
        try:
            with self.state.recording(key) as reads:
                try:
                    await self.reconcile(body)
                except (AlreadyReportedError, RetryLaterError):
                    self.state.unsettle(key)
                    raise
                except Exception as error:
                    self.state.unsettle(key)
                    await self.report_failure(body, error)
                    raise
            self.state.settle(key, reads)
        finally:
            self._forget_if_gone(key, body)

    def _forget_if_gone(self, key: Key, body: dict[str, Any]) -> None:
        """The object was deleted while its run was under way (its DELETED event already dropped what was kept of
        it): drop what the run remembered again (settled reads, the status it wrote, per-uid memory). When a new
        object of the same name is there already, what the run kept under the name is not the new one's either
        (runs of one name never overlap: the new one's has not started)."""
        current = self.state.get(*key)
        if current is not None and current["metadata"].get("uid") == body["metadata"].get("uid"):
            return
        if current is None:
            self.state.drop(*key)
        else:
            self.state.written_status.pop(key, None)
            self.state.unsettle(key)
        self.forget(body)

    # --- status ---

    def _key(self, body: dict[str, Any]) -> Key:
        meta = body["metadata"]
        return (self.kind, meta["namespace"], meta["name"])

    def written(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The status we last wrote for this object (the watch may not have delivered it yet)."""
        return self.state.written_status.get(self._key(body))

    def previous_status(self, body: dict[str, Any]) -> dict[str, Any]:
        """The object's status with what we last wrote for its current generation on top."""
        current: dict[str, Any] = body.get("status") or {}
        written = self.written(body)
        if written and written.get("observedGeneration") == body["metadata"].get("generation"):
            return {**current, **written}
        return dict(current)

    def _same(self, a: dict[str, Any], b: dict[str, Any]) -> bool:
        return all(a.get(k) == b.get(k) for k in self.status_fields)

    async def write_status(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        """Merge-patch our fields of the status when they changed; clear those we no longer report."""
        meta = body["metadata"]
        current = body.get("status") or {}
        written = self.written(body)
        if self._same(current, status) or (written is not None and self._same(written, status)):
            return
        patch = dict(status)
        for field in self.cleared_fields:
            if current.get(field) is not None and field not in status:
                patch[field] = None
        await self.kube.patch_status(self.kind, meta["namespace"], meta["name"], patch)
        self.state.written_status[self._key(body)] = status
        self.announce(body, written or current, status)

    def announce(self, body: dict[str, Any], old: dict[str, Any], new: dict[str, Any]) -> None:
        """Events for a status that changed: a flip of the summary condition, unless it is mere progress."""
        before = c.get_condition(old.get("conditions"), self.summary) or {}
        after = c.get_condition(new.get("conditions"), self.summary) or {}
        if (before.get("status"), before.get("reason")) == (after.get("status"), after.get("reason")):
            return
        reason = after.get("reason", "")
        if not reason or reason in self.progress_reasons:
            return
        normal = after.get("status") == "True" or reason == Reason.WAITING_FOR_OLD_CHILDREN
        self.emit(body, "Normal" if normal else "Warning", reason, after.get("message", ""))

    async def report_failure(self, body: dict[str, Any], error: BaseException) -> None:
        """A reconcile that raised: the summary condition says ReconcileError with the error's text (and an
        Event, through `announce`). Best effort: the apiserver may be what failed."""
        meta = body["metadata"]
        previous = self.previous_status(body)
        message = f"reconcile failed (retrying with backoff): {error}"
        conds = c.set_condition(
            previous.get("conditions"), self.summary, False, Reason.RECONCILE_ERROR, message, meta.get("generation")
        )
        status = {k: previous[k] for k in self.status_fields if previous.get(k) is not None}
        try:
            await self.write_status(body, {**status, "conditions": conds})
        except Exception as write_error:
            log.warning("could not report the failure of %s %s: %s", self.kind, meta["name"], write_error)

    # --- children ---

    async def write_children(self, blockers: list[Blocker], apply: Callable[[], Awaitable[None]]) -> ChildWrites:
        """Run `apply` (the kind's child writes, in order) under the one error policy (module docstring)."""
        outcome = ChildWrites()
        try:
            await apply()
        except OldChildError as error:
            blockers.append(Blocker(Reason.WAITING_FOR_OLD_CHILDREN, str(error)))
            outcome.waiting = True
        except NotControlledError as error:
            blockers.append(Blocker(Reason.CHILD_NOT_CONTROLLED, str(error)))
        except ApiError as error:
            if error.status >= 500 or error.status == 429:
                raise  # the apiserver is unwell, not our spec: retry (run() reports it)
            what = error.kind_name or "a child"
            message = f"the apiserver refused {what} (HTTP {error.status}): {error.message}"
            blockers.append(Blocker(Reason.CHILD_REJECTED, message))
            outcome.rejected = error
        return outcome

    @staticmethod
    def finish(outcome: ChildWrites) -> None:
        """After the status is written: hand a refusal or a wait to the runner."""
        if outcome.rejected is not None:
            raise AlreadyReportedError(str(outcome.rejected)) from outcome.rejected
        if outcome.waiting:
            raise RetryLaterError("waiting for the children of an earlier object of the same name to go")

    def announce_child(self, body: dict[str, Any], result: ApplyResult) -> None:
        if event := result.event():
            self.emit(body, "Normal", *event)
