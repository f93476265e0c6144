"""``graphdsl ARGV`` with each item's pre-processing slowed by $GRAPHDSL_TEST_ITEM_DELAY seconds,
in this process and in its spawned workers (they import this file as __mp_main__), so that a
test can stop a run while shards are being embedded. Used by tests/test_dataset_stop.py."""
import os
import sys
import time

from graphdsl.embed import FileEmbedder

_items = FileEmbedder.items
_DELAY = float(os.environ.get("GRAPHDSL_TEST_ITEM_DELAY", "0"))


def _slow_items(self, *a, **kw):
    time.sleep(_DELAY)
    return _items(self, *a, **kw)


FileEmbedder.items = _slow_items

if __name__ == "__main__":
    from graphdsl import cli
    sys.exit(cli.main(sys.argv[1:]))
