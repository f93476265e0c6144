"""embed-dataset on Ray Data (issue 19 part 2): a local Ray cluster on 127.0.0.1 with 2 embedder
actors gives the same shards as the serial path. Skipped without Ray (`graphdsl[ray]`); CI runs it
with `make test-ray`, in its own venv, as Ray's start-up is slow."""
import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

from graphdsl import demo  # noqa: E402
from graphdsl.dataset import embed_dataset, read_output  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             _node_ip_address="127.0.0.1", logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_actors_equal_the_serial_path(cluster, tmp_path):
    mmproj, _, _ = demo.build_files("tiny", tmp_path / "cache")
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(1)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    serial, on_ray = tmp_path / "serial", tmp_path / "ray"
    embed_dataset(imgs, serial, mmproj=mmproj, shard_size=2, n_threads=1)
    ticks = []
    res = embed_dataset(imgs, on_ray, mmproj=mmproj, shard_size=2, n_threads=1, ray=True, ray_actors=2,
                        progress=ticks.append)
    assert res["n_shards"] == 3 and sum(ticks) == 6
    assert read_output(serial).equals(read_output(on_ray))  # bit for bit, spans and ids included
    again = embed_dataset(imgs, on_ray, mmproj=mmproj, shard_size=2, n_threads=1, ray=True)
    assert again["skipped_shards"] == 3  # resumable like the local path
