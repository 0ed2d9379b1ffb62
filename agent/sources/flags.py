"""`--source file:DIR|kube` and `--kubeconfig`: how every component (agent, CA, gateway) is
told where it reads the cluster, declared and checked in one place."""

from __future__ import annotations

import argparse

from agent.common.errors import SlipstreamError

KUBECONFIG_HELP = (
    "with --source kube: the API server and credentials (default: $KUBECONFIG, else"
    " in-cluster: the pod's service-account token and CA, KUBERNETES_SERVICE_HOST/PORT)"
)


def add_source_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    purpose: str,
    *,
    required: bool = True,
    default: str | None = None,
) -> None:
    """`--source` and `--kubeconfig`; `purpose` says what the component reads there."""
    parser.add_argument(
        "--source",
        required=required,
        default=default,
        metavar="file:DIR|kube",
        help=f"{purpose}: file:DIR (a watched directory of manifests) or kube (the"
        " Kubernetes API server)",
    )
    parser.add_argument("--kubeconfig", metavar="FILE", help=KUBECONFIG_HELP)


def parse_source(text: str) -> tuple[str, str]:
    """("file", DIR) or ("kube", ""); anything else is refused naming what was given."""
    kind, _, directory = text.partition(":")
    if text == "kube":
        return "kube", ""
    if kind == "file" and directory:
        return "file", directory
    raise SlipstreamError(f"--source {text!r}: expected file:DIR or kube")
