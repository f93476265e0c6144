"""The shards on Ray Data: `ray.data.from_items` (one row per shard) -> `map_batches` with an
actor pool of embedders (each loads the models once, like a pool worker) -> each actor writes its
shard's Parquet file (atomically, as the local path does) and returns the shard's entry, which
the driver records in the manifest as it streams back. So a Ray run resumes, and gives the same
files, as a local one. Needs ``pip install 'graphdsl[ray]'``.

On a cluster: start Ray on the machines (`ray start --head` on one, `ray start --address=HEAD:6379`
on the others), give `--ray HEAD:6379` (or set RAY_ADDRESS and give `--ray auto`), and put the
output, the models and the media on a file system every node reaches under the same paths.
"""
from __future__ import annotations

import json

from .manifest import Item


class ShardActor:
    """One FileEmbedder per actor; a batch is one shard."""

    def __init__(self, cfg: dict):
        from .embedder import load_embedder
        self.fe = load_embedder(cfg)

    def __call__(self, batch: dict) -> dict:
        from .shards import embed_shard
        metas = []
        for index, items, out, on_error in zip(batch["index"], batch["items"], batch["out"], batch["on_error"]):
            its = [Item(d["id"], d["prompt"], d["tokens"], tuple(d["images"]), tuple(d["audios"]))
                   for d in json.loads(items)]
            metas.append(json.dumps(embed_shard(self.fe, int(index), its, out, on_error=str(on_error))))
        return {"meta": metas}


def run_ray(pending, cfg: dict, n_actors: int, address, finished, tick) -> None:
    try:
        import ray
        import ray.data
    except ImportError:
        raise ValueError("--ray needs Ray Data: pip install 'graphdsl[ray]'") from None
    if not pending:
        return
    started = False
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        started = True
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts items; Ray's would count blocks
        rows = [{"index": i, "items": json.dumps([it.as_dict() for it in items]), "out": out, "on_error": how}
                for i, items, out, how in pending]
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))
        threads = cfg["n_threads"] or 1
        res = ds.map_batches(ShardActor, fn_constructor_kwargs={"cfg": {**cfg, "n_threads": threads}},
                             batch_size=1, compute=ray.data.ActorPoolStrategy(size=n_actors), num_cpus=threads)
        for row in res.iter_rows():
            meta = json.loads(row["meta"])
            finished(meta)
            tick(meta["n_items"] + len(meta.get("failed", ())))
    finally:
        if started:
            ray.shutdown()
