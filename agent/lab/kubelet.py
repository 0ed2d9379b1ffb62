"""The lab's kubelet process: watches the lab's API server and makes the lab follow it.

`slipstream lab kubelet --name LAB` is started by `lab up` and runs until `lab
down`. One thread per kind the lab follows (lab.followed) lists it and watches from
the list's version (with bookmarks); any change, a broken watch or a relist
marks the lab dirty, and the main loop runs `Lab.kubelet_sync(full=True)`: a pod
created with kubectl runs (scheduled if it names no node), a deleted one stops, a
labelled namespace or an applied policy reaches the components' file source.
Between changes it writes pod status every STATUS_INTERVAL (containers restart
and exit on their own). It also keeps the API server running: if the server
process is gone it starts it again on the same port and state file.

Level-triggered on purpose: every pass reads the whole API, so a missed or
repeated event can only cost a pass, never leave the lab wrong.
"""

from __future__ import annotations

import logging
import random
import threading
import time

from . import pods
from .errors import LabError
from .kubeapi import KubeApiError, KubeClient, ResourceType
from .lab import Lab, followed

log = logging.getLogger("agent.lab.kubelet")

STATUS_INTERVAL = 0.5
WATCH_TIMEOUT = 300


def _watch(api: KubeClient, rt: ResourceType, dirty: threading.Event) -> None:
    while True:
        try:
            _, rv = api.list(rt)
            dirty.set()
            for ev in api.watch(rt.path(), rv, WATCH_TIMEOUT):
                if ev.get("type") == "ERROR":
                    break  # e.g. 410 Expired: relist
                if ev.get("type") != "BOOKMARK":
                    dirty.set()
        except KubeApiError as exc:
            log.debug("watch of %s broke: %s", rt.plural, exc)
            time.sleep(0.2 + random.random() * 0.5)


def run(name: str, root: str) -> int:
    lab = Lab(name, root)
    dirty = threading.Event()
    dirty.set()
    started: set[tuple[str, str]] = set()
    while lab.exists():
        pods.reap()
        try:
            lab.ensure_apiserver()
            api = lab.api()
            types = api.types()
            for key in followed(lab.load().spec):  # a CRD registered later: a later pass
                if key in types and key not in started:
                    started.add(key)
                    threading.Thread(
                        target=_watch, args=(api, types[key], dirty), daemon=True
                    ).start()
            full = dirty.wait(STATUS_INTERVAL)
            dirty.clear()
            lab.kubelet_sync(full)
        except LabError as exc:
            if not lab.exists():
                break
            log.warning("lab sync failed; trying again: %s", exc)
            dirty.set()
            time.sleep(0.5)
    return 0
