"""Chaining slipstream-cni into the primary CNI's configuration, and out again (sans-IO).

The runtime uses the first file of the CNI configuration directory, in lexical order, that
is a `.conflist`, `.conf` or `.json` (libcni's ConfFiles; what the kubelet and containerd
pick). Chaining appends our entry to its `plugins` and leaves every other key and entry as
it was; a single-plugin `.conf`/`.json` becomes a `.conflist` of that plugin then ours
(libcni reads a file's format from its extension). Removing takes out every entry of our
type and nothing else. Byte-for-byte restoration of the primary's own file is the
installer's (it keeps the original bytes): JSON cannot round-trip a file's formatting.
"""

from __future__ import annotations

import json
import os
from typing import Any

from agent.common.errors import SlipstreamError

PLUGIN_TYPE = "slipstream-cni"
EXTENSIONS = (".conflist", ".conf", ".json")


class ConflistError(SlipstreamError):
    pass


def primary_file(names: list[str]) -> str | None:
    """The file the runtime would use, of the directory's entries."""
    found = sorted(n for n in names if n.endswith(EXTENSIONS) and not n.startswith("."))
    return found[0] if found else None


def _load(text: str, name: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise ConflistError(f"{name}: not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConflistError(f"{name}: not a JSON object")
    return doc


def _plugins(doc: dict[str, Any], name: str) -> list[Any]:
    plugins = doc.get("plugins")
    if not isinstance(plugins, list):
        raise ConflistError(f"{name}: a .conflist needs a plugins list")
    return plugins


def as_list(text: str, name: str) -> dict[str, Any]:
    """The file as the runtime reads it: a conflist, or a single-plugin `.conf`/`.json` as a
    list of that one plugin."""
    doc = _load(text, name)
    if name.endswith(".conflist"):
        _plugins(doc, name)
        return doc
    single = {k: v for k, v in doc.items() if k not in ("cniVersion", "name")}
    return {
        "cniVersion": doc.get("cniVersion", "1.0.0"),
        "name": doc.get("name", os.path.splitext(name)[0]),
        "plugins": [single],
    }


def is_chained(text: str, name: str) -> bool:
    doc = _load(text, name)
    plugins = _plugins(doc, name) if name.endswith(".conflist") else [doc]
    return any(isinstance(p, dict) and p.get("type") == PLUGIN_TYPE for p in plugins)


def chain(text: str, name: str, entry: dict[str, Any]) -> tuple[str, str]:
    """The primary's configuration with `entry` last, and the file name to write it to."""
    doc = _load(text, name)
    if name.endswith(".conflist"):
        plugins = [
            p
            for p in _plugins(doc, name)
            if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)
        ]
        out = {**doc, "plugins": [*plugins, entry]}
        return json.dumps(out, indent=2) + "\n", name
    if doc.get("type") == PLUGIN_TYPE:
        raise ConflistError(f"{name}: is slipstream-cni's own entry, not a primary's")
    out = as_list(text, name)
    out["plugins"].append(entry)
    return json.dumps(out, indent=2) + "\n", os.path.splitext(name)[0] + ".conflist"


def unchain(text: str, name: str) -> str:
    """The configuration without any slipstream-cni entry."""
    doc = _load(text, name)
    plugins = _plugins(doc, name)
    kept = [p for p in plugins if not (isinstance(p, dict) and p.get("type") == PLUGIN_TYPE)]
    return json.dumps({**doc, "plugins": kept}, indent=2) + "\n"
