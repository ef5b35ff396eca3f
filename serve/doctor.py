"""serve's lines of `sslforge doctor`: the service and demo packages."""
from __future__ import annotations

from pretrain.ground.doctor import Line, not_installed, package_version


def lines() -> list[Line]:
    return [("BentoML", package_version("bentoml") or not_installed("serve")),
            ("Gradio", package_version("gradio") or not_installed("demo"))]
