"""stacklock.adapters.aptrepo: the files of packages from official apt repositories, read on the
controller from the .deb that the repository's signed index names (issue #18, files class).

A real repository on 127.0.0.1 (http.server in a thread): real .debs built with dpkg-deb, a
real Release signed into InRelease by a throwaway GPG key made here (its own GNUPGHOME), the
key served the way the roles' `signing_key` URLs serve theirs. No lab node, no internet.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import http.server
import lzma
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stacklock.adapters import aptrepo
from stacklock.core import integrity as core_integrity
from stacklock.flows import integrity

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not all(shutil.which(t) for t in ("gpg", "gpgv", "dpkg-deb")),
                       reason="needs gpg, gpgv and dpkg-deb"),
]

CONF = b"# tiny's configuration\nlevel=3\n"
BIN = b"#!/bin/sh\necho tiny\n"
LIB = b"\x7fELF not really a library\n"


def _run(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd).stdout


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _deb(work: Path, name: str, version: str, files: dict[str, bytes],
         conffiles: tuple[str, ...] = (), links: dict[str, str] | None = None) -> Path:
    root = work / f"{name}-{version}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
        "Maintainer: stacklock tests <t@example.invalid>\nDescription: test package\n")
    if conffiles:
        (root / "DEBIAN/conffiles").write_text("".join(f"{c}\n" for c in conffiles))
    for path, data in files.items():
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    for path, target in (links or {}).items():
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(target)
    out = work / f"{name}_{version}_amd64.deb"
    _run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(out))
    return out


def _stanza(name: str, version: str, filename: str, data: bytes) -> str:
    return (f"Package: {name}\nVersion: {version}\nArchitecture: amd64\n"
            f"Filename: {filename}\nSize: {len(data)}\nSHA256: {_sha(data)}\n\n")


def _release(entries: dict[str, bytes]) -> str:
    lines = "".join(f" {_sha(d)} {len(d)} {p}\n" for p, d in sorted(entries.items()))
    return ("Origin: stacklock-test\nSuite: stable\nCodename: stable\nArchitectures: amd64\n"
            f"Components: main\nDate: Mon, 07 Dec 2026 00:00:00 UTC\nSHA256:\n{lines}")


@dataclass
class Repo:
    url: str
    root: Path
    fingerprint: str
    other_fingerprint: str
    gnupg: Path
    debs: dict[str, Path]

    def source(self, suite: str = "stable", uri: str | None = None) -> aptrepo.AptSource:
        return aptrepo.AptSource("test", uri or self.url, suite, ("main",),
                                 (f"{self.url}/key.asc",), (self.fingerprint,))

    def sign(self, text: str, dest: Path, key: str = "repo@example.invalid") -> None:
        release = dest.parent / "Release"
        release.write_text(text)
        _run("gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "",
             "--clearsign", "-u", key, "-o", str(dest), str(release),
             env={"GNUPGHOME": str(self.gnupg)})


def _write_suite(repo: Repo, suite: str, packages: str, *,
                 key: str = "repo@example.invalid", tamper: bool = False,
                 index_lies: bool = False) -> None:
    """dists/SUITE with main/binary-amd64/Packages(.xz, .gz) and a signed InRelease."""
    dist = repo.root / "dists" / suite
    binary = dist / "main/binary-amd64"
    binary.mkdir(parents=True)
    raw = packages.encode()
    files = {"main/binary-amd64/Packages.xz": lzma.compress(raw),
             "main/binary-amd64/Packages.gz": gzip.compress(raw)}
    for path, data in files.items():
        (dist / path).write_bytes(data)
    listed = dict(files)
    if index_lies:  # the InRelease lists other bytes than the Packages files served
        listed = {p: d + b"\n" for p, d in files.items()}
    repo.sign(_release(listed), dist / "InRelease", key)
    if tamper:  # changed after signing: the signature no longer matches
        text = (dist / "InRelease").read_text().replace("Origin: stacklock-test",
                                                         "Origin: stacklock-evil")
        (dist / "InRelease").write_text(text)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Repo]:
    work = tmp_path_factory.mktemp("aptrepo")
    gnupg = work / "gnupg"
    gnupg.mkdir(mode=0o700)
    env = {"GNUPGHOME": str(gnupg)}
    fprs = []
    for uid in ("repo@example.invalid", "other@example.invalid"):
        _run("gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", "",
             "--quick-gen-key", f"stacklock test <{uid}>", "ed25519", "sign", "1d", env=env)
        listing = _run("gpg", "--with-colons", "--fingerprint", uid, env=env)
        fprs.append(next(x.split(":")[9] for x in listing.splitlines() if x.startswith("fpr")))
    root = work / "www"
    (root / "pool/main/t").mkdir(parents=True)
    # what the key URL serves: the repository's key and another one (a URL may serve any key
    # today; only the pinned fingerprint is trusted)
    (root / "key.asc").write_text(_run("gpg", "--armor", "--export", "repo@example.invalid",
                                       "other@example.invalid", env=env))
    debs = {
        "tiny": _deb(work, "tiny", "1.0-1", {"/usr/bin/tiny": BIN, "/etc/tiny.conf": CONF},
                     conffiles=("/etc/tiny.conf",), links={"/usr/bin/tiny-alias": "tiny"}),
        "tiny-lib": _deb(work, "tiny-lib", "2.0-1", {"/usr/lib/libtiny.so.2": LIB}),
        "tiny-evil": _deb(work, "tiny-evil", "1.0-1", {"/usr/bin/evil": b"good bytes\n"}),
    }
    stanzas = ""
    for name, deb in debs.items():
        filename = f"pool/main/t/{deb.name}"
        data = deb.read_bytes()
        stanzas += _stanza(name, {"tiny-lib": "2.0-1"}.get(name, "1.0-1"), filename, data)
        served = data
        if name == "tiny-evil":  # the file served is not the one the signed index names
            served = _deb(work / "evil", "tiny-evil", "1.0-1",
                          {"/usr/bin/evil": b"other bytes\n"}).read_bytes()
        (root / filename).write_bytes(served)
    state = Repo("", root, fprs[0], fprs[1], gnupg, debs)
    _write_suite(state, "stable", stanzas)
    # per release, for a host whose OS the controller is not told: jammy holds what stable
    # holds; noble holds another build of tiny 1.0-1 (other bytes) and no tiny-lib; bookworm
    # holds nothing
    _write_suite(state, "jammy", stanzas)
    noble = _deb(work / "noble", "tiny", "1.0-1", {"/usr/bin/tiny": b"noble build\n"})
    (root / "pool/main/t/noble").mkdir()
    shutil.copy(noble, root / "pool/main/t/noble" / noble.name)
    _write_suite(state, "noble", _stanza("tiny", "1.0-1", f"pool/main/t/noble/{noble.name}",
                                         noble.read_bytes()))
    _write_suite(state, "bookworm", "")
    # a flat repository, laid out as NVIDIA's CUDA and container toolkit repositories are
    # (suite `/`: InRelease and Packages beside the .debs, Filename `./NAME.deb`)
    flat = root / "flat"
    flat.mkdir()
    shutil.copy(debs["tiny"], flat / debs["tiny"].name)
    packages = _stanza("tiny", "1.0-1", f"./{debs['tiny'].name}",
                       debs["tiny"].read_bytes()).encode()
    (flat / "Packages.gz").write_bytes(gzip.compress(packages))
    state.sign(_release({"Packages.gz": gzip.compress(packages)}).replace(
        "Components: main\n", ""), flat / "InRelease")
    assert gzip.decompress((flat / "Packages.gz").read_bytes()) == packages
    _write_suite(state, "tampered", stanzas, tamper=True)
    _write_suite(state, "otherkey", stanzas, key="other@example.invalid")
    _write_suite(state, "lying", stanzas, index_lies=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def _fresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache of this test's own, no memo of an earlier test, no real network."""
    monkeypatch.setenv("STACKLOCK_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(aptrepo, "_INDEXES", {})
    monkeypatch.setattr(aptrepo, "_DOWN", {})
    monkeypatch.setattr(aptrepo, "_KEYRINGS", {})
    monkeypatch.setattr(aptrepo, "DISTRIBUTIONS", {})
    monkeypatch.setattr(integrity, "_MEMO", {})


def _host(repo: Repo, monkeypatch: pytest.MonkeyPatch, uri: str | None = None,
          suite: str = "stable", pins: tuple[tuple[str, str], ...] = (("tiny", "1.0-1"),),
          suites: tuple[str, ...] = ()) -> dict[str, Any]:
    """A Debian 12 host with `apt: official` whose docker role's official repository is the
    test's (a host variable, as an inventory may set it), trusted for the test key."""
    monkeypatch.setitem(aptrepo.KEYS, "docker", (repo.fingerprint,))
    return {
        "stacklock_fingerprint": "sha256:test",
        "stacklock_apt_official": True,
        "stacklock_apt_repositories": [],
        "stacklock_os_distribution": "debian",
        "stacklock_os_release": "12",
        "docker_packages": [{"name": n, "version": v} for n, v in pins],
        "docker_official_repositories": [{
            "name": "docker", "uri": uri or repo.url, "suite": s,
            "components": ["main"], "signing_key": f"{repo.url}/key.asc"}
            for s in (suite, *suites)],
    }


def _deb_tree(hv: dict[str, Any], name: str) -> core_integrity.Tree:
    return next(t for t in integrity.trees(hv) if t.id == f"deb:{name}")


def test_the_files_and_conffiles_come_from_the_signed_repository(
        repo: Repo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hv = _host(repo, monkeypatch, pins=(("tiny", "1.0-1"), ("tiny-lib", "2.0-1")))
    tree = _deb_tree(hv, "tiny")
    assert not tree.unchecked
    lines = dict(x.split("\t", 1) for x in tree.lines)
    assert lines["/usr/bin/tiny"].endswith(_sha(BIN))
    assert lines["/etc/tiny.conf"].endswith(_sha(CONF))
    assert lines["/usr/bin/tiny-alias"].endswith("l:tiny")
    assert tree.notes.get("/etc/tiny.conf") == "conffile"
    lib = _deb_tree(hv, "tiny-lib")
    assert dict(x.split("\t", 1) for x in lib.lines)["/usr/lib/libtiny.so.2"].endswith(_sha(LIB))
    # downloaded into the cache, keyed by the sha256 the signed index names
    digest = _sha(repo.debs["tiny"].read_bytes())
    assert (tmp_path / "cache/debs" / f"{digest}.deb").read_bytes() == \
        repo.debs["tiny"].read_bytes()
    # the facts module is told the hash of these lines, not `not checked`
    option = core_integrity.expected_components(core_integrity.option([tree], []))
    assert option["files.deb:tiny"] == tree.hash


def test_a_deb_whose_sha256_is_not_the_index_one_is_refused(
        repo: Repo, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hv = _host(repo, monkeypatch, pins=(("tiny-evil", "1.0-1"),))
    tree = _deb_tree(hv, "tiny-evil")
    assert tree.unchecked and not tree.lines
    assert "sha256" in tree.unchecked and "refused" in tree.unchecked
    assert not list((tmp_path / "cache").glob("debs/*.deb"))
    assert not list((tmp_path / "cache").glob("debfiles/*.json"))
    option = core_integrity.expected_components(core_integrity.option([tree], []))
    assert str(option["files.deb:tiny-evil"]).startswith(core_integrity.NOT_CHECKED)


@pytest.mark.parametrize(("suite", "why"), [
    ("tampered", "bad signature"),
    ("otherkey", "no good signature by the pinned key"),
    ("lying", "not the one the signed InRelease gives"),
])
def test_an_index_that_is_not_signed_by_the_pinned_key_is_refused(
        repo: Repo, monkeypatch: pytest.MonkeyPatch, suite: str, why: str) -> None:
    with pytest.raises(aptrepo.RepoError, match=why):
        aptrepo.index(repo.source(suite))
    tree = _deb_tree(_host(repo, monkeypatch, suite=suite), "tiny")
    assert why in tree.unchecked and "refused" in tree.unchecked
    assert not tree.lines


def test_the_same_index_with_the_pinned_key_is_read(repo: Repo) -> None:
    """The counterpart of the refusals above: the same packages, signed by the pinned key."""
    found = aptrepo.index(repo.source("stable"))
    assert found[("tiny", "1.0-1")].sha256 == _sha(repo.debs["tiny"].read_bytes())
    assert found[("tiny", "1.0-1")].url == f"{repo.url}/pool/main/t/{repo.debs['tiny'].name}"


def test_a_pin_the_repository_does_not_hold_is_not_checked(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = _deb_tree(_host(repo, monkeypatch, pins=(("tiny", "9.9-1"),)), "tiny")
    assert tree.unchecked.startswith("tiny 9.9-1 is in none of the official repositories")
    assert f"{repo.url}/dists/stable/" in tree.unchecked


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_unreachable_repository_is_not_checked_with_its_reason(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}/docker"
    tree = _deb_tree(_host(repo, monkeypatch, uri=uri), "tiny")
    assert not tree.lines
    assert f"{uri}/dists/stable/InRelease: unreachable" in tree.unchecked
    assert "package_sources.apt" in tree.unchecked  # the fix
    option = core_integrity.expected_components(core_integrity.option([tree], []))
    assert str(option["files.deb:tiny"]).startswith(core_integrity.NOT_CHECKED)


def test_a_repository_that_never_answers_is_given_up_within_the_timeout(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aptrepo, "TIMEOUT", 1.0)
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}/docker"
        start = time.monotonic()
        tree = _deb_tree(_host(repo, monkeypatch, uri=uri, suites=("b", "c", "d"),
                               pins=(("tiny", "1.0-1"), ("tiny-lib", "2.0-1"))), "tiny")
        took = time.monotonic() - start
    assert "unreachable" in tree.unchecked and "timed out" in tree.unchecked
    # one timeout for the host, not one per repository on it, per package or per file
    assert took < 3.5


def test_a_host_with_a_mirror_is_not_sent_to_the_official_repositories(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    hv = {**_host(repo, monkeypatch), "stacklock_apt_official": False}
    tree = _deb_tree(hv, "tiny")
    assert tree.unchecked == integrity.NO_DEB


def test_the_pins_narrow_the_os_when_the_inventory_does_not_name_it(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """No stacklock_os_*: every supported OS is a candidate (the repository's suite names the
    release, as Docker's does). tiny 1.0-1 alone is in jammy and noble with other bytes: not
    checked, with the fix; with tiny-lib 2.0-1, which only jammy holds, it is jammy's."""
    role_sources = aptrepo.role_sources

    def per_release(hv: Any, role: str, os_id: aptrepo.OsId) -> list[aptrepo.AptSource]:
        # as Docker's suite `{{ ansible_facts['distribution_release'] }}` renders
        return [dataclasses.replace(s, suite=os_id.codename) if s.suite == "RELEASE" else s
                for s in role_sources(hv, role, os_id)]

    monkeypatch.setattr(aptrepo, "role_sources", per_release)
    hv = _host(repo, monkeypatch, suite="RELEASE")
    del hv["stacklock_os_distribution"], hv["stacklock_os_release"]
    assert {o.codename for o in aptrepo.supported_os()} >= {"jammy", "noble", "bookworm"}
    alone = _deb_tree(hv, "tiny")
    assert "has other bytes in the repositories of" in alone.unchecked
    assert "stacklock_os_distribution" in alone.unchecked
    monkeypatch.setattr(integrity, "_MEMO", {})
    both = {**hv, "docker_packages": [{"name": "tiny", "version": "1.0-1"},
                                      {"name": "tiny-lib", "version": "2.0-1"}]}
    tree = _deb_tree(both, "tiny")
    assert not tree.unchecked
    assert dict(x.split("\t", 1) for x in tree.lines)["/usr/bin/tiny"].endswith(_sha(BIN))
    # and the node's OS named in the inventory picks its own build
    noble = _deb_tree({**hv, "stacklock_os_distribution": "ubuntu",
                       "stacklock_os_release": "24.04"}, "tiny")
    assert dict(x.split("\t", 1) for x in noble.lines)["/usr/bin/tiny"].endswith(
        _sha(b"noble build\n"))


def test_a_flat_repository_is_read_as_nvidias_are(repo: Repo) -> None:
    src = aptrepo.AptSource("test", f"{repo.url}/flat", "/", (), (f"{repo.url}/key.asc",),
                            (repo.fingerprint,))
    hit = aptrepo.index(src)[("tiny", "1.0-1")]
    assert hit.url == f"{repo.url}/flat/{repo.debs['tiny'].name}"
    files = aptrepo.download(hit)
    assert files["files"]["/usr/bin/tiny"] == _sha(BIN)
    assert files["conffiles"] == ["/etc/tiny.conf"]
    assert files["file"] == repo.debs["tiny"].name


def test_a_pin_read_once_is_checked_again_without_the_network(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the signed index named for NAME VERSION is kept (apt-pins, debfiles): the next
    verify of the same pins needs no repository; an unknown pin still does."""
    hv = _host(repo, monkeypatch, pins=(("tiny", "1.0-1"),))
    first = _deb_tree(hv, "tiny")
    assert not first.unchecked
    monkeypatch.setattr(aptrepo, "_INDEXES", {})
    monkeypatch.setattr(integrity, "_MEMO", {})

    def offline(url: str, **_: Any) -> bytes:
        raise aptrepo.RepoError(f"{url}: unreachable (offline in this test)")

    monkeypatch.setattr(aptrepo, "_fetch", offline)
    again = _deb_tree(hv, "tiny")
    assert (again.unchecked, again.lines) == ("", first.lines)
    other = _deb_tree(_host(repo, monkeypatch, pins=(("tiny-lib", "2.0-1"),)), "tiny-lib")
    assert "offline in this test" in other.unchecked
