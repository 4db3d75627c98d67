"""The ledger's signing keys: where this user's key lives, which keys a manifest trusts, and
`stacklock ledger key new|pub|trust|revoke|list`.

* This user's key: `$STACKLOCK_SIGNING_KEY` (a path), else
  `${XDG_CONFIG_HOME:-~/.config}/stacklock/keys/NAME.key`, NAME being `$STACKLOCK_SIGNER` or
  `user@host`. 0600 in a 0700 folder; never in the repository, never printed.
* Or an AWS KMS key: `$STACKLOCK_SIGNING_KEY=kms:KEY` (a key ARN, alias or id; see
  `stacklock.adapters.kms`). Its private key never leaves KMS: records are signed through
  kms:Sign. Its name is `$STACKLOCK_SIGNER`, else `kms-` and its alias or key id.
* The trusted keys: `<manifest stem>.signers` beside the manifest (`stacklock.core.signing`).

A writer needs both before it appends (`signer_for`): on a manifest whose environments are
all `provider: lab` (a workstation's lab) a missing key is created and trusted with a printed
notice; otherwise the append is refused with exit 2 and the commands that fix it.
"""

from __future__ import annotations

import getpass
import os
import socket
from collections.abc import Mapping
from pathlib import Path

from stacklock.console import info
from stacklock.core import signing
from stacklock.core.files import atomic_write
from stacklock.core.manifest import LoadedManifest
from stacklock.core.promotion import is_lab_only
from stacklock.errors import ExitCode, InvalidInput, Problem

KEY_ENV = "STACKLOCK_SIGNING_KEY"
NAME_ENV = "STACKLOCK_SIGNER"
KMS_PREFIX = "kms:"


def keys_dir(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or Path.home()) / ".config")
    return Path(base) / "stacklock" / "keys"


