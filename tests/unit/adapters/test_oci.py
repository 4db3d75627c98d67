"""stacklock.adapters.oci: layers and layouts written byte for byte.

The same folder gives the same layer whatever its files' times or the order the file system
lists them in; anything that does change what an image runs (a byte, a mode, an owner, a
link) changes the digest. The layout is read back with GNU tar and Python's own readers.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from stacklock.adapters import oci
from stacklock.errors import ToolFailed

EPOCH = 1767225600


def _tree(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc/config").write_text("a=1\n")
    (root / "usr/bin").mkdir(parents=True)
    tool = root / "usr/bin/tool"
    tool.write_text("#!/bin/sh\necho hi\n")
    tool.chmod(0o755)
    os.link(tool, root / "usr/bin/tool-again")
    (root / "usr/bin/link").symlink_to("tool")
    (root / "zz").mkdir()
    (root / "B").write_text("capital first in byte order\n")
    return root


def _layer(root: Path, dest: Path) -> oci.Layer:
    return oci.write_layer(root, dest, epoch=EPOCH, comment="test")


def test_same_tree_same_digest_whatever_the_times(tmp_path: Path) -> None:
    a = _layer(_tree(tmp_path / "a"), tmp_path / "blobs-a")
    b_root = _tree(tmp_path / "b")
    for path in b_root.rglob("*"):
        os.utime(path, (1, 2), follow_symlinks=False)
    b = _layer(b_root, tmp_path / "blobs-b")
    assert (a.digest, a.diff_id, a.size) == (b.digest, b.diff_id, b.size)
    assert a.path.name == a.digest.split(":", 1)[1]
    assert hashlib.sha256(a.path.read_bytes()).hexdigest() == a.digest.split(":", 1)[1]
    assert "sha256:" + hashlib.sha256(gzip.decompress(a.path.read_bytes())).hexdigest() == a.diff_id


@pytest.mark.parametrize("change", ["content", "mode", "owner", "link", "new file"])
def test_what_changes_the_image_changes_the_digest(tmp_path: Path, change: str) -> None:
    base = _layer(_tree(tmp_path / "a"), tmp_path / "blobs-a")
    root = _tree(tmp_path / "b")
    if change == "content":
        (root / "etc/config").write_text("a=2\n")
    elif change == "mode":
        (root / "etc/config").chmod(0o600)
    elif change == "owner":
        if os.geteuid() != 0:
            pytest.skip("chown needs root")
        os.chown(root / "etc/config", 10001, 10001)
    elif change == "link":
        (root / "usr/bin/link").unlink()
        (root / "usr/bin/link").symlink_to("/usr/bin/tool")
    else:
        (root / "etc/extra").write_text("")
    assert _layer(root, tmp_path / "blobs-b").diff_id != base.diff_id


def test_the_tar_is_sorted_timeless_and_nameless(tmp_path: Path) -> None:
    layer = _layer(_tree(tmp_path / "a"), tmp_path / "blobs")
    raw = gzip.decompress(layer.path.read_bytes())
    header = layer.path.read_bytes()[:10]  # gzip: no file name (FNAME flag), mtime 0
    assert header[3] & 0x08 == 0 and header[4:8] == b"\0\0\0\0"
    (tmp_path / "layer.tar").write_bytes(raw)
    with tarfile.open(tmp_path / "layer.tar") as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == ["B", "etc", "etc/config", "usr", "usr/bin", "usr/bin/link", "usr/bin/tool",
                     "usr/bin/tool-again", "zz"]
    assert {m.mtime for m in members} == {EPOCH}
    assert {(m.uname, m.gname) for m in members} == {("", "")}
    by_name = {m.name: m for m in members}
    assert by_name["usr/bin/tool-again"].islnk() and by_name["usr/bin/tool-again"].linkname == "usr/bin/tool"
    assert by_name["usr/bin/link"].issym() and by_name["usr/bin/link"].linkname == "tool"
    assert by_name["usr/bin/tool"].mode == 0o755
    # GNU tar unpacks it (the layer format Docker and containerd read)
    out = tmp_path / "unpacked"
    out.mkdir()
    subprocess.run(["tar", "-C", str(out), "-xf", str(tmp_path / "layer.tar")], check=True)
    assert (out / "usr/bin/tool").read_text() == "#!/bin/sh\necho hi\n"


def test_layout_round_trip_and_docker_archive(tmp_path: Path) -> None:
    layer = _layer(_tree(tmp_path / "a"), tmp_path / "blobs")
    config = oci.image_config([layer], created="2026-01-01T00:00:00Z",
                              config={"User": "10001:10001", "Entrypoint": ["/usr/bin/tool"]})
    image = oci.write_layout(tmp_path / "layout", [layer], config, ref="t:1")
    again = oci.read_layout(tmp_path / "layout")
    assert (again.manifest_digest, again.config_digest, again.size) == (
        image.manifest_digest, image.config_digest, image.size)
    assert json.loads((tmp_path / "layout/oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    for blob in (tmp_path / "layout/blobs/sha256").iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    cfg = json.loads(config)
    assert cfg["rootfs"]["diff_ids"] == [layer.diff_id]
    assert cfg["created"] == "2026-01-01T00:00:00Z"
    archive = oci.write_docker_archive(image, tmp_path / "docker.tar", tag="t:1")
    with tarfile.open(archive) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        cfg_member = tar.extractfile(manifest[0]["Config"])
        assert cfg_member is not None and cfg_member.read() == config
    assert manifest[0]["RepoTags"] == ["t:1"]
    # a changed blob is caught when the layout is read
    blob = tmp_path / "layout/blobs/sha256" / image.manifest_digest.split(":", 1)[1]
    blob.write_bytes(blob.read_bytes() + b" ")
    with pytest.raises(ToolFailed, match="does not match"):
        oci.read_layout(tmp_path / "layout")
