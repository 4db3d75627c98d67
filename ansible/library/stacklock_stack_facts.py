#!/usr/bin/python
# Copyright: stacklock contributors. Apache-2.0.
"""Gather the GPU model-serving stack of one node, read-only, in a single execution.

The entry point only: the options, the documentation, and ``main()``. The collectors (one per
kind of state: apt, gpu, cuda, docker, toolkit, java, python, torchserve, systemd, ...) are the
package ``ansible.module_utils.stacklock_facts`` (``ansible/module_utils/stacklock_facts/``),
which Ansible ships with this module (``module_utils`` in ansible.cfg) and ``stacklock verify
--fast`` ships in its payload. Python standard library only: it runs on the node with the
node's python3. Every probe is bounded by a timeout; a failed probe records an ``error`` for its
section and never fails the module. The schema (``stacklock.facts/v1``) is documented in
docs/facts.md.
"""

from __future__ import annotations

import os
import sys

DOCUMENTATION = r"""
---
module: stacklock_stack_facts
short_description: Gather the pinned GPU serving stack of a node (stacklock.facts/v1)
description:
  - Reads, in one execution and without changing anything, the OS, the GPUs, the running
    NVIDIA driver and the installed driver packages, the CUDA toolkit, Docker and its default
    runtime, the nvidia-container-toolkit, Java, Python, torch and TorchServe inside the
    service's virtualenv, the sha256 of TorchServe's config and of every model archive, the
    models TorchServe serves, the systemd state of torchserve and docker, dpkg holds and the
    installed version of each package named in O(packages).
  - >-
      Every probe is bounded by O(probe_timeout); a probe that fails records C(error) in its
      section (and in C(errors)) instead of failing the module. A probe that could not look
      (permission denied, timeout, token refused, a crash) says so with C(could not look:) and is
      listed in C(blocked): its value is unknown, not absent.
  - >-
      Read-only, with one exception: when TorchServe refuses the management or inference key
      (the keys in key_file.json expire C(token_expiration_min) after TorchServe started, 60
      minutes by default), the module asks TorchServe's own token API for a fresh key of that kind
      with the API key (which does not expire) and retries once. A refused key is an expired key,
      so no working key is taken from anyone. A smoke test (O(smoke)) is one inference request per
      model; the model answers it as any client's.
  - Returns C(ansible_facts.stacklock_stack); the schema is documented in docs/facts.md.
version_added: "0.1.0"
options:
  packages:
    description: apt package names whose installed version and hold state are reported.
    type: list
    elements: str
    default: []
  package_families:
    description:
      - Shell globs (fnmatch) of the pinned components' package families (C(nvidia-*),
        C(libnvidia-*), C(cuda-*)). Every installed package whose name matches one is reported
        in C(family_packages) with its version and hold, so that C(stacklock verify) sees a
        family member the lock does not pin.
    type: list
    elements: str
    default: []
  pip_packages:
    description: extra Python distributions whose version is read inside the venv.
    type: list
    elements: str
    default: []
  torchserve_venv:
    description: TorchServe's virtualenv.
    type: path
    default: /opt/torchserve/venv
  torchserve_config:
    description: TorchServe's config.properties.
    type: path
    default: /etc/torchserve/config.properties
  torchserve_model_store:
    description: the model store whose C(.mar) files are hashed.
    type: path
    default: /var/lib/torchserve/model-store
  torchserve_key_file:
    description:
      - TorchServe's key_file.json (token authorization). When not set, the working
        directories C(/var/lib/torchserve), C(/opt/torchserve) and C(/etc/torchserve) are tried.
    type: path
  torchserve_management_url:
    description: TorchServe's management API.
    type: str
    default: http://127.0.0.1:8081
  torchserve_inference_url:
    description: TorchServe's inference API (the smoke tests' C(/predictions/NAME/VERSION)).
    type: str
    default: http://127.0.0.1:8080
  smoke:
    description:
      - >-
          the models whose smoke test runs, as the lock renders them (C(torchserve_models) entries
          with a C(smoke)), each C({name, version, smoke: {input_base64, input_sha256,
          content_type, ...}}). The module POSTs the input to
          C(/predictions/NAME/VERSION) with the inference key and reports the response's status,
          sha256 and numbers under C(torchserve.smoke.NAME); the comparison happens on the
          controller (stacklock.parity).
    type: list
    elements: dict
    default: []
  probe_timeout:
    description: seconds each probe (command, HTTP request) may take.
    type: float
    default: 10
  use_nvml:
    description: read GPUs through NVML first when pynvml is importable.
    type: bool
    default: true
  inventory:
    description:
      - also report every installed dpkg package (name, version, architecture) as
        C(os_packages), for the SBOM and C(stacklock diff). Off by default, so that verify
        returns only what it compares.
    type: bool
    default: false
  run_id:
    description:
      - an identifier of this verification run, returned as C(run_id), so that the comparison
        can tell facts of this run from stale facts (a fact cache, an earlier run).
    type: str
  deep:
    description:
      - hash every model archive again, ignoring the archive digest cache.
    type: bool
    default: false
  archive_cache:
    description:
      - where the digests of model archives are kept between runs (root, 0600), each with the
        file's identity (device, inode, size, mtime, ctime); a digest is reused only while that
        identity is unchanged. An empty string disables the cache. This file is the module's
        second write (the first renews an expired TorchServe key); it is not written in check
        mode.
    type: str
    default: /var/cache/stacklock/archive-digests.json
  archive_hash_timeout:
    description:
      - seconds all archive hashing of one run may take; an archive still unhashed then is
        reported as could-not-look (exit 3), and the digests finished so far are cached, so
        the next run goes on where this one stopped.
    type: float
    default: 300
  units:
    description:
      - systemd units whose effective settings are read (C(systemctl show)), with their main
        process and its children as the kernel sees them (/proc); empty leaves the runtime
        class out (C(units), C(manager_environment), C(processes)).
    type: list
    elements: str
    default: []
  watch_files:
    description:
      - C(UNIT=PATH) settings files of a unit (besides its unit files) whose change needs a
        restart; their modification times are reported with the process start.
    type: list
    elements: str
    default: []
  commands:
    description:
      - C(NAME=UNIT) commands to resolve on the PATH of UNIT (empty UNIT - systemd's default
        PATH) - the first match, its C(readlink -f) target, the alternative it goes through.
    type: list
    elements: str
    default: []
  files:
    description:
      - the files class, sent by the controller (stacklock.core.integrity), never read from
        the node - one entry per tree (C(dpkg) package, C(record) locked distribution,
        C(paths) role files) with the hash of the lines the controller expects, and one per
        managed directory (C(dir), C(recurse)). Returns each tree's actual hash (its lines
        only when it differs) and the files of the managed directories nothing owns.
    type: list
    elements: dict
    default: []
  files_cache:
    description:
      - where file digests are kept between runs (root, 0600), each with the file's identity;
        only speeds up (C(deep) ignores it). An empty string disables it.
    type: str
    default: /var/cache/stacklock/file-digests.json
  endpoint_url:
    description:
      - the node's inference endpoint (role serving_endpoint) as the node itself reaches it,
        C(https://127.0.0.1:PORT); given only where the environment has one. The health check
        (O(endpoint_health_path), no token) and a prediction without a token are requested
        and their HTTP status reported in C(endpoint) (a stopped nginx - C(not answering)).
    type: str
  endpoint_health_path:
    description: the endpoint's health check path (answered without a token).
    type: str
    default: /ping
  container:
    description:
      - >-
          container mode only (C(serving_runtime: container)) - the serving container to read,
          C({name, image, user, python}) from the rendered C(serving_container): its live
          settings (C(docker inspect)), the image's RepoDigests, every other running container,
          the Python closure inside it (C(docker exec)), and on a node with an NVIDIA GPU the
          GPU validation container (C(docker run --rm --runtime nvidia --gpus all --network
          none) of the image by digest; not with C(validate_gpu: false), as the inventory
          play asks). Reported in C(container); compared on the controller.
    type: dict
attributes:
  check_mode:
    support: full
author: stacklock
"""

