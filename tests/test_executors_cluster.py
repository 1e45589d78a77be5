"""--executor ray on a two-node cluster on loopback (ray.cluster_utils.Cluster), joined by address."""

from __future__ import annotations

import pytest

from tests.helpers import load
from tests.test_executors import _records, prune_on_one_thread


@pytest.fixture(scope="module")
def two_nodes():
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes(timeout=60)
    yield cluster
    cluster.shutdown()


@pytest.mark.slow
def test_a_two_node_cluster_runs_the_same_prune(two_nodes, tmp_path):
    import ray

    prune_on_one_thread(tmp_path / "local")
    prune_on_one_thread(tmp_path / "ray", "--executor", "ray", "--ray-address", two_nodes.address)
    assert not ray.is_initialized()  # mixprune disconnected; the cluster is the test's
    assert _records(tmp_path / "ray") == _records(tmp_path / "local")
    assert load(tmp_path / "ray" / "run.json")["config"]["ray_address"] == two_nodes.address
