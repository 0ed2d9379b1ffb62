"""What a directory of manifests currently says, file by file (sans-IO).

The file source (and `slipstream policy check`) feeds it parse results; it
answers with the upserts and deletions to hand to the state updater. A broken
file or object keeps the last good version of what it defined, so one typo
never empties the mesh; a broken policy with no good version to keep fails
closed instead of being absent (`objects.refused_version`).

A later definition of an object is an update of the earlier one, whichever
file holds it: the newest file to define a key wins, and a refused version
keeps the last good version from any file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.common.errors import FieldError, ManifestError
from agent.common.manifest import Document
from agent.state.objects import ObjectKey, Resource, parse_object, refused_key, refused_version

log = logging.getLogger("agent.source")


@dataclass
class FileView:
    objects: dict[ObjectKey, Resource] = field(default_factory=dict)
    errors: list[ManifestError] = field(default_factory=list)


@dataclass
class Change:
    upserts: list[Resource] = field(default_factory=list)
    deletes: list[ObjectKey] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.upserts or self.deletes)


def _where(doc: Document, field: str) -> str:
    """Where a field of a document is, for a refusal."""
    return f"{doc.source}:{doc.line_of(field)} (document {doc.index})"


def _document(doc: Document) -> str:
    """Which document this is, whatever its lines say (it names an unnamed policy)."""
    return f"{doc.source} (document {doc.index})"


def _parse(doc: Document) -> Resource:
    """`parse_object`, where a bug in a parser refuses the document (so a policy fails
    closed) instead of stopping the source: what a control plane sends must not crash it."""
    try:
        return parse_object(doc.body)
    except FieldError:
        raise
    except Exception as exc:
        log.exception("validating a document failed unexpectedly", extra={"file": doc.source})
        raise FieldError("", f"could not be validated ({type(exc).__name__}: {exc})") from exc


class ManifestSet:
    def __init__(self) -> None:
        self.files: dict[str, FileView] = {}
        # Which files define a key, oldest first; the newest definition wins.
        self._owners: dict[ObjectKey, list[str]] = {}

    def errors(self) -> list[ManifestError]:
        return [e for view in self.files.values() for e in view.errors]

    def update_file(self, path: str, docs: list[Document] | ManifestError) -> Change:
        """A file was (re)read. `docs` is its documents, or why it could not be parsed."""
        old = self.files.get(path, FileView())
        if isinstance(docs, ManifestError):
            # Nothing in the file can be trusted: keep everything it defined before.
            self.files[path] = FileView(dict(old.objects), [docs])
            return Change()
        view = FileView()
        for doc in docs:
            try:
                obj = _parse(doc)
            except FieldError as exc:
                view.errors.append(doc.error(exc))
                key = refused_key(doc.body, _document(doc))
                if key is None:
                    continue
                previous = old.objects.get(key) or self.current(key)
                # Keyed as refused_key keyed it (the same document name): kept.key == key.
                kept = refused_version(
                    doc.body, exc, previous, _where(doc, exc.field), _document(doc)
                )
                if kept is not None:
                    view.objects[key] = kept
                continue
            if obj.key in view.objects:
                view.errors.append(
                    ManifestError(
                        path,
                        f"{obj.key} is defined twice; the later one is used",
                        line=doc.line,
                        document=doc.index,
                    )
                )
            view.objects[obj.key] = obj
        self.files[path] = view
        return self._diff(path, old.objects, view.objects)

    def remove_file(self, path: str) -> Change:
        old = self.files.pop(path, None)
        if old is None:
            return Change()
        return self._diff(path, old.objects, {})

    def _diff(
        self, path: str, before: dict[ObjectKey, Resource], after: dict[ObjectKey, Resource]
    ) -> Change:
        change = Change()
        for key in before.keys() - after.keys():
            owners = self._owners.get(key, [])
            if path in owners:
                owners.remove(path)
            if owners:
                change.upserts.append(self.files[owners[-1]].objects[key])
            else:
                self._owners.pop(key, None)
                change.deletes.append(key)
        for key, obj in after.items():
            owners = self._owners.setdefault(key, [])
            if path in owners:
                owners.remove(path)
            owners.append(path)
            if before.get(key) != obj:
                change.upserts.append(obj)
        return change

    def current(self, key: ObjectKey) -> Resource | None:
        """The version of `key` in force: the newest file's."""
        owners = self._owners.get(key)
        return self.files[owners[-1]].objects[key] if owners else None

    def all_objects(self) -> Iterable[Resource]:
        for key, owners in self._owners.items():
            yield self.files[owners[-1]].objects[key]
