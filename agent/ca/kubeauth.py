"""The CA's Kubernetes authenticator: a caller's service-account token checked by TokenReview.

With `ca serve --source kube`, a bearer token the CA did not mint goes to the API
server as a TokenReview (authentication.k8s.io/v1), as Istio's KubeJWTAuthenticator
does. The answer decides who the caller is (`caller_of`, sans-IO):

- not authenticated (unknown, expired, its pod or service account deleted): refused
  with the API server's reason;
- not a service account's (a user's or a node's own credential): refused;
- not bound to a pod (a legacy Secret token, or a TokenRequest without a bound pod):
  refused, since the pod and its node cannot be told; real bound tokens carry them in
  `status.user.extra` (authentication.kubernetes.io/pod-name, node-name);
- one of the node agent's service accounts (`node_accounts`, Istio's trusted node
  accounts): a node caller for the node its pod runs on, which then gets only the
  identities of that node's pods (`authority.authorize`), so another node's token is
  refused for this node's pods with the reason;
- any other service account: a workload caller bound to its pod, which gets only its
  own identity.

The bound pod must also be where the token says in the CA's own view of the cluster
(the source's store): a pod that has gone, or whose node differs, is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from agent.sources.kubeclient import KubeClient, KubeError
from agent.state import Pod, Snapshot
from agent.state.objects import ObjectKey

from .credentials import NODE, WORKLOAD, Caller, Unauthenticated

log = logging.getLogger("ca.kube")

REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
SA_PREFIX = "system:serviceaccount:"
EXTRA_POD = "authentication.kubernetes.io/pod-name"
EXTRA_NODE = "authentication.kubernetes.io/node-name"
DEFAULT_NODE_ACCOUNTS = ("slipstream-system/slipstream-agent",)


def _one(extra: Any, key: str) -> str:
    values = extra.get(key) if isinstance(extra, dict) else None
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], str):
        return values[0]
    return ""


def caller_of(
    review: Any, node_accounts: Iterable[str], snapshot: Snapshot | None = None
) -> Caller:
    """Who a TokenReview's answer says the caller is, or Unauthenticated saying why not."""
    status = review.get("status") if isinstance(review, dict) else None
    if not isinstance(status, dict):
        raise Unauthenticated("the API server's TokenReview answer has no status")
    if status.get("authenticated") is not True:
        error = status.get("error")
        why = error if isinstance(error, str) and error else "no reason given"
        raise Unauthenticated(f"the API server did not authenticate the token: {why}")
    user: dict[str, Any] = status["user"] if isinstance(status.get("user"), dict) else {}
    username: str = user["username"] if isinstance(user.get("username"), str) else ""
    if not username.startswith(SA_PREFIX):
        raise Unauthenticated(f"the token is {username or 'nobody'}'s, not a service account's")
    namespace, _, account = username[len(SA_PREFIX) :].partition(":")
    if not namespace or not account:
        raise Unauthenticated(f"the token's user {username!r} is not a service account")
    pod = _one(user.get("extra"), EXTRA_POD)
    node = _one(user.get("extra"), EXTRA_NODE)
    if not pod or not node:
        raise Unauthenticated(
            f"the token of service account {namespace}/{account} is not bound to a pod on a "
            "node (use a projected, pod-bound service-account token)"
        )
    if snapshot is not None:
        held = snapshot.get(ObjectKey("Pod", namespace, pod))
        if not isinstance(held, Pod):
            raise Unauthenticated(f"the token is bound to pod {namespace}/{pod}, which is gone")
        if held.node_name != node:
            raise Unauthenticated(
                f"the token says pod {namespace}/{pod} runs on node {node}, but it runs on "
                f"{held.node_name or 'no node'}"
            )
    credential = f"k8s:{namespace}/{account}/{pod}"
    if f"{namespace}/{account}" in set(node_accounts):
        return Caller(credential, NODE, node=node, source="kube")
    return Caller(
        credential, WORKLOAD, namespace=namespace, service_account=account, pod=pod, source="kube"
    )


class TokenReviewAuthenticator:
    name = "kube"

    def __init__(
        self,
        client: KubeClient,
        snapshot: Callable[[], Snapshot],
        node_accounts: Iterable[str] = DEFAULT_NODE_ACCOUNTS,
        audiences: Iterable[str] = (),
    ) -> None:
        self.client = client
        self.snapshot = snapshot
        self.node_accounts = tuple(node_accounts)
        self.audiences = list(audiences)

    async def authenticate(self, token: str) -> Caller | None:
        spec: dict[str, Any] = {"token": token}
        if self.audiences:
            spec["audiences"] = self.audiences
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}
        try:
            review = await self.client.call("POST", REVIEWS, body=body, timeout=10)
        except KubeError as exc:
            # Not the caller's fault, but nothing is signed without an answer: fail closed.
            log.warning("TokenReview failed", extra={"error": str(exc)})
            raise Unauthenticated(f"the token could not be reviewed: {exc}") from exc
        return caller_of(review, self.node_accounts, self.snapshot())
