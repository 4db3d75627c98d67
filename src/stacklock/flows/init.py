"""`stacklock init`: start a repository that works with an installed stacklock.

It writes a manifest from one of the shipped examples (the lab, on-prem hosts, AWS), the
example's model archive, a .gitignore, and vendors this stacklock's Terraform modules (with
the lab's node script, which the lab module calls) into `vendor/stacklock/` — so that rendered
roots point into the repository itself, whatever folder stacklock is installed in.
`--upgrade` refreshes only the vendored copy (what `render --check` reports stale after an
upgrade of stacklock).
"""

from __future__ import annotations

import io
import ipaddress
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stacklock.core import share
from stacklock.core.manifest import LoadedManifest
from stacklock.errors import InvalidInput, Problem

#: --provider -> the shipped example it starts from (paths in the share's layout)
EXAMPLES = {"lab": "examples/lab.yaml", "static": "examples/static.yaml", "aws": "stacklock.yaml"}
MANIFEST = "stacklock.yaml"
#: the manifest's `project` (core.schema)
PROJECT_NAME = r"[a-z][a-z0-9-]{0,30}[a-z0-9]"
#: the example lab's network, replaced by --network
LAB_NETWORK = "10.213"

GITIGNORE = """\
# stacklock's own state: run logs, reports, run locks, the lab's SSH key (never committed)
.stacklock/
# Terraform working files and local state (the generated roots are committed)
.terraform/
*.tfstate
*.tfstate.*
*.tfplan
.terraform.tfstate.lock.info
# written by `stacklock apply` from `terraform output`
/inventories/*/hosts.yml
# the lab pins the keys its nodes generate: rewritten on every lab apply
/inventories/*/known_hosts
"""


@dataclass
class InitResult:
    root: Path
    written: list[str] = field(default_factory=list)
    vendored: list[str] = field(default_factory=list)
    next_steps: list[str] = field(default_factory=list)


def _invalid(where: str, message: str, hint: str) -> InvalidInput:
    return InvalidInput(f"{where}: {message}", problems=[Problem(where, message, hint)])


def lab_network(value: str) -> str:
    """`10.X.0.0/16` (or `10.X`) -> its first two octets."""
    text = value if "/" in value else f"{value}.0.0/16" if value.count(".") == 1 else value
    try:
        net = ipaddress.ip_network(text)
    except ValueError:
        raise _invalid("--network", f"{value!r} is not a network",
                       "give a /16 such as 10.218.0.0/16") from None
    if net.prefixlen != 16 or net.version != 4:
        raise _invalid("--network", f"{value!r} is not an IPv4 /16",
                       "give a /16 such as 10.218.0.0/16")
    return ".".join(str(net.network_address).split(".")[:2])


def _manifest_text(provider: str, *, project: str | None, network: str | None,
                   environments: list[str] | None, models: Path) -> tuple[str, list[str]]:
    """The example's manifest with the options applied (comments and layout kept, ruamel's
    round trip); and the model archives it names (paths in the share's layout)."""
    from ruamel.yaml import YAML

    example = EXAMPLES[provider]
    text = (share.share_root() / example).read_text("utf-8")
    if provider == "lab" and network:
        text = text.replace(f"{LAB_NETWORK}.", f"{lab_network(network)}.")
    yaml = YAML(typ="rt")
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    yaml.preserve_quotes = True
    data: Any = yaml.load(text)
    if project:
        data["project"] = project
    if "output_dir" in data:
        data["output_dir"] = "."
    if environments:
        known = list(data["environments"])
        unknown = [e for e in environments if e not in known]
        if unknown:
            raise _invalid("--environment", f"{', '.join(unknown)}: not in the {provider} "
                           "example", "use some of: " + ", ".join(known))
        for name in known:
            if name not in environments:
                del data["environments"][name]
        if "promotion" in data:
            data["promotion"] = [e for e in data["promotion"] if e in environments]
    archives: list[str] = []
    base = Path(example).parent
    for stack in data.get("stacks", {}).values():
        for model in stack.get("models") or []:
            archive = str(model.get("archive", ""))
            if archive and "://" not in archive:
                archives.append((base / archive).as_posix())
                model["archive"] = (models / Path(archive).name).as_posix()
    buf = io.StringIO()
    yaml.dump(data, buf)
    header = (f"# Started by `stacklock init --provider {provider}` from the shipped example "
              f"{example}.\n")
    return header + buf.getvalue(), archives


def init_repo(root: Path, *, provider: str = "lab", project: str | None = None,
              network: str | None = None, environments: list[str] | None = None,
              force: bool = False) -> InitResult:
    """Write a new repository's manifest, model archive, .gitignore and vendored modules."""
    if provider not in EXAMPLES:
        raise _invalid("--provider", f"{provider!r} is not a provider",
                       "use one of: " + ", ".join(EXAMPLES))
    if network and provider != "lab":
        raise _invalid("--network", "only the lab has a network", "drop --network")
    if project and not re.fullmatch(PROJECT_NAME, project):
        raise _invalid("--project", f"{project!r} is not a project name",
                       "2-32 characters: lowercase letters, digits and '-', starting with a "
                       "letter, not ending with '-'")
    manifest = root / MANIFEST
    if manifest.exists() and not force:
        raise _invalid(str(manifest), "already exists",
                       "stacklock init --upgrade refreshes only the vendored modules; "
                       "--force writes a new manifest over it")
    text, archives = _manifest_text(provider, project=project, network=network,
                                    environments=environments, models=Path("models"))
    result = InitResult(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest.write_text(text, "utf-8")
    result.written.append(MANIFEST)
    for archive in archives:
        target = root / "models" / Path(archive).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(share.share_root() / archive, target)
        result.written.append(target.relative_to(root).as_posix())
    if _add_gitignore(root / ".gitignore"):
        result.written.append(".gitignore")
    result.vendored = share.write_vendor(root)
    result.next_steps = [
        "stacklock lock" + (" (on AWS: resolves AMI ids, needs credentials)"
                            if provider == "aws" else ""),
        "stacklock render",
        {"lab": "stacklock demo   (lab nodes on this machine: needs root and Docker)",
         "static": "edit environments.*.hosts, then: stacklock provision --all",
         "aws": "edit accounts, regions, buckets and networks, then: stacklock plan --all"
         }[provider],
        "git add -A && git commit   (the manifest, lock, generated files and vendor/stacklock)",
    ]
    return result


def _add_gitignore(path: Path) -> bool:
    """Add the lines stacklock needs to .gitignore (kept when present; nothing duplicated)."""
    have = path.read_text("utf-8") if path.is_file() else ""
    present = {line.strip() for line in have.splitlines()}
    missing = [line for line in GITIGNORE.splitlines()
               if line.strip() and not line.startswith("#") and line.strip() not in present]
    if not missing:
        return False
    text = GITIGNORE if not have else (
        have + ("" if have.endswith("\n") else "\n") + "\n".join(missing) + "\n")
    path.write_text(text, "utf-8")
    return True


def upgrade(root: Path) -> list[str]:
    """Vendor this stacklock's modules into `root` again; return what changed."""
    if not root.is_dir():
        raise _invalid(str(root), "is not a folder", "give the repository's root folder")
    return share.write_vendor(root)


def stale_vendored(loaded: LoadedManifest) -> tuple[share.ModulesHome, list[str]]:
    """The vendored modules the manifest's roots call, and which of their files are not this
    stacklock's (`render --check` reports them; `stacklock init --upgrade` refreshes them)."""
    home = share.modules_home(loaded.output_root)
    return home, share.stale_vendor(home)