def default_name(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    if env.get(NAME_ENV):
        return env[NAME_ENV]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "user"
    return signing.safe_name(f"{user}@{socket.gethostname().split('.')[0]}")


def key_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where this user's signing key is (or would be created)."""
    env = os.environ if environ is None else environ
    if env.get(KEY_ENV):
        return Path(env[KEY_ENV]).expanduser()
    return keys_dir(env) / f"{default_name(env)}{signing.KEY_SUFFIX}"


def kms_key(environ: Mapping[str, str] | None = None) -> str | None:
    """The KMS key `$STACKLOCK_SIGNING_KEY` names (`kms:KEY`), or None (a key file)."""
    env = os.environ if environ is None else environ
    value = env.get(KEY_ENV, "").strip()
    return value if value.startswith(KMS_PREFIX) else None


def kms_writer(key: str, name: str | None = None, setting: str = KEY_ENV) -> signing.RemoteKey:
    """The AWS KMS key `key` (`kms:` optional) as a writer: its public key is read from KMS
    (kms:GetPublicKey) now, records are signed through kms:Sign."""
    from stacklock.adapters import kms

    return kms.writer(key, signing.safe_name(name) if name else None, setting)


def load_key(environ: Mapping[str, str] | None = None) -> signing.WriterKey | None:
    """This user's key; None when it does not exist yet (a `$STACKLOCK_SIGNING_KEY` that
    names no file is exit 2). `kms:KEY`: that AWS KMS key (asked for its public key now)."""
    env = os.environ if environ is None else environ
    kms = kms_key(env)
    if kms is not None:
        return kms_writer(kms, env.get(NAME_ENV) or None)
    path = key_path(env)
    if not path.exists():
        if env.get(KEY_ENV):
            raise InvalidInput(f"{KEY_ENV} names {path}, which does not exist", problems=[
                Problem(KEY_ENV, f"{path}: no such file",
                        "stacklock ledger key new creates a key there")])
        return None
    name = env.get(NAME_ENV) or path.stem
    return signing.load_private(path, signing.safe_name(name))


def new_key(name: str | None = None, environ: Mapping[str, str] | None = None
            ) -> signing.SigningKey:
    """Create this user's key (`name`: in the keys folder under that name)."""
    env = os.environ if environ is None else environ
    if kms_key(env) is not None and not name:
        raise InvalidInput(f"{KEY_ENV} names an AWS KMS key: stacklock creates no key there",
                           problems=[Problem(KEY_ENV, f"{kms_key(env)}: a KMS key",
                                             "create it in KMS (aws kms create-key --key-spec "
                                             "ECC_NIST_P256 --key-usage SIGN_VERIFY), then "
                                             "stacklock ledger key trust --kms KEY")])
    path = keys_dir(env) / f"{name}{signing.KEY_SUFFIX}" if name else key_path(env)
    key = signing.generate(name or signing.safe_name(env.get(NAME_ENV) or path.stem))
    signing.write_private(key, path)
    return signing.SigningKey(key.name, key.private, path)


def signers_file(loaded: LoadedManifest) -> Path:
    return signing.signers_path(loaded.path)


def trust(loaded: LoadedManifest) -> signing.Trust:
    return signing.read_signers(signers_file(loaded))


def add_trusted(loaded: LoadedManifest, key: signing.PublicKey) -> bool:
    """Add `key` to the manifest's signers file; False when it is there already."""
    path = signers_file(loaded)
    current = signing.read_signers(path)
    if current.trusts(key):
        return False
    if any(k.name == key.name for k in current.keys.values()):
        raise InvalidInput(f"{path} trusts another key named {key.name}", problems=[Problem(
            key.name, "name taken", "revoke the old key first, or name the new one otherwise")])
    text = path.read_text("utf-8") if path.exists() else ""
    atomic_write(path, signing.with_signer(text, key, loaded.path.name), mode=0o644)
    return True


def revoke(loaded: LoadedManifest, name: str) -> bool:
    """Remove signer `name` from the signers file; False when it is not there."""
    path = signers_file(loaded)
    if not path.exists():
        return False
    lines = path.read_text("utf-8").splitlines(keepends=True)
    keep = [ln for ln in lines if ln.split("#", 1)[0].split()[:1] != [name]]
    if len(keep) == len(lines):
        return False
    atomic_write(path, "".join(keep), mode=0o644)
    return True


def _fix(loaded: LoadedManifest) -> str:
    return (f"stacklock ledger key new (creates {key_path()}), then stacklock ledger "
            f"key trust (adds it to {signers_file(loaded).name}) and commit that file through "
            f"review; a CI job: set {KEY_ENV} to its key file, or to kms:KEY for an AWS KMS key")


def signer_for(loaded: LoadedManifest) -> signing.WriterKey:
    """This user's key (a key file, or a KMS key: `kms:KEY`), trusted by the manifest's
    signers file. On a lab-only manifest a missing key is created and trusted (said so);
    otherwise exit 2 naming the fix."""
    lab = is_lab_only(loaded.manifest)
    key = load_key()
    if key is None:
        if not lab:
            raise InvalidInput("no signing key: a passing verify is recorded as signed evidence",
                               problems=[Problem(KEY_ENV, f"{key_path()} does not exist",
                                                 _fix(loaded))])
        created = new_key()
        info(f"  created your ledger signing key {created.path} ({created.name}, "
             f"{created.key_id}); it never leaves this machine")
        key = created
    if not trust(loaded).trusts(key.public):
        if not lab:
            raise InvalidInput(
                f"your signing key {key.name} ({key.key_id}) is not trusted by "
                f"{signers_file(loaded)}", problems=[Problem(
                    signers_file(loaded).name, f"{key.name} is not a trusted signer",
                    f"stacklock ledger key trust, then commit "
                    f"{signers_file(loaded).name} through review")])
        add_trusted(loaded, key.public)
        info(f"  trusted your key {key.name} ({key.key_id}) in {signers_file(loaded)}: every "
             "environment of this manifest is a local lab")
    return key


__all__ = ["KEY_ENV", "KMS_PREFIX", "NAME_ENV", "ExitCode", "add_trusted", "key_path",
           "keys_dir", "kms_key", "kms_writer", "load_key", "new_key", "revoke", "signer_for",
           "trust"]
