"""What the lab refuses that the mesh reads: a pod it cannot run (no command, env it cannot
fill) and a Service outside its range. The shared parser takes these from a real cluster
(tests/unit/test_objects.py); `lab apply` names the document and field."""

import pytest

from agent.common.manifest import Document
from agent.lab.errors import LabError
from agent.lab.lab import Lab
from tests.unit.test_lab_model import state


def pod(container: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": [{"name": "c", **container}]},
    }


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            pod({"image": "nginx"}),
            "spec.containers[0].command: is required: lab pods have no image",
        ),
        (
            pod(
                {
                    "command": ["sleep", "1"],
                    "env": [
                        {"name": "A", "value": "1"},
                        {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                    ],
                }
            ),
            "spec.containers[0].env[1].valueFrom: only fieldRef is supported in the lab",
        ),
        (
            pod(
                {
                    "command": ["sleep", "1"],
                    "env": [{"name": "B", "valueFrom": {"fieldRef": {"fieldPath": "spec.nope"}}}],
                }
            ),
            "spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: 'spec.nope' is not one of",
        ),
        (
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "s", "namespace": "default"},
                "spec": {"clusterIP": "192.168.1.1", "ports": [{"port": 80}]},
            },
            "spec.clusterIP: 192.168.1.1 is outside the service range 10.96.0.0/16",
        ),
    ],
)
def test_what_the_lab_cannot_run_is_refused_naming_the_field(tmp_path, body, error):
    lab = Lab("t", str(tmp_path))
    with pytest.raises(LabError) as exc:
        lab._check(state(), [Document("m.yaml", 1, 1, body)])
    assert error in str(exc.value)


def test_what_the_lab_can_run_passes():
    body = pod(
        {
            "command": ["sleep", "1"],
            "env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        }
    )
    (checked,) = Lab("t", "/nonexistent")._check(state(), [Document("m.yaml", 1, 1, body)])
    assert checked.obj.key.name == "p"
