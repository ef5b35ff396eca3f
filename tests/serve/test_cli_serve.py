"""`sslforge serve` turns its options into the SSLFORGE_* variables of a `bentoml serve` command, and a SIGTERM
to it stops the whole server."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from serve_helpers import free_port, tcp_listening

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


def test_serve_keeps_the_limits_set_in_the_environment(served, monkeypatch):
    monkeypatch.setenv("SSLFORGE_HEADER_TIMEOUT", "7")
    monkeypatch.setenv("SSLFORGE_MAX_BYTES", "1234")
    monkeypatch.setenv("SSLFORGE_MAX_K", "9")
    base = ["serve", "--model", str(served[0])]
    limits = settings_from_args(build_parser().parse_args(base)).limits
    assert (limits.header_timeout, limits.max_bytes, limits.max_k) == (7, 1234, 9)
    assert settings_from_args(build_parser().parse_args([*base, "--max-k", "5"])).limits.max_k == 5


def test_serve_refuses_a_missing_folder(tmp_path):
    args = build_parser().parse_args(["serve", "--model", str(tmp_path / "nope")])
    with pytest.raises(SettingsError, match="--model .*nope is not a folder"):
        settings_from_args(args)


def test_sigterm_to_sslforge_serve_stops_the_whole_server(served, tmp_path):
    """What a process manager, `docker stop` or `kill PID` does: the server's processes end and the port is free."""
    from tools.process import wait_ready

    model, index, _ = served
    port, log = free_port(), tmp_path / "serve.log"
    cmd = [str(Path(sys.executable).parent / "sslforge"), "serve", "--model", str(model), "--index", str(index),
           "--port", str(port)]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT)
    tree: list[psutil.Process] = []
    try:
        wait_ready(f"http://127.0.0.1:{port}", proc, log)
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        assert len(tree) >= 2, "no server process under sslforge serve"
        ports = tcp_listening({str(p.pid): p for p in tree})  # circus's control sockets are not on TCP
        assert ports and {port for _, port in ports} == {port}, ports
        private = [c.laddr for c in tree[0].net_connections(kind="unix") if "sslforge-circus-" in c.laddr]
        assert private, "the arbiter's endpoints are not private Unix sockets"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        _, alive = psutil.wait_procs(tree, timeout=60)
        assert not alive, f"still running after SIGTERM: {[p.cmdline() for p in alive]}"
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # the port is free again
        assert not Path(private[0]).parent.exists()  # the private folder is gone with the server
    finally:
        for p in tree:
            if p.is_running():
                p.kill()
        if proc.poll() is None:
            proc.kill()
