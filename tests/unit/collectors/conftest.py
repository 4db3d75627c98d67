"""The collectors' tests: `ansible.module_utils.stacklock_facts` importable from this checkout
(fakenode loads the facts module, which serves the package) before any test module imports it."""

from __future__ import annotations

import fakenode  # noqa: F401
