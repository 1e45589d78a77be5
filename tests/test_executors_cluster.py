"""--executor ray on a two-node cluster on loopback (ray.cluster_utils.Cluster), joined by address."""

from __future__ import annotations

import pytest

from tests.helpers import cli, load
from tests.test_executors import QUICK_PRUNE, _records


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

    local = cli("prune", "--out", tmp_path / "local", *QUICK_PRUNE)
    assert local.exit_code == 0, local.output
    remote = cli("prune", "--out", tmp_path / "ray", *QUICK_PRUNE, "--executor", "ray",
                 "--ray-address", two_nodes.address)
    assert remote.exit_code == 0, remote.output
    assert not ray.is_initialized()  # mixprune disconnected; the cluster is the test's
    assert _records(tmp_path / "ray") == _records(tmp_path / "local")
    assert load(tmp_path / "ray" / "run.json")["config"]["ray_address"] == two_nodes.address
