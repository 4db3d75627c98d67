# Copyright: stacklock contributors. Apache-2.0.
"""Action plugin `stacklock_endpoint_client`: the serving endpoint of one node as a client sees
it, from the controller (docs/verify.md). Nothing runs on the node.

A TLS handshake to the node's address (`ansible_host`) and the endpoint's port: the served
certificate's chain against the environment's CA (the lab CA, `serving_endpoint_tls_ca_src`, or
the system's trust store), its expiry against `serving_endpoint_certificate_min_days`, its
names against the address, its sha256 against the certificate the controller configured; then
each model's smoke test through the endpoint with a client token. Sets the fact
`stacklock_endpoint_client` (the facts section `endpoint_client`), which `stacklock_parity`
adds to the node's facts; `stacklock verify --fast` computes the same
(stacklock.adapters.tls.client_check). Its result never holds a token or a key.

Options: probe_timeout (seconds, 20).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ansible.plugins.action import ActionBase

try:
    import stacklock  # noqa: F401
except ImportError:  # a checkout without `pip install -e .`: use its src/ directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        hv = task_vars or {}
        result["changed"] = False
        if not self._templar.template(hv.get("serving_endpoint_enabled", False)):
            result["skipped"] = True
            result["msg"] = "the environment has no endpoint"
            return result
        # imported here: Ansible runs this in a worker forked per host, and a host without an
        # endpoint needs none of it (cryptography alone is 70 ms per host)
        from stacklock.adapters import tls

        names = [k for k in tls.CLIENT_VARS if k in hv]
        # the secret store's variables the endpoint names (its certificate, its tokens)
        for ref in ("serving_endpoint_tls_secret", "serving_endpoint_tokens_secret"):
            name = str(self._templar.template(hv.get(ref) or ""))
            if name and name in hv:
                names.append(name)
        values = self._templar.template({k: hv[k] for k in names})
        section = tls.client_check(values, timeout=float(self._task.args.get("probe_timeout")
                                                           or 20))
        result["ansible_facts"] = {"stacklock_endpoint_client": section}
        return result
