"""The capture-state write-back plan (sans-IO): only this node's pods, only on change."""

from __future__ import annotations

from agent.node.writeback import ANNOTATION_CAPTURE, plan
from agent.state.enrollment import ENROLLED, FAILED, NOT_ENROLLED, PENDING, WorkloadStatus
from agent.state.objects import ObjectKey, Pod, parse_object


def pod(name: str, node: str, shown: str = "") -> Pod:
    notes = {ANNOTATION_CAPTURE: shown} if shown else {}
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "annotations": notes},
        "spec": {"nodeName": node, "containers": [{"name": "c", "command": ["x"]}]},
    }
    p = parse_object(body)
    assert isinstance(p, Pod)
    return p


def status(name: str, state: str, reason: str = "why") -> WorkloadStatus:
    return WorkloadStatus("shop", name, "", state, reason)


def test_only_this_nodes_pods_are_ever_written():
    pods = [pod("mine", "a"), pod("theirs", "b"), pod("unnoded", "")]
    statuses = [status("mine", FAILED), status("theirs", FAILED), status("unnoded", PENDING)]
    writes = plan("a", pods, statuses, {})
    assert [(w.pod.meta.name, w.state, w.event) for w in writes] == [("mine", FAILED, True)]


def test_written_once_per_state_and_removed_when_out_of_the_mesh():
    reported: dict[ObjectKey, tuple[str, str]] = {}
    (w,) = plan("a", [pod("p", "a")], [status("p", PENDING)], reported)
    assert (w.state, w.event, w.reason) == (PENDING, True, "why")
    reported[w.pod.key] = (w.state, w.reason)
    # Written: nothing more until the state changes, even before the watch shows it.
    assert plan("a", [pod("p", "a")], [status("p", PENDING, "other")], reported) == []
    (w,) = plan("a", [pod("p", "a", PENDING)], [status("p", ENROLLED)], reported)
    assert (w.state, w.event) == (ENROLLED, True)
    reported[w.pod.key] = (w.state, w.reason)
    (w,) = plan("a", [pod("p", "a", ENROLLED)], [status("p", NOT_ENROLLED)], reported)
    assert (w.state, w.event) == ("", False), "the annotation goes, with no Event"
    # A pod not in the mesh that never had the annotation: nothing to write.
    assert plan("a", [pod("q", "a")], [status("q", NOT_ENROLLED)], {}) == []
    # A restarted agent finds the annotation right: no patch, but one Event for the record.
    (w,) = plan("a", [pod("r", "a", FAILED)], [status("r", FAILED)], {})
    assert (w.state, w.event) == (FAILED, True)


def test_a_failing_write_back_never_stops_the_agent():
    """Anything a write raises (here what a closed HTTP session raises while the agent
    drains) is logged; the loop goes on and ends with the drain, raising nothing, so the
    agent's other parts (the enroller removing capture on --cleanup) are never cancelled."""
    import asyncio
    from types import SimpleNamespace

    from agent.node.writeback import CaptureWriter

    calls = []

    class Closed:
        async def call(self, *args, **kwargs):
            calls.append(args)
            raise RuntimeError("Session is closed")

    snap = SimpleNamespace(pods_on_node=lambda node: (pod("mine", "a"),))
    store = SimpleNamespace(synced=True, snapshot=snap)
    writer = CaptureWriter("a", store, Closed(), lambda: [status("mine", PENDING)], 0.01)

    async def main() -> None:
        drain = asyncio.Event()
        task = asyncio.create_task(writer.run(drain))
        while len(calls) < 2:
            await asyncio.sleep(0.01)
        drain.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(main())
    assert len(calls) >= 2, "it kept trying"
