"""Numeric options are checked when parsed (issue 12, item 17) and the RPC server serves only
loopback addresses unless asked (item 20). CLI cases run the entry point in a subprocess."""
from __future__ import annotations

import subprocess
import sys

import pytest

from graphdsl import _ggml, demo
from graphdsl.backends import rpc

IMG = str(demo.DATA / "demo_image.png")
HAS_RPC = _ggml.has_backend("RPC")


def gd(*argv, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphdsl.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=120, check=False, cwd=cwd)


def usage_error(r, *words) -> bool:
    last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    return r.returncode == 2 and "Traceback" not in r.stderr and all(w in last for w in words)


BAD = [  # (argv, the option named in the one-line error)
    (["preprocess", "image", IMG, "--size", "0"], "--size"),
    (["preprocess", "image", IMG, "--size", "-224"], "--size"),
    (["preprocess", "image", IMG, "--crop", "0"], "--crop"),
    (["preprocess", "image", IMG, "--size", "2.5"], "--size"),
    (["preprocess", "audio", IMG, "--n-mels", "0"], "--n-mels"),
    (["inspect", "--repeat", "0", "--profile"], "--repeat"),
    (["inspect", "--rel-l2", "0"], "--rel-l2"),
    (["inspect", "--rel-l2", "nan"], "--rel-l2"),
    (["inspect", "--group-by", "0"], "--group-by"),
    (["inspect", "--group-by", "layers"], "--group-by"),
    (["inspect", "--chart-by", "colour"], "--chart-by"),
    (["inspect", "--threads", "0"], "--threads"),
    (["bench", "--repeat", "0"], "--repeat"),
    (["bench", "--repeat", "-1"], "--repeat"),
    (["bench", "--warmup", "-1"], "--warmup"),
    (["bench", "--threads", "-2"], "--threads"),
    (["embed", "--mmproj", "m.gguf", "-o", "e.npy", "--threads", "0"], "--threads"),
    (["demo", "--threads", "0"], "--threads"),
    (["rpc-server", "--threads", "0"], "--threads"),
    (["rpc-server", "--port", "0"], "--port"),
    (["rpc-server", "--port", "65536"], "--port"),
]


@pytest.mark.parametrize("argv,opt", BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_bad_numbers_are_usage_errors(argv, opt, tmp_path):
    r = gd(*argv, cwd=tmp_path)
    assert usage_error(r, f"argument {opt}:"), r.stderr
    assert not list(tmp_path.iterdir())  # refused before any work


def test_good_numbers_still_run(tmp_path):
    """Negative control for the table above: the smallest valid values run."""
    r = gd("preprocess", "image", IMG, "--size", "1", "--crop", "1", "-o", "px.npy", cwd=tmp_path)
    assert r.returncode == 0 and "f32[3, 1, 1]" in r.stdout, r.stderr
    r = gd("bench", "--spec", "tiny", "--repeat", "1", "--warmup", "0", "--threads", "1", cwd=tmp_path)
    assert r.returncode == 0 and "over 1 runs" in r.stdout, r.stderr


def test_profile_refuses_repeat_below_one():
    class Executor:  # profile() checks its arguments before it runs anything
        runtime = None

        def __call__(self, inputs):
            raise AssertionError("ran")
    from graphdsl import inspect
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="repeat must be an int >= 1"):
            inspect.profile(Executor(), {}, repeat=bad)
    with pytest.raises(ValueError, match="warmup must be an int >= 0"):
        inspect.profile(Executor(), {}, warmup=-1)


# -- 20: the RPC server ----------------------------------------------------------------------------------
@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True),
                                       ("localhost", True), ("LocalHost", True), ("::ffff:127.0.0.1", True),
                                       ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.1", False),
                                       ("192.168.1.20", False), ("fe80::1", False), ("example.com", False),
                                       ("128.0.0.1", False), ("::ffff:10.0.0.1", False)])
def test_is_loopback(host, loop):
    assert rpc.is_loopback(host) is loop


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com"])
def test_rpc_server_refuses_remote_addresses_without_opt_in(host):
    r = gd("rpc-server", "--host", host, "--port", "50052")
    assert usage_error(r, "not a loopback address", "--allow-remote"), r.stderr
    with pytest.raises(ValueError, match="not a loopback address"):
        rpc.serve_rpc(host, 50052)
    with pytest.raises(ValueError, match="not a loopback address"):
        rpc.spawn_rpc_server(host)


@pytest.fixture
def fake_server(monkeypatch):
    """serve_rpc with ggml's blocking server replaced by a recorder (and RPC reported present)."""
    calls = []
    monkeypatch.setattr(rpc._ggml, "has_backend", lambda name: True)
    monkeypatch.setattr(rpc._ggml, "rpc_start_server", lambda endpoint, *a: calls.append(endpoint))
    return calls


@pytest.mark.parametrize("host,endpoint,warned", [("0.0.0.0", "0.0.0.0:50052", "0.0.0.0:50052"),
                                                  ("::", ":::50052", "[::]:50052"),
                                                  ("127.0.0.1", "127.0.0.1:50052", None)])
def test_allow_remote_serves_with_a_warning(fake_server, capsys, host, endpoint, warned):
    """--allow-remote lets a remote address through to ggml, with one warning line on stderr;
    a loopback address needs no flag and prints no warning (control)."""
    from graphdsl import cli
    assert cli.main(["rpc-server", "--host", host, "--allow-remote", "--port", "50052"]) == 0
    assert fake_server == [endpoint]
    err = capsys.readouterr().err
    if warned:
        assert err == (f"graphdsl rpc-server: warning: serving ggml's RPC protocol on {warned} without "
                       "authentication or encryption; anyone who can reach this port can run graphs on this "
                       "device and read or write its memory. Use it on a trusted network only.\n")
    else:
        assert err == ""


@pytest.mark.skipif(not HAS_RPC, reason="libggml built without RPC (scripts/build_libggml.sh rpc)")
def test_spawn_remote_server_with_opt_in():
    with pytest.warns(UserWarning, match="without authentication"):
        proc, endpoint = rpc.spawn_rpc_server("0.0.0.0", allow_remote=True)
    try:
        assert endpoint.startswith("0.0.0.0:")
    finally:
        proc.kill()
        proc.wait()


def test_library_rpc_checks_arguments():
    for port in (0, 70000, "50052"):
        with pytest.raises(ValueError, match="not a TCP port"):
            rpc.serve_rpc("127.0.0.1", port)
    with pytest.raises(ValueError, match="n_threads"):
        rpc.serve_rpc("127.0.0.1", 50052, 0)
