#!/usr/bin/env python3
"""slipstream-cni: a chained CNI plugin (spec 1.0.0) that hands each new pod to the node agent.

It runs on the host, where Slipstream's Python environment is not, so it is one file of
standard-library Python 3 (3.8 or newer: Debian 11+, RHEL 9, Ubuntu 20.04+ ship it; a
test parses it with the 3.8 grammar), copied into the node's CNI bin directory and chained
after the primary plugin by the install step (agent/cni/install.py). Why not a static
binary: no Go or Rust toolchain is part of this project's build, and a plugin this small
(read the config, one request over a UNIX socket, echo the result) costs a Python start
per pod sandbox (VERSION: 40-60 ms and 17 MB measured here, the Go bridge plugin's under
10 ms), small beside a sandbox's creation. It imports nothing of
Slipstream; everything it shares with the agent is the request below, whose agent side
is agent/node/cni.py.

ADD  sends the pod's network namespace, name, namespace and addresses (from the primary
     plugin's prevResult) to the agent's socket and waits until the agent has enrolled
     the pod or decided not to; only then does it print prevResult, unchanged. The agent
     down, slow or refusing fails the ADD (code 11, "try again later", naming why): the
     runtime retries, and no packet of the pod leaves before capture is in place.
DEL  tells the agent the sandbox is gone; it succeeds when the agent is down (a DEL must
     not fail for what is already gone: the agent lets go of pods that leave the API).
CHECK asks the agent whether the pod is as ADD left it.
VERSION prints the versions it speaks.

Plugin configuration (its entry in the conflist): {"type": "slipstream-cni",
"socket": "/var/run/slipstream/cni.sock", "timeout": 30}.
"""

import contextlib
import http.client
import json
import os
import socket
import sys

SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"]
DEFAULT_SOCKET = "/var/run/slipstream/cni.sock"
DEFAULT_TIMEOUT = 30.0
# CNI error codes (spec 1.0, "Error"): 4 invalid environment variables, 6 failed to
# decode content, 7 invalid network config, 11 try again later; 100+ are the plugin's.
INVALID_ENV, DECODE, INVALID_CONFIG, TRY_AGAIN, REFUSED = 4, 6, 7, 11, 100
MAX_CONFIG = 1 << 20
MAX_ANSWER = 1 << 16


class PluginError(Exception):
    def __init__(self, code, msg, details=""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def _cni_args(text):
    """CNI_ARGS: "K=V;K=V" (K8S_POD_NAME, K8S_POD_NAMESPACE, ... from the kubelet)."""
    out = {}
    for part in (text or "").split(";"):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _addresses(prev):
    """The pod's addresses from the primary plugin's result (0.3.x/0.4.0/1.0.0 shape)."""
    out = []
    for ip in prev.get("ips") or []:
        if isinstance(ip, dict) and isinstance(ip.get("address"), str):
            out.append(ip["address"].split("/")[0])
    return out


def request(config, command, env):
    """The request for the agent (sans I/O): what is sent for this command."""
    args = _cni_args(env.get("CNI_ARGS", ""))
    body = {
        "command": command,
        "containerID": env.get("CNI_CONTAINERID", ""),
        "netns": env.get("CNI_NETNS", ""),
        "ifname": env.get("CNI_IFNAME", ""),
        "podNamespace": args.get("K8S_POD_NAMESPACE", ""),
        "podName": args.get("K8S_POD_NAME", ""),
        "ips": _addresses(config.get("prevResult") or {}),
    }
    if not body["containerID"]:
        raise PluginError(INVALID_ENV, "CNI_CONTAINERID is not set")
    if command in ("ADD", "CHECK"):
        if not body["netns"]:
            raise PluginError(INVALID_ENV, "CNI_NETNS is not set")
        if not (body["podNamespace"] and body["podName"]):
            raise PluginError(
                INVALID_ENV,
                "CNI_ARGS has no K8S_POD_NAMESPACE and K8S_POD_NAME: not a Kubernetes pod",
            )
        if not isinstance(config.get("prevResult"), dict):
            raise PluginError(
                INVALID_CONFIG,
                "no prevResult: slipstream-cni runs chained after the primary CNI plugin",
            )
    return body


def ask_agent(path, body, timeout):
    """One request to the agent; its JSON answer, or PluginError saying why not."""
    conn = _UnixConnection(path, timeout)
    try:
        conn.request("POST", "/v1/cni", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read(MAX_ANSWER + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise PluginError(
            TRY_AGAIN,
            f"the Slipstream node agent is not reachable at {path}: {exc}",
            "the pod waits until the agent runs (fail closed)",
        ) from None
    finally:
        conn.close()
    try:
        answer = json.loads(data[:MAX_ANSWER].decode())
    except ValueError:
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    if resp.status != 200:
        code = TRY_AGAIN if resp.status >= 500 else REFUSED
        raise PluginError(
            code,
            "the Slipstream node agent refused the pod: "
            + str(answer.get("error") or f"HTTP {resp.status}"),
        )
    return answer


def run(command, config, env):
    """What to print for `command` (None: nothing); PluginError when it fails."""
    if command == "VERSION":
        return {"cniVersion": config.get("cniVersion") or "1.0.0", "supportedVersions": SUPPORTED}
    version = config.get("cniVersion", "")
    if version not in SUPPORTED:
        raise PluginError(1, f"cniVersion {version!r} is not supported ({', '.join(SUPPORTED)})")
    path = config.get("socket") or DEFAULT_SOCKET
    timeout = config.get("timeout") or DEFAULT_TIMEOUT
    if not isinstance(path, str) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise PluginError(INVALID_CONFIG, "socket must be a path and timeout a positive number")
    if command not in ("ADD", "DEL", "CHECK"):
        raise PluginError(INVALID_ENV, f"CNI_COMMAND {command!r} is not ADD, DEL, CHECK or VERSION")
    body = request(config, command, env)
    if command == "DEL":
        # Gone already, or the agent sees the pod leave the API: DEL never fails for it.
        with contextlib.suppress(PluginError):
            ask_agent(path, body, timeout)
        return None
    ask_agent(path, body, timeout)
    if command == "CHECK":
        return None
    result = dict(config["prevResult"])
    result["cniVersion"] = version
    return result


def main():
    command = os.environ.get("CNI_COMMAND", "")
    version = "1.0.0"
    try:
        raw = sys.stdin.buffer.read(MAX_CONFIG + 1)
        if len(raw) > MAX_CONFIG and command != "VERSION":
            raise PluginError(DECODE, f"network configuration over {MAX_CONFIG} bytes")
        try:
            config = json.loads(raw.decode()) if raw.strip() else {}
        except ValueError as exc:
            raise PluginError(DECODE, f"network configuration is not JSON: {exc}") from None
        if not isinstance(config, dict):
            raise PluginError(DECODE, "network configuration is not a JSON object")
        given = config.get("cniVersion")
        version = given if isinstance(given, str) else version
        out = run(command, config, os.environ)
    except PluginError as exc:
        error = {"cniVersion": version, "code": exc.code, "msg": exc.msg}
        if exc.details:
            error["details"] = exc.details
        sys.stdout.write(json.dumps(error))
        return 1
    if out is not None:
        sys.stdout.write(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
