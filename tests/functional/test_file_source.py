"""The file source on a real directory with real inotify: changes reach the store in a second."""

import asyncio
import os

import pytest

from agent.sources.file import FileSource
from agent.state import ObjectKey, StateStore, StateUpdater

NS = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels: {{team: '{team}'}}\n"


@pytest.fixture
async def source(tmp_path):
    store = StateStore()
    src = FileSource(str(tmp_path), StateUpdater(store))
    drain = asyncio.Event()
    (tmp_path / "base.yaml").write_text(NS.format(name="base", team="a"))
    task = asyncio.create_task(src.run(drain))
    async with asyncio.timeout(15):
        while not store.synced:
            await asyncio.sleep(0.01)
    yield store, src, tmp_path
    drain.set()
    await asyncio.wait_for(task, 15)


async def next_change(store, timeout=15.0):
    """The store's next snapshot (the timeout bounds a hang: a loaded machine decides the
    latency, which the benchmarks measure)."""
    return await asyncio.wait_for(store.wait_for_version(store.snapshot.version), timeout)


def ns_labels(snap, name):
    ns = snap.namespace(name)
    return dict(ns.meta.labels) if ns else None


async def test_initial_scan(source):
    store, _, _ = source
    assert ns_labels(store.snapshot, "base") == {"team": "a"}


async def test_new_changed_and_deleted_files(source):
    store, _, d = source
    (d / "extra.yaml").write_text(NS.format(name="extra", team="x"))
    snap = await next_change(store)
    assert ns_labels(snap, "extra") == {"team": "x"}

    # Written in place (no rename), as `echo >` or many editors do.
    with open(d / "extra.yaml", "w") as f:
        f.write(NS.format(name="extra", team="y"))
    snap = await next_change(store)
    assert ns_labels(snap, "extra") == {"team": "y"}

    os.unlink(d / "extra.yaml")
    snap = await next_change(store)
    assert snap.get(ObjectKey("Namespace", "", "extra")) is None
    assert ns_labels(snap, "base") == {"team": "a"}


async def test_atomic_rename_into_place(source):
    store, _, d = source
    (d / ".tmp-write").write_text(NS.format(name="base", team="b"))
    os.replace(d / ".tmp-write", d / "base.yaml")
    snap = await next_change(store)
    assert ns_labels(snap, "base") == {"team": "b"}


async def test_broken_file_is_reported_and_last_good_state_kept(source, caplog):
    store, src, d = source
    (d / "base.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: base\n")
    (d / "other.yaml").write_text(NS.format(name="other", team="o"))
    snap = await next_change(store)
    assert ns_labels(snap, "base") == {"team": "a"}, "the broken file's objects must stay"
    assert ns_labels(snap, "other") == {"team": "o"}, "other files still apply"
    (err,) = src.status()["errors"]
    assert err.startswith(f"{d / 'base.yaml'}:") and "not valid YAML" in err
    assert any(
        "manifest rejected" in r.getMessage() and "base.yaml" in str(r.__dict__.get("file"))
        for r in caplog.records
    )
    (d / "base.yaml").write_text(NS.format(name="base", team="fixed"))
    snap = await next_change(store)
    assert ns_labels(snap, "base") == {"team": "fixed"}
    assert src.status()["errors"] == []


async def test_ignores_other_files(source):
    store, _, d = source
    version = store.snapshot.version
    (d / "notes.txt").write_text("not a manifest")
    (d / ".hidden.yaml").write_text(NS.format(name="hidden", team="h"))
    (d / "real.yml").write_text(NS.format(name="real", team="r"))
    snap = await next_change(store)
    assert snap.version == version + 1
    assert ns_labels(snap, "real") == {"team": "r"} and ns_labels(snap, "hidden") is None
