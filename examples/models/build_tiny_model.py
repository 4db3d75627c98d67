"""Build a tiny-linear model archive: a TorchScript model computing y = WEIGHT * x + BIAS.

    python examples/models/build_tiny_model.py [--output-dir DIR]
        [--version 1.0] [--weight 2] [--bias 1]

Revision 1.0 (the defaults, y = 2x + 1) is written as tiny-linear.mar; any other version as
tiny-linear-VERSION.mar (examples/models/tiny-linear-2.0.mar: `--version 2.0 --weight 3
--bias 2`, y = 3x + 2). The model name stays tiny-linear: TorchServe serves each revision as
/predictions/tiny-linear/VERSION.

Needs torch and torch-model-archiver (0.12.0). Prints the archive's sha256, which goes
into the manifest (`models[].sha256`). A zip carries timestamps, so every build has a new
sha256: build once, commit the archive, and pin its hash.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
NAME = "tiny-linear"
VERSION = "1.0"


class TinyLinear(torch.nn.Module):
    def __init__(self, weight: float = 2.0, bias: float = 1.0) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        with torch.no_grad():
            self.linear.weight.fill_(weight)
            self.linear.bias.fill_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def archive_name(version: str) -> str:
    """tiny-linear.mar for revision 1.0 (the archive the examples pin), else tiny-linear-V.mar."""
    return f"{NAME}.mar" if version == VERSION else f"{NAME}-{version}.mar"


def build(output_dir: Path, version: str = VERSION, weight: float = 2.0, bias: float = 1.0) -> Path:
    if not re.fullmatch(r"[0-9][0-9A-Za-z.]*", version):
        raise SystemExit(f"--version {version!r}: write a model version like 2.0")
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tiny-linear-") as tmp:
        scripted = torch.jit.script(TinyLinear(weight, bias).eval())
        check = scripted(torch.tensor([[1.0], [2.0]])).reshape(-1).tolist()
        want = [weight * 1.0 + bias, weight * 2.0 + bias]
        if any(abs(a - b) > 1e-5 for a, b in zip(check, want, strict=True)):
            raise SystemExit(f"model self-check failed: {check}, expected {want}")
        pt = Path(tmp) / "tiny_linear.pt"
        torch.jit.save(scripted, str(pt))
        archiver = shutil.which("torch-model-archiver") or str(
            Path(sys.executable).parent / "torch-model-archiver"
        )
        # the build script is a developer tool, not part of the stacklock package
        subprocess.run(
            [
                archiver,
                "--model-name", NAME,
                "--version", version,
                "--serialized-file", str(pt),
                "--handler", str(HERE / "tiny_linear_handler.py"),
                "--export-path", tmp,
                "--force",
            ],
            check=True,
        )  # fmt: skip
        target = output_dir / archive_name(version)
        shutil.copyfile(Path(tmp) / f"{NAME}.mar", target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output-dir", type=Path, default=HERE)
    parser.add_argument("--version", default=VERSION, help="model version (default 1.0)")
    parser.add_argument("--weight", type=float, default=2.0, help="W in y = W*x + B (default 2)")
    parser.add_argument("--bias", type=float, default=1.0, help="B in y = W*x + B (default 1)")
    args = parser.parse_args()
    target = build(args.output_dir, args.version, args.weight, args.bias)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    print(f"{target} sha256={digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
