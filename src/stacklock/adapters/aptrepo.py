"""The .debs of the official apt repositories, read on the controller (issue #18, the files
class): for a host whose packages come from the official repositories (`apt: official`), each
pinned package's files are taken from the .deb that the repository's signed index names, the
way stacklock.adapters.debfiles takes them from the lab mirror's .debs.

For each repository (the roles' `*_official_repositories`, rendered for the node's OS, then
the distribution's own archive, which the node already has in its sources):

1. fetch `InRelease` and check its signature with `gpgv`: only a good signature by a key
   whose primary fingerprint is pinned here (`KEYS`, `DISTRIBUTIONS`) counts. The key
   material comes from where the nodes get it (the role's `signing_key` URL; for the
   distribution's archive the controller's own archive keyring, else the published key), but
   is trusted for its pinned fingerprint only, never for what a URL serves today;
2. take `Packages.xz` / `.gz` / plain for each component, checked against the size and
   SHA256 that the signed InRelease gives (cached by that sha256 in
   ~/.cache/stacklock/apt-indexes/);
3. find NAME / VERSION's Filename and SHA256 (kept in ~/.cache/stacklock/apt-pins/, so that
   a later verify of the same pins needs no network), download the .deb into
   ~/.cache/stacklock/debs/SHA256.deb, refuse it unless its sha256 is the index's, and read
   its files and conffiles with stacklock.adapters.debfiles (cached by the .deb's sha256 as
   for the mirror's .debs).

Which OS: `stacklock_os_distribution` / `stacklock_os_release` where the host's variables
give them; else every OS stacklock supports (packages.yaml `codenames`) is a candidate, and
the candidates are narrowed to the ones whose repositories hold the host's pins (Docker's
versions name their release). A package whose bytes still differ between candidates, or that
a repository could not be read for, stays `not checked` with the reason and the fix: never
a pass. Nothing here is written into the lock; every request has a timeout, and a host that
did not answer is not asked again in the same run.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import json
import logging
import lzma
import os
import re
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stacklock.adapters import ansible_template, debfiles
from stacklock.adapters.proc import run_command
from stacklock.adapters.wheelrecord import cache_root
from stacklock.core.lock import package_data
from stacklock.errors import ToolFailed

log = logging.getLogger("stacklock.aptrepo")

#: seconds one request may wait for the network (connect, or a read); a whole download may
#: take DEADLINE seconds at most
TIMEOUT = float(os.environ.get("STACKLOCK_APT_TIMEOUT", "20"))
DEADLINE = float(os.environ.get("STACKLOCK_APT_DEADLINE", "600"))
ARCH = "amd64"
_MAX_SMALL = 16 << 20  # an InRelease or a key file larger than this is refused

#: the trust anchors of the roles' official repositories, by the repository's `name` in the
#: roles' defaults: the primary-key fingerprints whose signature on InRelease is accepted
KEYS: dict[str, tuple[str, ...]] = {
    # download.docker.com/linux/{ubuntu,debian}/gpg: "Docker Release (CE deb)"
    "docker": ("9DC858229FC7DD38854AE2D88D81803C0EBFCD88",),
    # developer.download.nvidia.com/compute/cuda/repos/OS/x86_64/3bf863cc.pub (2022 key)
    "nvidia-cuda": ("EB693B3035CD5710E231E123A4B469963BF863CC",),
    # nvidia.github.io/libnvidia-container/gpgkey
    "nvidia-container-toolkit": ("C95B321B61E88C1809C4F759DDCAE044F796ECB0",),
}


@dataclass(frozen=True)
class AptSource:
    """One apt source: `suite` ending in `/` is a flat repository (InRelease beside
    Packages, Filename relative to it), else `dists/SUITE/` with `components`."""

    name: str
    uri: str
    suite: str
    components: tuple[str, ...]
    keys: tuple[str, ...]  # where the key material is read (paths or URLs, first found)
    fingerprints: tuple[str, ...]  # the trust anchor

    @property
    def flat(self) -> bool:
        return self.suite.endswith("/")

    @property
    def base(self) -> str:
        uri = self.uri.rstrip("/")
        if self.flat:
            sub = self.suite.strip("/").removeprefix(".").strip("/")
            return f"{uri}/{sub}/" if sub else f"{uri}/"
        return f"{uri}/dists/{self.suite}/"

    @property
    def pool(self) -> str:
        return self.base if self.flat else self.uri.rstrip("/") + "/"


#: the distribution's own archive (what a node's sources.list holds from its installer), per
#: distribution: (name, uri, suites, components, key material, fingerprints). Debian's
#: fingerprints are the primary keys of debian-archive-keyring 2023.3+deb12u2 (as
#: ftp-master.debian.org/keys.html lists them); Ubuntu's those of ubuntu-keyring.
_DEBIAN_COMPONENTS = ("main", "contrib", "non-free", "non-free-firmware")
DISTRIBUTIONS: dict[str, tuple[tuple[str, str, tuple[str, ...], tuple[str, ...],
                                     tuple[str, ...], tuple[str, ...]], ...]] = {
    "debian": (
        ("debian", "http://deb.debian.org/debian", ("{codename}", "{codename}-updates"),
         _DEBIAN_COMPONENTS,
         ("/usr/share/keyrings/debian-archive-keyring.gpg",
          "https://ftp-master.debian.org/keys/archive-key-{release}.asc",
          "https://ftp-master.debian.org/keys/release-{release}.asc"),
         # automatic signing keys 11/bullseye, 12/bookworm, 13/trixie (the archive signs each
         # release with the current ones), stable release key 12/bookworm
         ("1F89983E0081FDE018F3CC9673A4F27B8DD47936", "B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8",
          "04B54C3CDCA79751B16BC6B5225629DF75B188BD", "4D64FEC119C2029067D6E791F8D2585B8783D481")),
        ("debian-security", "http://deb.debian.org/debian-security", ("{codename}-security",),
         _DEBIAN_COMPONENTS,
         ("/usr/share/keyrings/debian-archive-keyring.gpg",
          "https://ftp-master.debian.org/keys/archive-key-{release}-security.asc"),
         # security archive automatic signing keys 11/bullseye, 12/bookworm, 13/trixie
         ("AC530D520F2F3269F5E98313A48449044AAD5C5D", "05AB90340C0C5E797F44A8C8254CF3B5AEC0A8F0",
          "5E04A1E3223A19A20706E20F9904613D4CCE68C6")),
    ),
    "ubuntu": (
        ("ubuntu", "http://archive.ubuntu.com/ubuntu",
         ("{codename}", "{codename}-updates", "{codename}-security"),
         ("main", "restricted", "universe", "multiverse"),
         ("/usr/share/keyrings/ubuntu-archive-keyring.gpg",
          "https://keyserver.ubuntu.com/pks/lookup?op=get&search="
          "0xF6ECB3762474EDA9D21B7022871920D1991BC93C"),
         # Ubuntu Archive Automatic Signing Key (2018), (2012)
         ("F6ECB3762474EDA9D21B7022871920D1991BC93C",
          "790BC7277767219C42C86F933B4FE6ACC0B21F32")),
    ),
}

FIX_NETWORK = ("the controller reads the official repositories' signed indexes and .debs to "
               "check the packages' files: let it reach them over HTTP(S), or serve the "
               "packages from a mirror (package_sources.apt)")
FIX_OS = ("set stacklock_os_distribution and stacklock_os_release (e.g. ubuntu / 22.04) in "
          "the inventory's group_vars so that the controller knows the node's OS")


class RepoError(Exception):
    """A repository or .deb that could not be used; the message names what and why."""


@dataclass(frozen=True)
class Hit:
    url: str
    sha256: str
    filename: str


# --------------------------------------------------------------------------- the network

_DOWN: dict[str, str] = {}  # host -> why it did not answer (asked once per run)


def _fetch(url: str, *, limit: int | None = _MAX_SMALL, dest: Path | None = None,
           timeout: float | None = None) -> bytes:
    """The body of `url` (or written to `dest`, returning b""); RepoError on any failure."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise RepoError(f"{url}: only http and https are read")
    host = parts.netloc
    if host in _DOWN:
        raise RepoError(f"{url}: {_DOWN[host]}")
    req = urllib.request.Request(url, headers={"User-Agent": "stacklock"})
    start = time.monotonic()
    chunks: list[bytes] = []
    size = 0
    try:
        with urllib.request.urlopen(req, timeout=timeout or TIMEOUT) as resp:
            out = dest.open("wb") if dest is not None else None
            try:
                while block := resp.read(1 << 20):
                    size += len(block)
                    if limit is not None and size > limit:
                        raise RepoError(f"{url}: larger than {limit} bytes")
                    if time.monotonic() - start > DEADLINE:
                        raise RepoError(f"{url}: not downloaded within {DEADLINE:.0f} s")
                    if out is not None:
                        out.write(block)
                    else:
                        chunks.append(block)
            finally:
                if out is not None:
                    out.close()
    except urllib.error.HTTPError as exc:
        raise RepoError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except OSError as exc:  # URLError, a refused or reset connection, a timeout
        reason = getattr(exc, "reason", None) or exc
        why = f"unreachable ({reason})"
        _DOWN[host] = why
        raise RepoError(f"{url}: {why}") from None
    except (http.client.HTTPException, ValueError) as exc:  # a broken answer, a bad URL
        raise RepoError(f"{url}: {type(exc).__name__}: {exc}") from None
    return b"".join(chunks)


