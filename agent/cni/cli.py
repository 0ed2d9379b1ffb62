"""`slipstream cni install|uninstall`: the install step a node runs (agent/cni/install.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any
from urllib.parse import quote

from agent.common.constants import CNI_SOCKET
from agent.common.errors import SlipstreamError
from agent.common.runtime import serve
from agent.sources.kubeclient import ApiStatusError, KubeClient

from .install import (
    DEFAULT_BIN_DIR,
    DEFAULT_CONF_DIR,
    DEFAULT_STATE_DIR,
    Installer,
    daemonset_removal,
)


def register(sub: argparse._SubParsersAction, parents: list[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "cni",
        parents=parents,
        help="install slipstream-cni on this node",
        description="Put slipstream-cni in the CNI bin directory and chain it after the primary"
        " CNI (k3s: --cni-bin-dir /var/lib/rancher/k3s/data/cni --cni-conf-dir"
        " /var/lib/rancher/k3s/agent/etc/cni/net.d).",
    )
    cmds = p.add_subparsers(dest="cni_command", metavar="ACTION", required=True)
    for name, helptext in (
        ("install", "install and keep it chained (re-chained within a second if the primary"
                    " CNI rewrites its file) until stopped; stopping leaves it in place"),
        ("uninstall", "take it out: the primary's file as it was, the plugin removed"),
    ):  # fmt: skip
        c = cmds.add_parser(name, parents=parents, help=helptext)
        c.add_argument("--cni-bin-dir", default=DEFAULT_BIN_DIR, metavar="DIR")
        c.add_argument("--cni-conf-dir", default=DEFAULT_CONF_DIR, metavar="DIR")
        c.add_argument(
            "--state-dir",
            default=DEFAULT_STATE_DIR,
            metavar="DIR",
            help="where the primary's file is kept as found (default %(default)s)",
        )
        c.add_argument(
            "--socket",
            default=CNI_SOCKET,
            help="the agent's --cni-socket (default %(default)s)",
        )
        c.add_argument("--timeout", type=float, default=30.0, help="ADD's wait for the agent (s)")
        if name == "install":
            c.add_argument("--once", action="store_true", help="one pass, then exit")
            c.add_argument(
                "--remove-with-daemonset",
                metavar="NAMESPACE/NAME",
                help="when stopping, uninstall if this DaemonSet (the install's own) is gone or"
                " being deleted; otherwise (an upgrade, a node drain) leave the plugin chained",
            )
            c.add_argument(
                "--kubeconfig",
                help="for --remove-with-daemonset (default: $KUBECONFIG, else in-cluster)",
            )
        c.set_defaults(func=cmd_install if name == "install" else cmd_uninstall)


def _installer(args: argparse.Namespace) -> Installer:
    entry = {"type": "slipstream-cni", "socket": args.socket, "timeout": args.timeout}
    return Installer(args.cni_bin_dir, args.cni_conf_dir, args.state_dir, entry)


def cmd_install(args: argparse.Namespace) -> int:
    installer = _installer(args)
    if args.once:
        print(installer.ensure())
        return 0
    asyncio.run(_install(installer, args))
    return 0


async def _install(installer: Installer, args: argparse.Namespace) -> None:
    if not args.remove_with_daemonset:
        await serve({"cni-install": installer})
        return
    ns, sep, name = args.remove_with_daemonset.partition("/")
    if not (sep and ns and name):
        raise SlipstreamError(
            f"--remove-with-daemonset: {args.remove_with_daemonset!r} is not NAMESPACE/NAME"
        )
    client = await KubeClient.open(args.kubeconfig, user_agent="slipstream-cni-install")
    path = f"/apis/apps/v1/namespaces/{quote(ns, safe='')}/daemonsets/{quote(name, safe='')}"

    async def get() -> dict[str, Any] | None:
        try:
            return await client.call("GET", path, timeout=10.0)
        except ApiStatusError as exc:
            if exc.code == 404:
                return None
            raise

    installer.removal = daemonset_removal(get, args.remove_with_daemonset)
    try:
        await serve({"cni-install": installer})
    finally:
        await client.close()


def cmd_uninstall(args: argparse.Namespace) -> int:
    print(json.dumps({"uninstall": _installer(args).uninstall()}))
    return 0
