"""``graphdsl ARGV`` with each item's pre-processing slowed by $GRAPHDSL_TEST_ITEM_DELAY seconds
(and logged to $GRAPHDSL_TEST_ITEM_LOG),
in this process and in its spawned workers (they import this file as __mp_main__), so that a
test can stop a run while shards are being embedded. Used by tests/cli/test_dataset_stop.py."""
import os
import sys
import time

from graphdsl.embed import FileEmbedder

_items = FileEmbedder.items
_DELAY = float(os.environ.get("GRAPHDSL_TEST_ITEM_DELAY", "0"))


_LOG = os.environ.get("GRAPHDSL_TEST_ITEM_LOG")  # a file that gets each item's first image's name


def _slow_items(self, images=(), *a, **kw):
    if _LOG and images:
        fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # one write a line: whole across processes
        os.write(fd, (os.path.basename(images[0]) + "\n").encode())
        os.close(fd)
    time.sleep(_DELAY)
    return _items(self, images, *a, **kw)


FileEmbedder.items = _slow_items

if __name__ == "__main__":
    from graphdsl import cli
    sys.exit(cli.main(sys.argv[1:]))