# --------------------------------------------------------------------------- keys and signatures


def _dearmor(data: bytes) -> bytes:
    """OpenPGP binary packets of an ASCII-armored key file (gpgv reads binary keyrings)."""
    text = data.decode("ascii", "replace")
    if "-----BEGIN PGP" not in text:
        return data
    out = b""
    for block in re.findall(r"-----BEGIN PGP[^\n]*\n(.*?)-----END PGP", text, re.S):
        head, _, body = block.replace("\r", "").partition("\n\n")
        if not body:  # no armor headers
            body = head
        lines = [x.strip() for x in body.splitlines()
                 if x.strip() and not x.strip().startswith("=")]
        out += base64.b64decode("".join(lines))
    return out


_KEYRINGS: dict[tuple[str, ...], Path] = {}


def _keyring(src: AptSource) -> Path:
    """A binary keyring holding the key material of `src` (its fingerprints are checked on
    each signature, not here)."""
    if src.keys in _KEYRINGS:
        return _KEYRINGS[src.keys]
    errors: list[str] = []
    for where in src.keys:
        try:
            if where.startswith(("http://", "https://")):
                data = _fetch(where)
            elif Path(where).is_file():
                data = Path(where).read_bytes()
            else:
                errors.append(f"{where}: no such file")
                continue
        except RepoError as exc:
            errors.append(str(exc))
            continue
        blob = _dearmor(data)
        path = cache_root() / "apt-keys" / f"{hashlib.sha256(blob).hexdigest()}.gpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(blob)
            tmp.replace(path)
        _KEYRINGS[src.keys] = path
        return path
    raise RepoError(f"{src.name}: no signing key could be read ({'; '.join(errors)})")


