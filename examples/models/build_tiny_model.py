"""Build examples/models/tiny-linear.mar: a TorchScript model computing y = 2x + 1.

    python examples/models/build_tiny_model.py [--output-dir DIR]

Needs torch and torch-model-archiver (0.12.0). Prints the archive's sha256, which goes
into the manifest (`models[].sha256`). A zip carries timestamps, so every build has a new
sha256: build once, commit the archive, and pin its hash.
"""

from __future__ import annotations

import argparse
import hashlib
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
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(1, 1)
        with torch.no_grad():
            self.linear.weight.fill_(2.0)
            self.linear.bias.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def build(output_dir: Path) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tiny-linear-") as tmp:
        scripted = torch.jit.script(TinyLinear().eval())
        check = scripted(torch.tensor([[1.0], [2.0]])).reshape(-1).tolist()
        if check != [3.0, 5.0]:
            raise SystemExit(f"model self-check failed: {check}")
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
                "--version", VERSION,
                "--serialized-file", str(pt),
                "--handler", str(HERE / "tiny_linear_handler.py"),
                "--export-path", tmp,
                "--force",
            ],
            check=True,
        )  # fmt: skip
        target = output_dir / f"{NAME}.mar"
        shutil.copyfile(Path(tmp) / f"{NAME}.mar", target)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--output-dir", type=Path, default=HERE)
    args = parser.parse_args()
    target = build(args.output_dir)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    print(f"{target} sha256={digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
