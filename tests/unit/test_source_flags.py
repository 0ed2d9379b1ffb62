"""`--source`: one parser for every component's flag."""

import argparse

import pytest

from agent.common.errors import SlipstreamError
from agent.sources.flags import add_source_flags, parse_source


@pytest.mark.parametrize(
    ("text", "want"),
    [("kube", ("kube", "")), ("file:/x/y", ("file", "/x/y")), ("file:rel", ("file", "rel"))],
)
def test_good_sources(text, want):
    assert parse_source(text) == want


@pytest.mark.parametrize("text", ["", "file:", "files:/x", "kube:", "kubernetes", "/x/y"])
def test_bad_sources_are_named(text):
    with pytest.raises(SlipstreamError, match=r"--source .*expected file:DIR or kube"):
        parse_source(text)


def test_flags_required_or_defaulted():
    p = argparse.ArgumentParser(exit_on_error=False)
    add_source_flags(p, "objects")
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        p.parse_args([])
    args = p.parse_args(["--source", "kube", "--kubeconfig", "/k"])
    assert (args.source, args.kubeconfig) == ("kube", "/k")
    q = argparse.ArgumentParser()
    add_source_flags(q, "objects", required=False, default="file:/d")
    assert q.parse_args([]).source == "file:/d"