def verify_inrelease(data: bytes, keyring: Path, fingerprints: Sequence[str],
                     where: str) -> str:
    """The signed text of an InRelease, when `gpgv` finds a good signature by one of the
    pinned primary keys and no bad one; RepoError otherwise. (A signature by a key not in the
    keyring is passed over, as apt does: repositories sign with several keys.)"""
    pinned = {f.upper().replace(" ", "") for f in fingerprints}
    with tempfile.TemporaryDirectory(prefix="stacklock-gpgv-") as tmp:
        signed, out = Path(tmp) / "InRelease", Path(tmp) / "Release"
        signed.write_bytes(data)
        home = Path(tmp) / "gnupg"
        home.mkdir(mode=0o700)
        result = run_command(["gpgv", "--status-fd", "1", "--keyring", str(keyring.resolve()),
                              "--output", str(out), str(signed)],
                             env={"GNUPGHOME": str(home), "LC_ALL": "C"}, check=False,
                             timeout=120)
        status = [x.split()[1:] for x in result.stdout.splitlines()
                  if x.startswith("[GNUPG:] ")]
        bad = [x for x in status if x and x[0] in ("BADSIG", "EXPKEYSIG", "REVKEYSIG")]
        good = {x[-1].upper() for x in status if x and x[0] == "VALIDSIG" and len(x) >= 10}
        if bad:
            raise RepoError(f"{where}: bad signature ({' '.join(bad[0])}): refused")
        if not good & pinned:
            seen = ", ".join(sorted(good)) or "none verifiable"
            raise RepoError(f"{where}: no good signature by the pinned key "
                            f"{' or '.join(sorted(pinned))} (good signatures: {seen}; "
                            f"gpgv: {result.stderr.strip().splitlines()[-1:] or ['-']}): "
                            "refused")
        if not out.is_file():
            raise RepoError(f"{where}: gpgv wrote no signed text: refused")
        return out.read_text("utf-8", "replace")


