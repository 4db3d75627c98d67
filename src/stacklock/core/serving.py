"""Container mode (`stacks.NAME.serving.runtime: container`): the group_vars of the
serving_container role, from the lock's recorded image (docs/containers.md).

The variables are a contract with verify's container checks (the facts collectors and
core/parity): `serving_runtime` (absent or `host`: host mode) and `serving_container`, with
exactly the keys below. Host mode renders nothing here, so host-mode group_vars stay as
they were.
"""

from __future__ import annotations

from typing import Any

from stacklock.core.lock import serving_runtime
from stacklock.errors import InvalidInput, Problem

#: the container's name; the unit is `stacklock-serving.service`
CONTAINER_NAME = "stacklock-serving"
UNIT = f"{CONTAINER_NAME}.service"
#: TorchServe's working folder in the image (key_file.json, temp files) and its logs
#: (flows/image.py builds the image with these)
STATE_DIR = "/run/torchserve"
LOG_DIR = "/var/log/torchserve"
#: the node's folder bound onto STATE_DIR: the key file TorchServe writes there is read on
#: the node by the endpoint's key service and by verify, as /var/lib/torchserve in host mode
HOST_STATE_DIR = "/var/lib/stacklock-serving"


def _fix(env_name: str) -> str:
    return (f"run: stacklock image build {env_name}, then stacklock image push {env_name} "
            "--registry URL (it records the image in the lock), then stacklock render")


def container_vars(env_name: str, stack_name: str, locked: dict[str, Any], *,
                   gpu: bool) -> dict[str, Any]:
    """The group_vars of a container-mode environment ({} in host mode). `gpu`: the
    environment's nodes are GPU nodes (the NVIDIA runtime; every stack pins a driver and the
    toolkit)."""
    if serving_runtime(locked) != "container":
        return {}
    image = locked.get("image")
    if not isinstance(image, dict) or not image.get("digest"):
        raise InvalidInput(
            f"environment {env_name} serves from a container, and the lock records no image "
            f"for stack {stack_name}",
            problems=[Problem(f"stacks.{stack_name}.image", "no image digest in the lock "
                              "(none pushed for this stack's fingerprint)", _fix(env_name))])
    user = str(image["user"])
    uid, gid = user.split(":")
    owned = f"uid={uid},gid={gid},mode=0750"
    mounts = [
        {"type": "bind", "source": HOST_STATE_DIR, "target": STATE_DIR, "read_only": False},
        {"type": "tmpfs", "source": "", "target": LOG_DIR, "read_only": False,
         "options": owned},
        {"type": "tmpfs", "source": "", "target": "/tmp", "read_only": False,
         "options": "mode=1777"},
    ]
    out: dict[str, Any] = {
        "serving_runtime": "container",
        "serving_container": {
            "name": CONTAINER_NAME,
            "image": f"{image['registry']}/{image['repository']}@{image['digest']}",
            "digest": image["digest"],
            "config_digest": image["config_digest"],
            "user": user,
            "read_only": True,
            "cap_add": [],
            "runtime": "nvidia" if gpu else "runc",
            "network": "host",
            "mounts": sorted(mounts, key=lambda m: m["target"]),
            "env": {},
        },
        # where TorchServe's key file is on the node (the endpoint's key service reads it)
        "torchserve_state_dir": HOST_STATE_DIR,
    }
    if str(image.get("registry_url", "")).startswith("http://"):
        # a plain-HTTP registry on a lab address: the nodes' dockerd must be told about it
        out["docker_daemon_options"] = {"insecure-registries": [str(image["registry"])]}
    return out


__all__ = ["CONTAINER_NAME", "HOST_STATE_DIR", "LOG_DIR", "STATE_DIR", "UNIT",
           "container_vars"]
