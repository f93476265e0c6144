"""``graphdsl`` commands run as a user runs them: in a subprocess (a crash is a failed test, not a
dead runner), optionally with stderr on a pseudo-terminal (progress bars draw only on a TTY)."""
from __future__ import annotations

import os
import subprocess
import sys


def graphdsl(*argv, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """Run ``graphdsl ARGV``; assert it exits 0 (stderr's tail in the message)."""
    # -P: the working directory (the checkout, under pytest) stays off sys.path, so the child imports
    # the installed graphdsl with its built extension, not the source tree (test-backends installs a copy)
    r = subprocess.run([sys.executable, "-P", "-m", "graphdsl.cli", *map(str, argv)], capture_output=True, text=True,
                       timeout=timeout, check=False, **kw)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def convert_and_embed(folder, gguf, out, *embed_args) -> None:
    """HF folder -> ``graphdsl convert`` -> ``graphdsl embed --mmproj GGUF EMBED_ARGS -o OUT`` on the CPU."""
    graphdsl("convert", folder, "-o", gguf)
    graphdsl("embed", "--mmproj", gguf, *embed_args, "-o", out, "--backend", "cpu")


def stderr_on_tty(cmd, *, cwd=None, env=None, columns: int = 100, timeout: float = 300) -> str:
    """stderr of CMD written to a pseudo-terminal of ``columns`` x 30 (stdout discarded); asserts exit 0."""
    import fcntl
    import pty
    import struct
    import termios
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))  # a terminal has a size
    p = subprocess.Popen(list(map(str, cmd)), stdout=subprocess.DEVNULL, stderr=slave, cwd=cwd, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            b = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not b:
            break
        chunks.append(b)
    os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert p.wait(timeout=timeout) == 0, text[-2000:]
    return text