def release_hashes(text: str) -> dict[str, tuple[str, int]]:
    """path -> (sha256, size) of a Release file's SHA256 field."""
    out: dict[str, tuple[str, int]] = {}
    inside = False
    for line in text.splitlines():
        if line and not line[0].isspace():
            inside = line.split(":", 1)[0] == "SHA256"
            continue
        parts = line.split()
        if inside and len(parts) == 3 and parts[1].isdigit():
            out[parts[2]] = (parts[0].lower(), int(parts[1]))
    return out


# --------------------------------------------------------------------------- indexes


_INDEXES: dict[AptSource, dict[tuple[str, str], Hit] | RepoError] = {}


def _index_text(src: AptSource, hashes: Mapping[str, tuple[str, int]], prefix: str) -> str:
    for name in ("Packages.xz", "Packages.gz", "Packages"):
        path = prefix + name
        if path not in hashes:
            continue
        digest, size = hashes[path]
        cached = cache_root() / "apt-indexes" / digest
        if cached.is_file() and hashlib.sha256(cached.read_bytes()).hexdigest() == digest:
            data = cached.read_bytes()
        else:
            data = _fetch(src.base + path, limit=size)
            if len(data) != size or hashlib.sha256(data).hexdigest() != digest:
                raise RepoError(f"{src.base}{path}: its size or sha256 is not the one the "
                                "signed InRelease gives: refused")
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(cached)
        try:
            if name.endswith(".xz"):
                data = lzma.decompress(data)
            elif name.endswith(".gz"):
                data = gzip.decompress(data)
        except (lzma.LZMAError, OSError, EOFError) as exc:
            raise RepoError(f"{src.base}{path}: cannot be decompressed ({exc})") from None
        return data.decode("utf-8", "replace")
    raise RepoError(f"{src.base}InRelease lists no {prefix}Packages index")


def index(src: AptSource) -> dict[tuple[str, str], Hit]:
    """(package, version) -> where its .deb is and its sha256, from the signed index."""
    known = _INDEXES.get(src)
    if isinstance(known, RepoError):
        raise known
    if known is not None:
        return known
    try:
        where = src.base + "InRelease"
        text = verify_inrelease(_fetch(where), _keyring(src), src.fingerprints, where)
        hashes = release_hashes(text)
        prefixes = [f"{c}/binary-{ARCH}/" for c in src.components] if not src.flat else [""]
        found: dict[tuple[str, str], Hit] = {}
        for prefix in prefixes:
            for key, (filename, digest) in debfiles.packages_index(
                    _index_text(src, hashes, prefix)).items():
                found.setdefault(key, Hit(src.pool + filename.removeprefix("./"),
                                          digest.lower(), filename))
    except RepoError as exc:
        _INDEXES[src] = exc
        raise
    _INDEXES[src] = found
    return found


def download(hit: Hit) -> dict[str, Any]:
    """The files of the .deb at `hit` (cached by its sha256); RepoError when it cannot be
    read or its sha256 is not the signed index's."""
    known = debfiles.cached_files(hit.sha256)
    if known is not None:
        return known
    folder = cache_root() / "debs"
    folder.mkdir(parents=True, exist_ok=True)
    deb = folder / f"{hit.sha256}.deb"
    name = posix_name(hit.filename)
    if not deb.is_file():
        tmp = folder / f".{hit.sha256}.{os.getpid()}.part"
        try:
            _fetch(hit.url, limit=None, dest=tmp)
            got = _sha256(tmp)
            if got != hit.sha256:
                raise RepoError(f"{hit.url}: sha256 {got} is not the {hit.sha256} that the "
                                "signed index gives: refused")
            tmp.replace(deb)
        finally:
            tmp.unlink(missing_ok=True)
    try:
        data = debfiles.read_deb(deb, hit.sha256, name)
    except (ValueError, StopIteration, EOFError, tarfile.TarError, lzma.LZMAError,
            ToolFailed) as exc:
        raise RepoError(f"{hit.url}: not a .deb that could be read ({exc})") from None
    if data is None:  # the cached file changed since
        deb.unlink(missing_ok=True)
        raise RepoError(f"{deb}: not the .deb with sha256 {hit.sha256}: removed, run again")
    return data


