# Copyright: stacklock contributors. Apache-2.0.
"""The collectors of the stack facts module (``ansible/library/stacklock_stack_facts.py``).

One module per kind of node state, each a ``collect(run)`` function that reads its part of the
node through ``node.System`` and writes its sections of ``stacklock.facts/v1`` (docs/facts.md):

- ``osinfo``: ``os`` (os-release, uname)
- ``apt``: ``os_packages``, ``packages``, ``holds``, ``family_packages``, ``apt_protection``
- ``gpu``: ``gpu`` and ``nvidia_driver`` (NVML, nvidia-smi, /proc, kernels with the module)
- ``cuda``, ``docker``, ``toolkit`` (``nvidia_container_toolkit``), ``java``
- ``python``: the node's ``python`` and the distributions of TorchServe's venv
- ``torchserve``: config and model store digests, the management API; with ``keys``
  (key_file.json, token renewal), ``archives`` (model archive digests and their cache) and
  ``smoke`` (the models' answers)
- ``systemd``: ``services``
- ``container``: ``container`` (container mode only: the serving container as Docker runs it,
  the other running containers, the closure inside it, the GPU validation container)

``collect.COLLECTORS`` lists them in order; ``collect.gather(opts)`` runs them. Python standard
library only: Ansible ships this package with the module (``module_utils`` in ansible.cfg), and
``stacklock verify --fast`` ships the same files in its payload.
"""
