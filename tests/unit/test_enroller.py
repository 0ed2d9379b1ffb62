"""The enroller's loop: every store change is acted on, even one that lands mid-reconcile.

The datapath and listeners are replaced by a recording stand-in here: the real ones
have their own lab tests, and this race cannot be staged deterministically with them.
"""

from __future__ import annotations

import asyncio

from agent.node.enroller import Enroller
from agent.state import StateStore, StateUpdater, parse_object
from agent.state.enrollment import ANNOTATION_NETNS, ENROLLED


class StubProxy:
    def __init__(self) -> None:
        self.connections = 0

    async def start(self) -> None: ...
    async def close(self, reason: str = "") -> None: ...

    def listener_fd(self, direction: str) -> int:
        return -1


class SlowCapture:
    """attach() for the first pod waits until the test lets it go."""

    def __init__(self) -> None:
        self.attached: list[str] = []
        self.release = asyncio.Event()
        self.entered = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def make_proxy(self, pod, ns):
        return StubProxy()

    def bind(self, pod, ns, proxy):
        return None

    def unbind(self, binding) -> None: ...

    def attach(self, netns_path: str) -> str:  # runs in a worker thread
        if not self.attached:
            self.loop.call_soon_threadsafe(self.entered.set)
            asyncio.run_coroutine_threadsafe(self.release.wait(), self.loop).result(5)
        self.attached.append(netns_path)
        return "0"

    def detach(self, netns_path: str, accept_local: str) -> None: ...

    def installed(self, netns_path: str) -> bool:
        return False


def pod(name: str, path: str):
    return parse_object(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "mesh",
                "annotations": {ANNOTATION_NETNS: path},
            },
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "command": ["x"]}]},
            "status": {"podIP": f"10.244.1.{2 + len(name)}", "phase": "Running"},
        }
    )


async def test_a_pod_added_during_a_reconcile_is_enrolled_without_another_change(tmp_path):
    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    for name in ("a", "bb"):
        (netns_dir / name).write_text("")  # stands in for a namespace file
    store = StateStore()
    updater = StateUpdater(store)
    updater.apply(
        [
            parse_object(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {
                        "name": "mesh",
                        "labels": {"slipstream.dev/dataplane-mode": "ambient"},
                    },
                }
            ),
            pod("a", str(netns_dir / "a")),
        ]
    )
    capture = SlowCapture()
    enroller = Enroller(
        "n1", store, capture, state_dir=str(tmp_path / "state"), netns_dir=str(netns_dir)
    )
    drain = asyncio.Event()
    task = asyncio.create_task(enroller.run(drain))
    try:
        await asyncio.wait_for(capture.entered.wait(), 5)
        updater.apply([pod("bb", str(netns_dir / "bb"))])  # lands while "a" is being attached
        capture.release.set()
        async with asyncio.timeout(2):
            while len([w for w in enroller.workloads() if w.state == ENROLLED]) < 2:
                await asyncio.sleep(0.01)
        assert sorted(capture.attached) == [str(netns_dir / "a"), str(netns_dir / "bb")]
    finally:
        drain.set()
        await asyncio.wait_for(task, 5)