def posix_name(filename: str) -> str:
    return filename.rsplit("/", 1)[-1]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- sources per host


@dataclass(frozen=True)
class OsId:
    """An OS as the roles' templates see it (ansible_facts) and as packages.yaml names it."""

    key: str  # ubuntu2204
    distribution: str  # ubuntu
    release: str  # 22.04
    codename: str  # jammy

    def facts(self) -> dict[str, str]:
        return {"distribution": self.distribution.capitalize(),
                "distribution_version": self.release,
                "distribution_release": self.codename,
                "distribution_major_version": self.release.split(".")[0],
                "architecture": "x86_64"}


def supported_os() -> list[OsId]:
    out = []
    for key, codename in sorted((package_data().get("codenames") or {}).items()):
        m = re.fullmatch(r"([a-z]+)(\d+)", key)
        if not m:
            continue
        dist, digits = m.groups()
        release = f"{digits[:2]}.{digits[2:]}" if dist == "ubuntu" else digits
        out.append(OsId(key, dist, release, str(codename)))
    return out


def host_os(hv: Mapping[str, Any]) -> list[OsId]:
    """The node's OS when the host's variables say it, else every supported one."""
    dist = str(hv.get("stacklock_os_distribution") or "").lower()
    release = str(hv.get("stacklock_os_release") or "")
    every = supported_os()
    if dist and release:
        return [o for o in every if (o.distribution, o.release) == (dist, release)]
    return every


def role_sources(hv: Mapping[str, Any], role: str, os_id: OsId) -> list[AptSource]:
    """The official repositories role `role` configures on a node of `os_id` (its
    `stacklock_packages` include, rendered with the host's variables), then the
    distribution's archive. A repository without a pinned key is left out (logged)."""
    out: list[AptSource] = []
    try:
        task = ansible_template.include_vars(role, "stacklock_packages")
        variables = ansible_template.variables(hv, (role, "stacklock_packages"), task=task,
                                               node={"ansible_facts": os_id.facts()})
        repos = ansible_template.value(variables, "stacklock_packages_official_repositories")
    except (ansible_template.RenderError, FileNotFoundError, OSError) as exc:
        log.debug("%s: its official repositories are not known here: %s", role, exc)
        repos = []
    for repo in repos or []:
        name = str(repo.get("name") or "")
        if name not in KEYS:
            log.debug("%s: no pinned key for repository %s: not read", role, name)
            continue
        key = str(repo.get("signing_key") or "")
        out.append(AptSource(name, str(repo["uri"]), str(repo.get("suite") or "/"),
                             tuple(str(c) for c in repo.get("components") or ()),
                             (key,) if key else (), KEYS[name]))
    for name, uri, suites, comps, keys, fprs in DISTRIBUTIONS.get(os_id.distribution, ()):
        fill = {"codename": os_id.codename, "release": os_id.release}
        for suite in suites:
            out.append(AptSource(name, uri, suite.format(**fill), comps,
                                 tuple(k.format(**fill) for k in keys), fprs))
    return out


def _pins_file(src: AptSource) -> Path:
    ident = json.dumps([src.base, src.components, sorted(src.fingerprints)])
    return cache_root() / "apt-pins" / f"{hashlib.sha256(ident.encode()).hexdigest()}.json"


def _remembered(src: AptSource) -> dict[str, list[str]]:
    try:
        data: dict[str, list[str]] = json.loads(_pins_file(src).read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return data


def _remember(src: AptSource, name: str, version: str, hit: Hit) -> None:
    """NAME VERSION -> the .deb the signed index named, kept: a repository does not give a
    version other bytes, so a later verify needs neither the index nor the network for it
    (a rebuilt package would show as changed files on the node, never as a pass)."""
    data = _remembered(src)
    data[f"{name} {version}"] = [hit.url, hit.sha256, hit.filename]
    path = _pins_file(src)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, sort_keys=True), "utf-8")
    tmp.replace(path)


