"""TorchServe handler for the tiny-linear example model: y = 2x + 1, plain numbers out.

Request body: {"inputs": [1, 2, 3]} (or a bare JSON list). Response: [3.0, 5.0, 7.0].
"""

from __future__ import annotations

import json
from typing import Any

import torch
from ts.torch_handler.base_handler import BaseHandler


class TinyLinearHandler(BaseHandler):  # type: ignore[misc]
    def preprocess(self, data: list[dict[str, Any]]) -> list[torch.Tensor]:
        rows = []
        for item in data:
            body = item.get("body") if item.get("body") is not None else item.get("data")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body.decode("utf-8"))
            elif isinstance(body, str):
                body = json.loads(body)
            values = body["inputs"] if isinstance(body, dict) else body
            rows.append(torch.tensor(values, dtype=torch.float32).reshape(-1, 1))
        return rows

    def inference(self, data: list[torch.Tensor], *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        with torch.no_grad():
            return [self.model(row) for row in data]

    def postprocess(self, data: list[torch.Tensor]) -> list[list[float]]:
        return [[round(float(v), 6) for v in out.reshape(-1)] for out in data]
