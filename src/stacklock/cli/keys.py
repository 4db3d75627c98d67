"""`stacklock ledger key new | pub | trust | revoke | list`: the ledger's signing keys."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from stacklock.cli.base import Ctx, pass_ctx
from stacklock.cli.revisions import ledger
from stacklock.console import info, out
from stacklock.errors import ExitCode, InvalidInput, Problem

if TYPE_CHECKING:
    from stacklock.core.signing import PublicKey


@ledger.group("key")
def key() -> None:
    """Signing keys: every ledger record is signed by a key the manifest's `<stem>.signers`
    file trusts (yours: $STACKLOCK_SIGNING_KEY, or ~/.config/stacklock/keys/NAME.key)."""


@key.command("new")
@click.argument("name", required=False)
def key_new(name: str | None) -> None:
    """Create your signing key (0600, never in the repository) and print its public line."""
    from stacklock.flows import keys

    k = keys.new_key(name)
    info(f"created {k.path} ({k.key_id}); keep it private, it never leaves this machine")
    out.print(k.public.line(), markup=False, highlight=False)
    info("next: stacklock ledger key trust (in the repository), and commit the signers file "
         "through review")
    raise SystemExit(int(ExitCode.OK))


_KMS_HELP = ("An AWS KMS key (ECC_NIST_P256, SIGN_VERIFY): its ARN, alias/NAME or key id; "
             "its public key is read with kms:GetPublicKey.")
_NAME_HELP = "The signer name of the --kms key (default: kms- and its alias or key id)."


def _valid(name: str | None) -> str | None:
    from stacklock.core import signing

    if name is not None and not signing.valid_name(name):
        raise InvalidInput(f"--name {name!r} is not a valid signer name", problems=[Problem(
            "--name", f"{name!r}: letters, digits and . _ @ + - (at most 64)",
            "e.g. ci-prod-kms")])
    return name


@key.command("pub")
@click.option("--kms", "kms_key", default=None, metavar="KEY", help=_KMS_HELP)
@click.option("--name", default=None, metavar="NAME", help=_NAME_HELP)
def key_pub(kms_key: str | None, name: str | None) -> None:
    """Print your key's public line (what a reviewer adds to the signers file); with --kms,
    an AWS KMS key's ($STACKLOCK_SIGNING_KEY=kms:KEY also makes it yours)."""
    from stacklock.flows import keys

    if name is not None and kms_key is None:
        raise InvalidInput("--name goes with --kms only", problems=[Problem(
            "--name", "without --kms", "a key file's signer name is its file's stem")])
    pub = (keys.kms_writer(kms_key, _valid(name), "--kms").public if kms_key is not None
           else _own_public())
    out.print(pub.line(), markup=False, highlight=False)
    raise SystemExit(int(ExitCode.OK))


@key.command("trust")
@click.option("--public", "line", default=None, metavar="'NAME ALGORITHM KEY'",
              help="Trust this public line (e.g. a CI job's) instead of your own key.")
@click.option("--kms", "kms_key", default=None, metavar="KEY", help=_KMS_HELP)
@click.option("--name", default=None, metavar="NAME", help=_NAME_HELP)
@pass_ctx
def key_trust(c: Ctx, line: str | None, kms_key: str | None, name: str | None) -> None:
    """Add your key (or --public, or the AWS KMS key --kms) to the manifest's signers file;
    commit it through review."""
    from stacklock.core import signing
    from stacklock.flows import keys

    if line is not None and kms_key is not None:
        raise InvalidInput("--public and --kms: give one", problems=[Problem(
            "--kms", "with --public", "trust one key at a time")])
    if name is not None and kms_key is None:
        raise InvalidInput("--name goes with --kms only", problems=[Problem(
            "--name", "without --kms", "a --public line names its signer itself")])
    loaded = c.loaded()
    if kms_key is not None:
        pub = keys.kms_writer(kms_key, _valid(name), "--kms").public
    elif line is not None:
        try:
            pub = signing.parse_public_line(line)
        except ValueError as exc:
            raise InvalidInput(f"--public: {exc}", problems=[Problem(
                "--public", str(exc), "stacklock ledger key pub prints the line")]) from None
    else:
        pub = _own_public()
    added = keys.add_trusted(loaded, pub)
    where = keys.signers_file(loaded)
    info(f"{where}: {pub.name} ({pub.key_id}) " + ("added: commit it through review" if added
                                                   else "is trusted already"))
    raise SystemExit(int(ExitCode.OK))


@key.command("revoke")
@click.argument("name")
@pass_ctx
def key_revoke(c: Ctx, name: str) -> None:
    """Remove signer NAME from the signers file: every record it signed is refused from
    then on (see docs/security.md)."""
    from stacklock.flows import keys

    loaded = c.loaded()
    if not keys.revoke(loaded, name):
        raise InvalidInput(f"{keys.signers_file(loaded)} has no signer {name}")
    info(f"{keys.signers_file(loaded)}: {name} removed; records it signed are refused from now "
         "on (commit it through review)")
    raise SystemExit(int(ExitCode.OK))


@key.command("list")
@pass_ctx
def key_list(c: Ctx) -> None:
    """The manifest's trusted signers; yours is marked."""
    from stacklock.flows import keys

    loaded = c.loaded()
    trusted = keys.trust(loaded)
    mine = keys.load_key()
    info(f"{keys.signers_file(loaded)}: {len(trusted.keys)} trusted signer(s)")
    for kid, pub in sorted(trusted.keys.items(), key=lambda kv: kv[1].name):
        you = "  (you)" if mine is not None and mine.key_id == kid else ""
        out.print(f"{pub.name}  {kid}{you}", markup=False, highlight=False)
    if mine is not None and not trusted.trusts(mine.public):
        info(f"your key {mine.name} ({mine.key_id}) is not trusted here: stacklock ledger key "
             "trust")
    raise SystemExit(int(ExitCode.OK))


def _own_public() -> PublicKey:
    """This writer's public key (its key file), or exit 2 naming `ledger key new`."""
    from stacklock.flows import keys

    k = keys.load_key()
    if k is None:
        raise InvalidInput(f"no signing key at {keys.key_path()}", problems=[Problem(
            keys.KEY_ENV, "no key", "stacklock ledger key new")])
    return k.public
