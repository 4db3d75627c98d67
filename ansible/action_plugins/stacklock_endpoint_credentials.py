# Copyright: stacklock contributors. Apache-2.0.
"""Action plugin `stacklock_endpoint_credentials`: the endpoint's certificate, key and client
tokens of one node, on the controller (docs/serving.md). Nothing runs on the node.

* tls_source `files`: the certificate and key files the manifest names must exist, and the
  key must be readable by its owner only (mode 0600 or 0400); returned as paths.
* tls_source `lab_ca`: the lab's own CA (made on first use under `lab_dir`) issues the node's
  certificate for its lab address (`address`) and name (stacklock.adapters.tls); paths.
* tokens_source `file`: the token file must be 0600 or 0400; its tokens are checked and
  returned. `lab`: the lab's token file (made on first use). `secret`: left to the role (the
  variable is read there).
* metrics_tokens_source: the scrapers' tokens of the /metrics route, the same way (`lab`: the
  lab's one scrape token); `none` (the default) without the route.

The result holds the tokens: it is marked no_log (`_ansible_no_log`) whatever the task says,
so it never reaches a log or a callback; a failure's message names files, never a value.

Options: tls_source, cert_src, key_src, tokens_source, tokens_src, metrics_tokens_source,
metrics_tokens_src, lab_dir, environment, node, address, project.
"""

from __future__ import annotations

import stat
import sys
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

try:
    from stacklock.adapters import tls
    from stacklock.errors import StacklockError
except ImportError:  # a checkout without `pip install -e .`: use its src/ directly
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from stacklock.adapters import tls
    from stacklock.errors import StacklockError


def _private(path: Path, what: str) -> Path:
    try:
        st = path.stat()
    except OSError as exc:
        raise AnsibleActionFail(f"{what}: {path} cannot be read on the controller "
                                f"({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise AnsibleActionFail(f"{what}: {path} is not a file")
    if st.st_mode & 0o077:
        raise AnsibleActionFail(
            f"{what}: {path} has mode {stat.S_IMODE(st.st_mode):04o}: group or others can read "
            f"this secret; run chmod 600 {path} (and keep it out of git)")
    return path


def _file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise AnsibleActionFail(f"{what}: {path} does not exist on the controller")
    return path


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = self._task.args
        result["changed"] = False
        tls_source = str(args.get("tls_source") or "")
        tokens_source = str(args.get("tokens_source") or "")
        metrics_source = str(args.get("metrics_tokens_source") or "none")
        lab_dir = Path(str(args.get("lab_dir") or ""))
        env = str(args.get("environment") or "")
        try:
            if tls_source == "files":
                result["cert"] = str(_file(Path(str(args["cert_src"])),
                                           "endpoint.tls.cert_file"))
                result["key"] = str(_private(Path(str(args["key_src"])), "endpoint.tls.key_file"))
            elif tls_source == "lab_ca":
                if not str(args.get("lab_dir") or ""):
                    raise AnsibleActionFail("lab_ca needs lab_dir (serving_endpoint_lab_dir)")
                issued = tls.node_certificate(lab_dir, env, str(args["node"]),
                                              [str(args["address"])],
                                              project=str(args.get("project") or "stacklock"))
                result |= {"cert": str(issued.cert), "key": str(issued.key),
                           "ca": str(issued.ca), "not_after": issued.not_after.isoformat()}
                # a new certificate is a change on the controller (the copy to the node says
                # whether the node changed)
                result["changed"] = issued.changed
            elif tls_source != "secret":
                raise AnsibleActionFail(f"tls_source {tls_source!r}: files, secret or lab_ca")
            if tokens_source == "file":
                path = _private(Path(str(args["tokens_src"])), "endpoint.tokens.file")
                result["tokens"] = tls.read_tokens(path)
            elif tokens_source == "lab":
                result["tokens"] = tls.read_tokens(tls.ensure_token(lab_dir, env))
            elif tokens_source != "secret":
                raise AnsibleActionFail(f"tokens_source {tokens_source!r}: file, secret or lab")
            # the scrapers' tokens (/metrics): the same sources, `none` without the route
            if metrics_source == "file":
                path = _private(Path(str(args["metrics_tokens_src"])),
                                "endpoint.metrics.tokens.file")
                result["metrics_tokens"] = tls.read_tokens(path)
            elif metrics_source == "lab":
                result["metrics_tokens"] = tls.read_tokens(tls.ensure_scrape_token(lab_dir))
            elif metrics_source not in ("secret", "none"):
                raise AnsibleActionFail(f"metrics_tokens_source {metrics_source!r}: file, "
                                        "secret, lab or none")
        except StacklockError as exc:
            raise AnsibleActionFail(str(exc)) from None
        except KeyError as exc:
            raise AnsibleActionFail(f"missing option {exc}") from None
        if tokens_source in ("file", "lab") and not result.get("tokens"):
            raise AnsibleActionFail("the token file holds no token: add one (openssl rand -hex 32)")
        if metrics_source in ("file", "lab") and not result.get("metrics_tokens"):
            raise AnsibleActionFail("the scrape token file holds no token: add one "
                                    "(openssl rand -hex 32)")
        result["_ansible_no_log"] = True
        return result
