"""Container mode (`stacks.NAME.serving.runtime: container`): the group_vars of the
serving_container role, from the lock's recorded image (docs/containers.md).

The variables are a contract with verify's container checks (the facts collectors and
core/parity): `serving_runtime` (absent or `host`: host mode) and `serving_container`, with
exactly the keys below (`registry` and `registry_auth: ecr` only for an image in Amazon ECR:
the role then writes root's Docker config for the credential helper). Host mode renders
nothing here, so host-mode group_vars stay as they were.

Where an environment pulls from (`pull_location`): the lock's `stacks.STACK.image` holds one
digest, and under `pushed` where each environment it was pushed for pulls it from (an AWS
environment has its own ECR repository, maybe in its own account, and its nodes may pull only
from that one). An environment without its own entry pulls from the entry's top-level
registry/repository (the latest push), unless that is an ECR registry: then render is exit 2
naming `stacklock image push ENV`. A lock written before `pushed` existed renders as it did.
"""

from __future__ import annotations

import re
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

#: an Amazon ECR registry host (ACCOUNT.dkr.ecr.REGION.amazonaws.com, .com.cn in China)
ECR_REGISTRY = re.compile(r"^[0-9]{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")
#: root's Docker client config on the node, where an ECR image's registry gets its credential
#: helper (the serving_container role writes it; verify's files class knows its bytes)
DOCKER_CONFIG = "/root/.docker/config.json"
#: Docker's credential helper for ECR (binary docker-credential-ecr-login): the exact version
#: per OS, pinned and held with Docker's packages when the image is in ECR. Debian 12: bookworm
#: main's amazon-ecr-credential-helper (Depends: libc6, ca-certificates, the OS's own). No
#: other OS's version is recorded here (Ubuntu's universe package is per release and was not
#: read): render refuses an ECR image there rather than install an unpinned package.
ECR_LOGIN_PACKAGES: dict[str, tuple[dict[str, str], ...]] = {
    "debian12": ({"name": "amazon-ecr-credential-helper", "version": "0.6.0-1+b2"},),
}


def _fix(env_name: str) -> str:
    return (f"run: stacklock image build {env_name}, then stacklock image push {env_name} "
            "--registry URL (it records the image in the lock), then stacklock render")


#: what `stacks.STACK.image.pushed.ENV` holds: where ENV's nodes pull the image's digest
PULL_KEYS = ("registry", "registry_url", "repository")


def ecr_registry(locked: dict[str, Any]) -> str | None:
    """The ECR registry host of a container-mode stack's image as last pushed (the entry's
    top-level registry); None in host mode, without an image, or for another registry (the
    lab's: no login). What one environment pulls from: `pull_location`."""
    if serving_runtime(locked) != "container":
        return None
    image = locked.get("image")
    host = str(image.get("registry") or "") if isinstance(image, dict) else ""
    return host if ECR_REGISTRY.match(host) else None


def pull_location(env_name: str, stack_name: str, locked: dict[str, Any]) -> dict[str, str] | None:
    """Where ENV's nodes pull the stack's recorded image from (`registry` host,
    `registry_url`, `repository`; the digest is the entry's): ENV's own `pushed` entry; else
    the entry's top-level location (the latest push, or a lock without `pushed`). None in
    host mode or without a recorded digest. Exit 2 when ENV has no entry of its own and the
    image was pushed to ECR for other environments: ECR repositories are per environment
    (gpu_node_aws), and ENV's nodes may not pull from another one."""
    if serving_runtime(locked) != "container":
        return None
    image = locked.get("image")
    if not isinstance(image, dict) or not image.get("digest"):
        return None
    pushed = image.get("pushed")
    own = pushed.get(env_name) if isinstance(pushed, dict) else None
    if isinstance(own, dict):
        return {k: str(own.get(k) or "") for k in PULL_KEYS}
    where = {k: str(image.get(k) or "") for k in PULL_KEYS}
    if isinstance(pushed, dict) and ECR_REGISTRY.match(where["registry"]):
        others = ", ".join(sorted(str(e) for e in pushed)) or "no environment"
        raise InvalidInput(
            f"environment {env_name} pulls its serving image from ECR, and the lock records "
            f"no push of it for {env_name} (pushed for {others})",
            problems=[Problem(
                f"stacks.{stack_name}.image",
                f"{image['digest']} is recorded in {where['registry']}/{where['repository']} "
                f"for {others}; an environment's nodes pull only from its own ECR repository",
                f"run: stacklock image push {env_name} (the same digest into {env_name}'s "
                "repository, recorded in the lock), then stacklock render")])
    return where


