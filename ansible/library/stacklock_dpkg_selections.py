#!/usr/bin/python
# Copyright: stacklock contributors. Apache-2.0.
"""Set the dpkg selection (hold, install) of many packages in one execution.

`ansible.builtin.dpkg_selections` takes one package: a role holding 40 pins ran 40 module
executions (about 33 s of a fresh lab node's provisioning, 6 s of every converge). This module
reads every selection with one `dpkg-query` and writes the ones that differ with one
`dpkg --set-selections`. Check mode and diff are supported (what would change, nothing written).
Python standard library only; it runs on the node with the node's python3.
"""

from __future__ import annotations

import subprocess

DOCUMENTATION = r"""
---
module: stacklock_dpkg_selections
short_description: Hold (or release) many apt packages at once
description:
  - Sets the dpkg selection of every installed package of O(names) to O(selection), the way
    C(apt-mark hold) / C(apt-mark unhold) do, with one C(dpkg-query) and at most one
    C(dpkg --set-selections).
  - A name that is not installed is left alone and listed in C(not_installed) (as
    C(apt-mark hold) does); it does not make the task changed.
version_added: "0.1.0"
options:
  names:
    description: Package names (without version).
    type: list
    elements: str
    required: true
  selection:
    description: C(hold) keeps apt from changing the package; C(install) releases it.
    type: str
    choices: [hold, install]
    required: true
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
author: stacklock contributors
"""

EXAMPLES = r"""
- name: The pinned packages are held
  stacklock_dpkg_selections:
    names: [docker.io, containerd, runc]
    selection: hold
"""

RETURN = r"""
changed_names:
  description: The packages whose selection was (or, in check mode, would be) changed.
  type: list
  elements: str
  returned: always
not_installed:
  description: Names of O(names) that are not installed (left alone).
  type: list
  elements: str
  returned: always
"""


def selections(names: list[str]) -> dict[str, str]:
    """Installed package name -> its selection (`hold`, `install`, `deinstall`, ...)."""
    if not names:
        return {}
    res = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package}\t${db:Status-Want}\t${db:Status-Status}\n", "--",
         *names], capture_output=True, text=True, timeout=120, check=False)
    out: dict[str, str] = {}
    for line in res.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2] not in ("not-installed", "config-files"):
            out[parts[0]] = parts[1]
    return out


def plan(names: list[str], selection: str, current: dict[str, str]) -> tuple[list[str], list[str]]:
    """(the names to change, the names not installed), each sorted and unique."""
    wanted = sorted(set(names))
    return ([n for n in wanted if n in current and current[n] != selection],
            [n for n in wanted if n not in current])


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(
        argument_spec={"names": {"type": "list", "elements": "str", "required": True},
                       "selection": {"type": "str", "choices": ["hold", "install"],
                                     "required": True}},
        supports_check_mode=True)
    names = [str(n) for n in module.params["names"]]
    selection = str(module.params["selection"])
    current = selections(names)
    todo, missing = plan(names, selection, current)
    result = {"changed": bool(todo), "changed_names": todo, "not_installed": missing}
    if module._diff:
        result["diff"] = {"before": "".join(f"{n} {current[n]}\n" for n in todo),
                          "after": "".join(f"{n} {selection}\n" for n in todo)}
    if todo and not module.check_mode:
        res = subprocess.run(["dpkg", "--set-selections"],
                             input="".join(f"{n} {selection}\n" for n in todo),
                             capture_output=True, text=True, timeout=120, check=False)
        if res.returncode != 0:
            module.fail_json(msg=f"dpkg --set-selections failed: {res.stderr.strip()}", **result)
        after = selections(todo)
        still = [n for n in todo if after.get(n) != selection]
        if still:
            module.fail_json(msg=f"dpkg kept another selection for: {', '.join(still)}",
                             **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
