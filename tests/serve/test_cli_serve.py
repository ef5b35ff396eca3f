"""`sslforge serve` turns its options into the SSLFORGE_* variables of a `bentoml serve` command."""
from __future__ import annotations

import pytest

from pretrain.cli import build_parser
from serve.cli import SERVICE, server_command, settings_from_args
from serve.settings import SettingsError, from_env


def test_serve_options_become_the_services_settings(served):
    model, index, _ = served
    args = build_parser().parse_args(["serve", "--model", str(model), "--index", str(index), "--backend", "onnx",
                                      "--no-batching", "--max-batch-size", "8", "--max-latency-ms", "500",
                                      "--max-k", "7", "--port", "4321"])
    settings = settings_from_args(args)
    assert from_env(settings.env()) == settings
    assert (settings.model, settings.index, settings.backend) == (str(model.resolve()), str(index.resolve()), "onnx")
    assert (settings.batching, settings.max_batch_size, settings.max_latency_ms, settings.limits.max_k) == \
        (False, 8, 500, 7)
    assert server_command(args.host, args.port)[2:] == ["bentoml", "serve", SERVICE, "--host", "127.0.0.1",
                                                        "--port", "4321"]


def test_serve_refuses_a_missing_folder(tmp_path):
    args = build_parser().parse_args(["serve", "--model", str(tmp_path / "nope")])
    with pytest.raises(SettingsError, match="--model .*nope is not a folder"):
        settings_from_args(args)