def _ecr_host(where: dict[str, str] | None) -> str | None:
    host = (where or {}).get("registry", "")
    return host if ECR_REGISTRY.match(host) else None


def docker_packages(env_name: str, stack_name: str, locked: dict[str, Any]) -> list[dict[str, str]]:
    """The docker role's exact pins: the lock's Docker set, and for an image in ECR Docker's
    credential helper for ECR (installed, held, pinned and verified as Docker's own packages);
    exit 2 for an ECR image on an OS whose helper version is not recorded here."""
    pins = [dict(p) for p in locked["apt"]["docker"]]
    if _ecr_host(pull_location(env_name, stack_name, locked)) is None:
        return pins
    os_ = locked.get("os") or {}
    key = f"{os_.get('distribution', '')}{str(os_.get('release', '')).replace('.', '')}"
    helper = ECR_LOGIN_PACKAGES.get(key)
    if helper is None:
        known = ", ".join(f"{k}: {p['name']} {p['version']}" for k, ps in
                          sorted(ECR_LOGIN_PACKAGES.items()) for p in ps)
        raise InvalidInput(
            f"environment {env_name} pulls its serving image from ECR, and no version of "
            f"amazon-ecr-credential-helper is recorded for {key}",
            problems=[Problem(f"stacks.{stack_name}.os", f"the nodes log in to ECR with "
                              f"amazon-ecr-credential-helper, pinned and held; stacklock "
                              f"records its version only for {known}",
                              "serve this stack from Debian 12 nodes (os: {distribution: "
                              "debian, release: \"12\"}), or host mode (serving.runtime: host)")])
    return pins + [dict(p) for p in helper]


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
    where = pull_location(env_name, stack_name, locked)
    assert where is not None
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
            "image": f"{where['registry']}/{where['repository']}@{image['digest']}",
            "digest": image["digest"],
            "config_digest": image["config_digest"],
            "user": user,
            "read_only": True,
            "cap_add": [],
            "runtime": "nvidia" if gpu else "runc",
            # the NVIDIA runtime hands a container the GPUs it is asked for (--gpus): all of
            # them on a GPU node, none elsewhere
            "gpus": "all" if gpu else "none",
            "network": "host",
            "mounts": sorted(mounts, key=lambda m: m["target"]),
            "env": {},
        },
        # where TorchServe's key file is on the node (the endpoint's key service reads it)
        "torchserve_state_dir": HOST_STATE_DIR,
    }
    registry = _ecr_host(where)
    if registry is not None:
        # the nodes log in with the instance role through Docker's credential helper for ECR
        # (docker_packages pins it): root's Docker config names it for this registry
        out["serving_container"] |= {"registry": registry, "registry_auth": "ecr"}
    if where["registry_url"].startswith("http://"):
        # a plain-HTTP registry on a lab address: the nodes' dockerd must be told about it
        out["docker_daemon_options"] = {"insecure-registries": [where["registry"]]}
    return out


__all__ = ["CONTAINER_NAME", "DOCKER_CONFIG", "ECR_LOGIN_PACKAGES", "ECR_REGISTRY",
           "HOST_STATE_DIR", "LOG_DIR", "PULL_KEYS", "STATE_DIR", "UNIT", "container_vars",
           "docker_packages", "ecr_registry", "pull_location"]