EXAMPLES = r"""
- name: Gather the stack
  stacklock_stack_facts:
    packages: [docker.io, nvidia-driver]
"""

RETURN = r"""
ansible_facts:
  description: C(stacklock_stack), a dict with C(schema=stacklock.facts/v1).
  returned: always
  type: dict
"""


def _module_utils_from_checkout() -> None:
    """Serve ``ansible.module_utils.stacklock_facts`` from this checkout's ansible/module_utils
    when this file is loaded outside Ansible (tests, a Python shell). Under Ansible (AnsiballZ)
    and ``verify --fast`` the package is shipped with the module, and this does nothing."""
    import importlib
    import importlib.util
    import types

    try:
        if importlib.util.find_spec("ansible.module_utils.stacklock_facts") is not None:
            return
    except ImportError:  # no ansible package at all
        pass
    folder = os.path.realpath(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                           os.pardir, "module_utils"))
    if not os.path.isdir(os.path.join(folder, "stacklock_facts")):
        return  # the import below fails naming the missing package
    for name in ("ansible", "ansible.module_utils"):
        try:
            importlib.import_module(name)
        except ImportError:
            package = types.ModuleType(name)
            package.__path__ = []
            sys.modules[name] = package
    sys.modules["ansible"].module_utils = sys.modules["ansible.module_utils"]  # type: ignore[attr-defined]
    sys.modules["ansible.module_utils"].__path__.append(folder)


