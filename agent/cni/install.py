"""The CNI install step: slipstream-cni into the node's CNI bin directory and chained into the
primary CNI's configuration, kept there, and taken out again leaving the primary's file as
it was.

`ensure` is one pass: the plugin file in place (atomic), our entry in the primary's
conflist (atomic: a temporary file renamed over it; a `.conf` becomes a `.conflist`).
Before it writes, it records the primary's file as it found it (bytes, under the state
directory), so `uninstall` can put those exact bytes back when the file is still what we
wrote; if the primary rewrote it since, only our entry is taken out. `run` repeats
`ensure` every second: a primary CNI that rewrites its file (after a node reboot, an
upgrade) gets our entry back within a second, where otherwise new pods would start
outside the mesh. Stopping leaves everything in place (an agent upgrade: new pods wait
for the new agent rather than bypass it), unless `removal` says the install itself is
going (`daemonset_removal`: its DaemonSet is gone or being deleted, as after `kubectl
delete -k deploy/`); `uninstall` is the explicit removal.

Paths are flags: /opt/cni/bin and /etc/cni/net.d by default; k3s keeps them in
/var/lib/rancher/k3s/data/cni and /var/lib/rancher/k3s/agent/etc/cni/net.d.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Awaitable, Callable
from typing import Any

from agent.common.errors import SlipstreamError

from . import conflist
from .conflist import PLUGIN_TYPE

log = logging.getLogger("agent.cni.install")

PLUGIN_SOURCE = os.path.join(os.path.dirname(__file__), "plugin.py")
DEFAULT_BIN_DIR = "/opt/cni/bin"
DEFAULT_CONF_DIR = "/etc/cni/net.d"
DEFAULT_STATE_DIR = "/var/lib/slipstream/cni"
INTERVAL = 1.0


def _atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.slipstream-tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class Installer:
    def __init__(
        self,
        bin_dir: str = DEFAULT_BIN_DIR,
        conf_dir: str = DEFAULT_CONF_DIR,
        state_dir: str = DEFAULT_STATE_DIR,
        entry: dict[str, Any] | None = None,
    ) -> None:
        self.bin_dir, self.conf_dir, self.state_dir = bin_dir, conf_dir, state_dir
        self.entry = entry or {"type": PLUGIN_TYPE}
        self.last = ""
        self.removal: Callable[[], Awaitable[str]] | None = None
        """Asked when stopping: why the install is being removed (uninstall), or "" (stay)."""

    @property
    def plugin_path(self) -> str:
        return os.path.join(self.bin_dir, PLUGIN_TYPE)

    @property
    def record_path(self) -> str:
        return os.path.join(self.state_dir, "chained.json")

    def _install_plugin(self) -> None:
        with open(PLUGIN_SOURCE, "rb") as f:
            want = f.read()
        try:
            with open(self.plugin_path, "rb") as f:
                if f.read() == want:
                    return
        except FileNotFoundError:
            pass
        os.makedirs(self.bin_dir, exist_ok=True)
        _atomic_write(self.plugin_path, want, 0o755)

    def ensure(self) -> str:
        """One pass; says what it found or did."""
        self._install_plugin()
        try:
            name = conflist.primary_file(os.listdir(self.conf_dir))
        except FileNotFoundError:
            name = None
        if name is None:
            return f"waiting: no CNI configuration in {self.conf_dir} yet"
        path = os.path.join(self.conf_dir, name)
        with open(path, "rb") as f:
            original = f.read()
        text = original.decode()
        if conflist.is_chained(text, name):
            return f"chained in {name}"
        new_text, new_name = conflist.chain(text, name, self.entry)
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        record = {
            "original_name": name,
            "original": base64.b64encode(original).decode(),
            "written_name": new_name,
            "written": new_text,
        }
        _atomic_write(self.record_path, json.dumps(record).encode(), 0o600)
        _atomic_write(os.path.join(self.conf_dir, new_name), new_text.encode())
        if new_name != name:
            os.unlink(path)
        log.info("chained slipstream-cni", extra={"file": new_name, "primary": name})
        return f"chained into {new_name}"

    def uninstall(self) -> str:
        """Our entry out (the primary's bytes back when the file is still ours) and the
        plugin removed."""
        try:
            with open(self.record_path) as f:
                record = json.load(f)
        except FileNotFoundError:
            record = None
        done = "nothing chained"
        if record is not None:
            written = os.path.join(self.conf_dir, record["written_name"])
            try:
                with open(written) as f:
                    current: str | None = f.read()
            except FileNotFoundError:
                current = None
            if current == record["written"]:
                _atomic_write(
                    os.path.join(self.conf_dir, record["original_name"]),
                    base64.b64decode(record["original"]),
                )
                if record["written_name"] != record["original_name"]:
                    os.unlink(written)
                done = f"restored {record['original_name']}"
            elif current is not None and conflist.is_chained(current, record["written_name"]):
                _atomic_write(written, conflist.unchain(current, record["written_name"]).encode())
                done = f"took slipstream-cni out of {record['written_name']}"
            os.unlink(self.record_path)
        if os.path.exists(self.plugin_path):
            os.unlink(self.plugin_path)
        return done

    async def run(self, drain: asyncio.Event) -> None:
        """`ensure` every INTERVAL until drained (a runtime Component); then, if `removal`
        says the install is being removed, `uninstall`."""
        try:
            await self._keep(drain)
        finally:
            if self.removal is not None:
                why = await self.removal()
                if why:
                    log.info("uninstalling slipstream-cni", extra={"why": why})
                    await asyncio.to_thread(self.uninstall)
                else:
                    log.info("leaving slipstream-cni chained: new pods wait for the next agent")

    async def _keep(self, drain: asyncio.Event) -> None:
        while not drain.is_set():
            try:
                said = await asyncio.to_thread(self.ensure)
            except (OSError, UnicodeDecodeError, SlipstreamError) as exc:
                said = f"failed: {exc}"
            if said != self.last:
                log.info("cni install", extra={"state": said})
                self.last = said
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drain.wait(), INTERVAL)


def copy_plugin_to(path: str) -> None:
    """For tests and manual installs: the plugin file, executable, at `path`."""
    shutil.copyfile(PLUGIN_SOURCE, path)
    os.chmod(path, 0o755)


def removed(daemonset: dict[str, Any] | None) -> str:
    """Why a stopping install step should take slipstream-cni out, given its DaemonSet as the
    API has it (None: not found), or "" to leave it for the next agent (sans-IO)."""
    if daemonset is None:
        return "its DaemonSet is gone"
    if (daemonset.get("metadata") or {}).get("deletionTimestamp"):
        return "its DaemonSet is being deleted"
    return ""


def daemonset_removal(
    get: Callable[[], Awaitable[dict[str, Any] | None]], name: str
) -> Callable[[], Awaitable[str]]:
    """`Installer.removal` for a DaemonSet's install step: `get` reads the DaemonSet. If the
    API cannot be asked, the plugin stays (new pods wait rather than start uncaptured), and
    the log says how to take it out by hand."""

    async def ask() -> str:
        try:
            return removed(await get())
        except (SlipstreamError, OSError) as exc:
            log.warning(
                "cannot tell whether the install is being removed; leaving slipstream-cni"
                " chained (take it out with `slipstream cni uninstall` if it is)",
                extra={"daemonset": name, "error": str(exc)},
            )
            return ""

    return ask
