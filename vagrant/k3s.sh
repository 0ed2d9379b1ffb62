#!/bin/sh
# Vagrant provisioning, inside the guest as root, after provision.sh: a one-node k3s with
# Slipstream's manifests applied (deploy/overlays/k3s), a demo namespace labelled into the mesh
# with two pods, and vagrant/check-k3s.sh run on them (their traffic is captured and encrypted).
#
# SLIPSTREAM_K3S=auto (default): only when the guest reaches get.k3s.io, else it says so and
#   skips; =1: an unreachable get.k3s.io or a missing image is an error; =0: skip.
# Needs the image slipstream:dev (`make image` on the host, then `docker save slipstream:dev
#   -o slipstream-dev.tar` and SLIPSTREAM_IMAGE_TAR=$PWD/slipstream-dev.tar vagrant provision):
#   it is imported from /tmp/slipstream-dev.tar when the Vagrantfile uploaded one.
# Unverified: the machines this project is checked on reach only Debian's mirror.
set -eu
MODE=${SLIPSTREAM_K3S:-auto}
DEMO_NS=slipstream-demo
ROOTS=/var/lib/slipstream-vm/roots
say() { printf 'k3s: %s\n' "$*"; }
skip() {
    if [ "$MODE" = 1 ]; then
        echo "k3s: $* (SLIPSTREAM_K3S=1)" >&2
        exit 1
    fi
    say "$*: skipping k3s (SLIPSTREAM_K3S=1 makes this an error, =0 silences it)"
    exit 0
}

[ "$MODE" = 0 ] && { say "SLIPSTREAM_K3S=0: skipped"; exit 0; }
if ! curl -sfI -m 15 https://get.k3s.io >/dev/null 2>&1; then
    skip "get.k3s.io is not reachable from this guest"
fi

if ! command -v k3s >/dev/null 2>&1; then
    say "installing k3s from get.k3s.io"
    curl -sfL https://get.k3s.io | INSTALL_K3S_EXEC="--write-kubeconfig-mode=0644" sh -
fi
export KUBECONFIG=/etc/rancher/k3s/k3s.yaml
kubectl() { k3s kubectl "$@"; }
for _ in $(seq 120); do
    kubectl get nodes 2>/dev/null | grep -q " Ready " && break
    sleep 5
done
kubectl wait --for=condition=Ready node --all --timeout=60s

if [ -e /tmp/slipstream-dev.tar ]; then
    say "importing slipstream:dev from /tmp/slipstream-dev.tar"
    k3s ctr images import /tmp/slipstream-dev.tar
fi
if ! k3s ctr images ls -q | grep -q "slipstream:dev$"; then
    skip "no image slipstream:dev in k3s (make image on the host, save it, SLIPSTREAM_IMAGE_TAR)"
fi

# The CA's roots, made once in the guest (deploy/README.md, "Install").
SS=/slipstream/.venv/bin/slipstream
if ! kubectl get namespace slipstream-system >/dev/null 2>&1; then
    kubectl create namespace slipstream-system
fi
if ! kubectl -n slipstream-system get secret slipstream-ca-roots >/dev/null 2>&1; then
    [ -e "$ROOTS" ] || "$SS" ca roots init --root-dir "$ROOTS"
    kubectl -n slipstream-system create secret generic slipstream-ca-roots --from-file="$ROOTS"
    "$SS" ca roots bundle --root-dir "$ROOTS" > "$ROOTS.bundle.pem"
    kubectl -n slipstream-system create configmap slipstream-ca-bundle \
        --from-file=bundle.pem="$ROOTS.bundle.pem"
fi
say "kubectl apply -k /slipstream/deploy/overlays/k3s"
kubectl apply -k /slipstream/deploy/overlays/k3s
kubectl -n slipstream-system rollout status deployment/slipstream-ca --timeout=600s
kubectl -n slipstream-system rollout status daemonset/slipstream-agent --timeout=600s

# The demo namespace, labelled before its pods start (slipstream-cni captures them at creation).
kubectl create namespace "$DEMO_NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl label namespace "$DEMO_NS" slipstream.dev/dataplane-mode=ambient --overwrite
kubectl create namespace slipstream-plain --dry-run=client -o yaml | kubectl apply -f -
for ns in "$DEMO_NS" slipstream-plain; do
    kubectl apply -n "$ns" -f - <<YAML
apiVersion: v1
kind: Pod
metadata: {name: server, labels: {app: server}}
spec:
  containers:
  - {name: main, image: "slipstream:dev", imagePullPolicy: Never,
     command: [slipstream, app, tcp-echo, --port, "9000"]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  containers:
  - {name: main, image: "slipstream:dev", imagePullPolicy: Never, command: [sleep, infinity]}
YAML
    kubectl -n "$ns" wait --for=condition=Ready pod/server pod/client --timeout=600s
done
/slipstream/vagrant/check-k3s.sh