_module_utils_from_checkout()

# family_packages, probe_dpkg and Result: also loaded from this file by tests/unit/core/test_apt_sets.py
from ansible.module_utils.stacklock_facts.apt import family_packages, probe_dpkg  # noqa: E402
from ansible.module_utils.stacklock_facts.collect import SCHEMA, gather  # noqa: E402
from ansible.module_utils.stacklock_facts.node import Result  # noqa: E402

__all__ = ["SCHEMA", "Result", "family_packages", "gather", "main", "probe_dpkg"]


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={
            "packages": {"type": "list", "elements": "str", "default": []},
            "pip_packages": {"type": "list", "elements": "str", "default": []},
            "package_families": {"type": "list", "elements": "str", "default": []},
            "torchserve_venv": {"type": "path", "default": "/opt/torchserve/venv"},
            "torchserve_config": {"type": "path",
                                  "default": "/etc/torchserve/config.properties"},
            "torchserve_model_store": {"type": "path",
                                       "default": "/var/lib/torchserve/model-store"},
            "torchserve_key_file": {"type": "path", "default": None, "no_log": False},
            "torchserve_management_url": {"type": "str", "default": "http://127.0.0.1:8081"},
            "torchserve_inference_url": {"type": "str", "default": "http://127.0.0.1:8080"},
            "smoke": {"type": "list", "elements": "dict", "default": []},
            "probe_timeout": {"type": "float", "default": 10.0},
            "use_nvml": {"type": "bool", "default": True},
            "run_id": {"type": "str", "default": None},
            "inventory": {"type": "bool", "default": False},
            "deep": {"type": "bool", "default": False},
            "archive_cache": {"type": "str",
                              "default": "/var/cache/stacklock/archive-digests.json"},
            "archive_hash_timeout": {"type": "float", "default": 300.0},
            # the runtime class (docs/facts.md): units to read, UNIT=PATH settings files whose
            # change needs a restart, NAME=UNIT commands to resolve on the unit's PATH
            "units": {"type": "list", "elements": "str", "default": []},
            "watch_files": {"type": "list", "elements": "str", "default": []},
            "commands": {"type": "list", "elements": "str", "default": []},
            # the files class (docs/facts.md): expected tree hashes and managed directories
            "files": {"type": "list", "elements": "dict", "default": []},
            "files_cache": {"type": "str", "default": "/var/cache/stacklock/file-digests.json"},
            # the serving endpoint (role serving_endpoint): does it answer, does it check tokens
            "endpoint_url": {"type": "str", "default": None},
            "endpoint_health_path": {"type": "str", "default": "/ping"},
            # container mode (serving_runtime: container): the serving container to read
            "container": {"type": "dict", "default": None},
        },
        supports_check_mode=True,
    )
    facts = gather(dict(module.params, _check_mode=module.check_mode))
    module.exit_json(changed=False, ansible_facts={"stacklock_stack": facts})


if __name__ == "__main__":
    main()
