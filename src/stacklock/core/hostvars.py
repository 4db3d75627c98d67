"""Which of a host's rendered variables decide its expected files (the files class): the
variables the roles read, less run-time credentials and secrets. Kept apart from
stacklock.flows.integrity, which builds the trees, so that the verify play's reference action
can name a host's variables (and find a run's memo of them) without importing the builders."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

#: the host variables the roles read (those the verify play's reference task passes on)
VAR_PREFIXES = ("torchserve_", "stacklock_", "nvidia_", "cuda_", "docker_", "serving_endpoint_",
                "serving_runtime", "serving_container")

#: run-time credentials (extra vars of configure): no file hashed here depends on them, and
#: they are never kept (not in a memo key, not in the variables the templates see)
SECRET_VARS = ("stacklock_apt_auth", "stacklock_pip_auth")
#: ... and the serving endpoint's secrets in the secret store (endpoint.tls.secret,
#: endpoint.tokens.secret: the schema makes their names start with this)
SECRET_PREFIXES = ("stacklock_endpoint_",)


def read_by_roles(name: str) -> bool:
    """A variable the roles read (a prefix of VAR_PREFIXES), other than the run-time
    credentials, the endpoint's secrets and the files option itself."""
    return (name.startswith(VAR_PREFIXES) and name not in SECRET_VARS
            and not name.startswith(SECRET_PREFIXES) and name != "stacklock_files")


def host_vars(hv: Mapping[str, Any]) -> dict[str, Any]:
    """The host's variables the roles read (what the verify play's reference task passes)."""
    return {k: v for k, v in hv.items() if read_by_roles(k)}


def memo_key(hv: Mapping[str, Any]) -> str:
    """One key per distinct `host_vars`: hosts with equal variables expect equal files."""
    return hashlib.sha256(json.dumps(host_vars(hv), sort_keys=True, default=str)
                          .encode()).hexdigest()


__all__ = ["SECRET_PREFIXES", "SECRET_VARS", "VAR_PREFIXES", "host_vars", "memo_key",
           "read_by_roles"]
