"""Lock the AWS example (`stacklock.yaml`) against a local moto server.

This machine cannot reach AWS, so the example's AMI ids are resolved against moto, where this
script registers the pinned image name (owner 099720109477) in each region first: the ids in
the committed `stacklock.lock` are moto's, not Canonical's. With credentials for a real
account, run `stacklock lock` instead (docs/aws.md).

    .venv/bin/python scripts/lock_aws_example.py
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


EXAMPLE = ("an example: its AMI ids come from a local moto server (scripts/lock_aws_example.py), "
           "not from AWS; run `stacklock lock` with credentials for your account")


def mark_example(lock: Path) -> None:
    """The lock says it is an example: apply and provision refuse its aws environments."""
    from stacklock.core import lock as lockmod

    data = lockmod.read_lock(lock)
    assert data is not None
    data[lockmod.EXAMPLE_KEY] = EXAMPLE
    lock.write_text(lockmod.dump_lock(data), "utf-8")


def main() -> int:
    sys.path.insert(0, str(ROOT / "src"))
    from stacklock.adapters.proc import run_command
    from stacklock.core.lock import ami_regions
    from stacklock.core.manifest import load_manifest

    loaded = load_manifest(ROOT / "stacklock.yaml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "moto",
                "AWS_SECRET_ACCESS_KEY": "moto", "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"})
    log = (ROOT / ".cache" / "logs")
    log.mkdir(parents=True, exist_ok=True)
    with (log / "moto-lock.log").open("w") as fh:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=fh, stderr=subprocess.STDOUT, env={**env, "MOTO_ACCOUNT_ID": "099720109477"},
            start_new_session=True)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        os.environ.update(env)
        import boto3

        for stack_name, regions in ami_regions(loaded.manifest).items():
            image = loaded.manifest.stacks[stack_name].ami
            assert image is not None
            for region in regions:
                boto3.client("ec2", region_name=region).register_image(
                    Name=image.name, Architecture="x86_64", RootDeviceName="/dev/sda1",
                    VirtualizationType="hvm")
        lock = ROOT / "stacklock.lock"
        lock.unlink(missing_ok=True)
        run_command([str(Path(sys.executable).parent / "stacklock"), "-m",
                     str(ROOT / "stacklock.yaml"), "lock"], env=env, capture=False)
        mark_example(lock)
    finally:
        server.terminate()
        server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
