"""Reading Kubernetes manifests (multi-document YAML or JSON) with positions.

Every document keeps a map from field path to line, so a validation error
deep inside an object can still name the line a user must edit.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import FieldError, ManifestError

FieldPath = tuple[str | int, ...]


@dataclass
class Document:
    """One YAML document of a manifest file."""

    source: str
    index: int
    """1-based position of the document in its file."""
    line: int
    """1-based line where the document starts."""
    body: Any
    lines: dict[FieldPath, int] = field(default_factory=dict)

    def line_of(self, dotted: str) -> int:
        """Line of the deepest existing prefix of a dotted field path."""
        path = parse_field_path(dotted)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.line

    def describe(self) -> str | None:
        """`Pod demo/client`, or None when the document has no usable identity."""
        b = self.body
        if not isinstance(b, dict):
            return None
        meta = b.get("metadata")
        if not isinstance(meta, dict):
            return None
        kind, name = b.get("kind"), meta.get("name")
        if not isinstance(kind, str) or not isinstance(name, str):
            return None
        ns = meta.get("namespace")
        return f"{kind} {ns}/{name}" if isinstance(ns, str) and ns else f"{kind} {name}"

    def error(self, exc: FieldError) -> ManifestError:
        """Turn a field error raised while parsing this document into a positioned one."""
        return ManifestError(
            self.source,
            exc.reason,
            line=self.line_of(exc.field),
            document=self.index,
            obj=self.describe(),
            field=exc.field or None,
        )


def parse_field_path(dotted: str) -> FieldPath:
    """`spec.containers[0].command` -> ("spec", "containers", 0, "command")."""
    out: list[str | int] = []
    for part in dotted.split(".") if dotted else []:
        while "[" in part:
            head, _, rest = part.partition("[")
            if head:
                out.append(head)
            idx, _, part = rest.partition("]")
            out.append(int(idx) if idx.isdigit() else idx)
        if part:
            out.append(part)
    return tuple(out)


def _record_lines(node: yaml.Node, path: FieldPath, out: dict[FieldPath, int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                child = (*path, key.value)
                out[child] = key.start_mark.line + 1
                _record_lines(value, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, (*path, i), out)


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser when PyYAML has it (ten times faster), else the pure-Python one."""


def load_text(text: str, source: str = "<input>") -> list[Document]:
    """Parse every document of a manifest; empty documents are skipped."""
    docs: list[Document] = []
    loader = _Loader(text)
    index = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            index += 1
            if node is None:
                continue
            body = loader.construct_document(node)
            if body is None:
                continue
            doc = Document(source, index, node.start_mark.line + 1, body)
            _record_lines(node, (), doc.lines)
            docs.append(doc)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(
            source,
            f"not valid YAML: {problem}",
            line=mark.line + 1 if mark else None,
            document=index or 1,
        ) from exc
    finally:
        loader.dispose()
    return docs


def load_file(path: str | Path) -> list[Document]:
    p = Path(path)
    try:
        text = p.read_text()
    except UnicodeDecodeError as exc:
        raise ManifestError(str(p), "not UTF-8 text") from exc
    except OSError as exc:
        raise ManifestError(str(p), f"cannot read: {exc.strerror}") from exc
    return load_text(text, str(p))


def load_paths(paths: Sequence[str]) -> list[Document]:
    """Files, directories of them (.yaml, .yml, .json), or - for standard input."""
    docs: list[Document] = []
    for path in paths:
        if path == "-":
            docs += load_text(sys.stdin.read(), "<stdin>")
        elif os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                if name.endswith((".yaml", ".yml", ".json")):
                    docs += load_file(os.path.join(path, name))
        elif not os.path.exists(path):
            raise ManifestError(path, "no such file")
        else:
            docs += load_file(path)
    return docs


def dump_objects(bodies: list[dict[str, Any]]) -> str:
    """Multi-document YAML, keys in the order given (as kubectl prints them)."""
    return yaml.safe_dump_all(bodies, sort_keys=False, default_flow_style=False)
