"""The one file watcher (agent/common/watch.py) on a real directory, and the gateway master on it.

The poll behind inotify is set to an hour here: what wakes a waiter within the
test's timeout can only be inotify (or a poke).
"""

import asyncio
import os

import pytest

from agent.common.errors import SlipstreamError
from agent.common.watch import DirectoryWatcher
from gateway.master import Master

HOUR = 3600.0


async def test_a_write_in_the_directory_wakes_the_waiter(tmp_path):
    drain = asyncio.Event()
    async with DirectoryWatcher(str(tmp_path), poll=HOUR) as watcher:
        waiter = asyncio.create_task(watcher.wait(drain))
        await asyncio.sleep(0)
        (tmp_path / "objects.yaml").write_text("a: 1\n")
        assert await asyncio.wait_for(waiter, 30) is True


async def test_a_file_renamed_into_place_wakes_the_waiter(tmp_path):
    async with DirectoryWatcher(str(tmp_path), poll=HOUR) as watcher:
        (tmp_path / ".new").write_text("a: 2\n")
        await watcher.wait(asyncio.Event())  # the write of the temporary file
        waiter = asyncio.create_task(watcher.wait(asyncio.Event()))
        await asyncio.sleep(0)
        os.rename(tmp_path / ".new", tmp_path / "config.yaml")
        assert await asyncio.wait_for(waiter, 30) is True


async def test_poke_wakes_and_drain_ends_the_wait(tmp_path):
    drain = asyncio.Event()
    async with DirectoryWatcher(str(tmp_path), poll=HOUR) as watcher:
        waiter = asyncio.create_task(watcher.wait(drain))
        await asyncio.sleep(0)
        watcher.poke()
        assert await asyncio.wait_for(waiter, 30) is True
        waiter = asyncio.create_task(watcher.wait(drain))
        await asyncio.sleep(0)
        drain.set()
        assert await asyncio.wait_for(waiter, 30) is False


async def test_a_directory_that_cannot_be_watched_is_named(tmp_path):
    missing = str(tmp_path / "missing")
    with pytest.raises(SlipstreamError, match="missing"):
        async with DirectoryWatcher(missing):
            pass


async def test_the_gateway_master_reloads_on_inotify_not_on_a_poll(tmp_path):
    """The master used to stat its file every 0.5 s; it now waits on the one watcher."""
    config = tmp_path / "gateway.yaml"
    config.write_text("workers: 1\n")
    master = Master(str(config))
    master._stamp = master._stat()
    reloaded = asyncio.Event()

    async def reload(reason):
        reloaded.set()
        return True

    master.reload = reload  # the reload itself is tested with real processes elsewhere
    stop = asyncio.Event()
    async with DirectoryWatcher(str(tmp_path), poll=HOUR) as watcher:
        task = asyncio.create_task(master.watch(watcher, stop))
        (tmp_path / ".gateway.yaml.tmp").write_text("workers: 2\n")
        os.rename(tmp_path / ".gateway.yaml.tmp", config)  # as editors and ConfigMaps do
        await asyncio.wait_for(reloaded.wait(), 30)
        stop.set()
        await asyncio.wait_for(task, 30)