def _look(sources: Sequence[AptSource], name: str, version: str) -> Hit | RepoError | None:
    for src in sources:
        known = _remembered(src).get(f"{name} {version}")
        if known and len(known) == 3:
            return Hit(*known)
    errors: list[RepoError] = []
    for src in sources:
        try:
            hit = index(src).get((name, version))
        except RepoError as exc:
            errors.append(exc)
            continue
        if hit is not None:
            _remember(src, name, version, hit)
            return hit
    return errors[0] if errors else None


class OfficialDebs:
    """The files of a host's pinned packages from the official repositories, resolved for
    all its pins at once (the first `files` call) so that the pins narrow the node's OS."""

    def __init__(self, hv: Mapping[str, Any], pins: Sequence[tuple[str, str, str]]) -> None:
        self.hv = hv
        self.pins = list(pins)  # (role, name, version)
        self._done: dict[tuple[str, str], dict[str, Any] | str] | None = None

    @property
    def applies(self) -> bool:
        # as the roles read it (stacklock_packages: `stacklock_apt_official | default(true)`)
        return bool(self.hv.get("stacklock_apt_official", True)) and bool(self.pins)

    def files(self, role: str, name: str, version: str) -> dict[str, Any] | str | None:
        """The .deb's files, or why they could not be known (None: not an official host)."""
        if not self.applies:
            return None
        if self._done is None:
            self._done = self._resolve()
        return self._done.get((name, version), f"{name} {version} is not a pin of this host")

    def _resolve(self) -> dict[tuple[str, str], dict[str, Any] | str]:
        systems = host_os(self.hv)
        if not systems:
            return {(n, v): (f"the OS {self.hv.get('stacklock_os_distribution')} "
                             f"{self.hv.get('stacklock_os_release')} is not one stacklock "
                             "knows official repositories for") for _, n, v in self.pins}
        sources = {(o.key, r): role_sources(self.hv, r, o) for o in systems
                   for r in {r for r, _, _ in self.pins}}
        looked: dict[tuple[str, str, str, str], Hit | RepoError | None] = {}

        def look(o: OsId, role: str, name: str, version: str) -> Hit | RepoError | None:
            key = (o.key, role, name, version)
            if key not in looked:
                looked[key] = _look(sources[(o.key, role)], name, version)
            return looked[key]

        # narrow the candidates: an OS stays while its repositories hold every pin found
        # somewhere (or could not be read)
        cands = list(systems)
        for role, name, version in self.pins:
            found = {o.key: look(o, role, name, version) for o in cands}
            hits = [o for o in cands if isinstance(found[o.key], Hit)]
            if hits:
                cands = [o for o in cands
                         if o in hits or isinstance(found[o.key], RepoError)]
        out: dict[tuple[str, str], dict[str, Any] | str] = {}
        for role, name, version in self.pins:
            results = {o.key: look(o, role, name, version) for o in cands}
            out[(name, version)] = self._verdict(name, version, results,
                                                 [s for o in cands
                                                  for s in sources[(o.key, role)]])
        return out

    @staticmethod
    def _verdict(name: str, version: str, results: Mapping[str, Hit | RepoError | None],
                 sources: Sequence[AptSource]) -> dict[str, Any] | str:
        errors = [r for r in results.values() if isinstance(r, RepoError)]
        hits = {k: r for k, r in results.items() if isinstance(r, Hit)}
        if errors:
            return f"official repository not read: {errors[0]} ({FIX_NETWORK})"
        if not hits:
            where = ", ".join(sorted({s.base for s in sources})) or "no repository"
            return (f"{name} {version} is in none of the official repositories read "
                    f"({where}; signed indexes checked)")
        if len({h.sha256 for h in hits.values()}) > 1 or len(hits) < len(results):
            return (f"{name} {version} has other bytes in the repositories of "
                    f"{', '.join(sorted(results))} ({FIX_OS})")
        try:
            return download(next(iter(hits.values())))
        except RepoError as exc:
            return f"official repository: {exc}"


__all__ = ["DISTRIBUTIONS", "KEYS", "AptSource", "Hit", "OfficialDebs", "OsId", "RepoError",
           "download", "host_os", "index", "release_hashes", "role_sources", "supported_os",
           "verify_inrelease"]
