"""`stacklock init`, the vendored modules and where stacklock finds its shipped files
(stacklock.core.share, stacklock.flows.init), from this checkout."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stacklock.core import schedule, share
from stacklock.core.manifest import load_manifest
from stacklock.errors import InvalidInput
from stacklock.flows import init as flow

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def _no_home(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STACKLOCK_HOME", raising=False)


def test_the_checkout_is_the_share() -> None:
    assert share.checkout_root() == ROOT
    assert share.share_root() == ROOT
    assert share.cache_root() == ROOT / ".cache"


def test_stacklock_home_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STACKLOCK_HOME", str(tmp_path))
    assert share.share_root() == tmp_path.resolve()
    assert share.modules_home(tmp_path / "x") == share.ModulesHome(tmp_path.resolve(), "share")


def test_the_source_tree_counts_as_vendored() -> None:
    home = share.modules_home(ROOT / "examples" / "lab")
    assert home == share.ModulesHome(ROOT, "source")
    assert share.stale_vendor(home) == []


def test_init_writes_manifest_models_gitignore_and_vendor(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = flow.init_repo(repo, project="acme-lab", network="10.231.0.0/16",
                            environments=["dev", "prod"])
    assert result.written == ["stacklock.yaml", "models/tiny-linear.mar", ".gitignore"]
    assert "terraform/modules/gpu_node_lab/main.tf" in result.vendored
    assert "scripts/lab-node.sh" in result.vendored and "VERSION" in result.vendored
    loaded = load_manifest(repo / "stacklock.yaml")
    m = loaded.manifest
    assert m.project == "acme-lab" and list(m.environments) == ["dev", "prod"]
    assert str(m.lab.network) == "10.231.0.0/16"
    assert loaded.output_root == repo.resolve()
    text = (repo / "stacklock.yaml").read_text()
    assert "10.213." not in text and "http://10.231.0.1:8700/apt" in text
    assert "# verify sends this request" in text  # the example's comments are kept
    assert (repo / "models/tiny-linear.mar").read_bytes() == (
        ROOT / "examples/models/tiny-linear.mar").read_bytes()
    assert ".stacklock/" in (repo / ".gitignore").read_text().splitlines()
    vendored = repo / share.VENDOR_DIR
    assert (vendored / "scripts/lab-node.sh").stat().st_mode & 0o100
    assert share.modules_home(repo) == share.ModulesHome(vendored.resolve(), "vendored")
    assert share.stale_vendor(share.modules_home(repo)) == []
    assert share.vendored_version(vendored) is not None


def test_init_keeps_an_existing_gitignore_and_refuses_a_second_manifest(tmp_path: Path) -> None:
    (tmp_path / ".gitignore").write_text("node_modules/\n.terraform/\n")
    flow.init_repo(tmp_path, provider="static")
    lines = (tmp_path / ".gitignore").read_text().splitlines()
    assert lines[0] == "node_modules/" and lines.count(".terraform/") == 1
    assert ".stacklock/" in lines
    with pytest.raises(InvalidInput, match="already exists"):
        flow.init_repo(tmp_path)
    flow.init_repo(tmp_path, provider="aws", force=True)
    data = yaml.safe_load((tmp_path / "stacklock.yaml").read_text())
    assert data["stacks"][next(iter(data["stacks"]))]["models"][0]["archive"] == (
        "models/tiny-linear.mar")
    load_manifest(tmp_path / "stacklock.yaml")


@pytest.mark.parametrize(("kwargs", "where"), [
    ({"provider": "gcp"}, "--provider"),
    ({"network": "10.5.0.0/24"}, "--network"),
    ({"network": "nope"}, "--network"),
    ({"provider": "static", "network": "10.231.0.0/16"}, "--network"),
    ({"project": "Bad_Name"}, "--project"),
    ({"environments": ["qa"]}, "--environment"),
])
def test_init_refuses_bad_options(tmp_path: Path, kwargs: dict[str, object], where: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        flow.init_repo(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert exc.value.problems[0].path == where
    assert not (tmp_path / "stacklock.yaml").exists()


def test_stale_vendored_files_are_named_and_upgrade_refreshes_them(tmp_path: Path) -> None:
    flow.init_repo(tmp_path)
    vendored = tmp_path / share.VENDOR_DIR
    home = share.modules_home(tmp_path / "deep" / "below")
    assert home.path == vendored.resolve()
    (vendored / "terraform/modules/gpu_node_lab/main.tf").write_text("# changed\n")
    (vendored / "terraform/modules/gpu_node_static/versions.tf").unlink()
    (vendored / "terraform/modules/extra.tf").write_text("# not shipped\n")
    assert share.stale_vendor(home) == [
        "terraform/modules/extra.tf", "terraform/modules/gpu_node_lab/main.tf",
        "terraform/modules/gpu_node_static/versions.tf"]
    changed = flow.upgrade(tmp_path)
    assert changed == ["terraform/modules/extra.tf", "terraform/modules/gpu_node_lab/main.tf",
                       "terraform/modules/gpu_node_static/versions.tf"]
    assert share.stale_vendor(home) == [] and flow.upgrade(tmp_path) == []
    (vendored / "VERSION").write_text("stacklock 0.0.1\n")
    assert share.stale_vendor(home) == ["VERSION"]


def test_render_points_at_the_vendored_copy(tmp_path: Path) -> None:
    from stacklock.core.lock import build_lock
    from stacklock.core.render import render_tree

    flow.init_repo(tmp_path / "repo", provider="static", environments=["dev"])
    loaded = load_manifest(tmp_path / "repo" / "stacklock.yaml")
    tree = render_tree(loaded, build_lock(loaded))
    assert 'source = "../../../vendor/stacklock/terraform/modules/gpu_node_static"' in tree[
        "terraform/environments/dev/main.tf"]


def test_the_ci_workflow_installs_what_the_repository_vendored(tmp_path: Path) -> None:
    assert schedule.ci_install_command(ROOT) == "python -m pip install ."
    assert schedule.ci_install_command("/nonexistent/repo") == "python -m pip install ."
    flow.init_repo(tmp_path)
    version = share.vendored_version(tmp_path / share.VENDOR_DIR)
    assert schedule.ci_install_command(tmp_path) == f"python -m pip install stacklock=={version}"
