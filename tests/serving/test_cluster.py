"""Scaling on a real two-node Ray cluster (tests/ray_cluster.py), the model deployed through the dashboard's REST
API as Instill Core deploys it: from zero replicas, out to the other node under load, through the loss of that
node with no call lost, and back to one replica after the load.

The tests run in order on one deployment, as its life goes: each starts from the state the one before leaves.
After them the table of what they measured is printed (README's Scaling section shows it).
"""

import os
import time
from types import SimpleNamespace

import grpc
import pytest

from helpers import looks_alike
from load import BUSY, LOST, OK, Load
from ray_cluster import two_node_cluster, wait_for
from served import MODEL
from stable_diffusion_xl.serving.client import grpc_call, task_input
from stable_diffusion_xl.serving.local_serve import Application, deploy

pytestmark = pytest.mark.slow

# Seconds where the defaults are minutes; the upscale delay is longer than MEASURE_S, the one-replica window.
UPSCALE_DELAY_S, DOWNSCALE_DELAY_S = 10, 5
CALL = task_input("a lighthouse at dusk", seed=7, steps=4, refiner=False)  # a fixed seed makes a retry safe
CLIENTS = 4  # two per replica when there are two, batched together or one after the other
DEADLINE_S = 60  # a call neither answered nor failed by then is lost
MEASURE_S = 8  # seconds of load measured with one replica, and with two
STEADY_S = 3  # seconds of load before the node is lost, and after its replica is back


@pytest.fixture(scope="module")
def deployment(weights_dir, tmp_path_factory):
    """The model on a head and a worker node: one replica per node (one GPU each), at most two, and the SDK's
    default minimum of zero. The GPUs are declared, not real: SDXL_DEVICE=cpu, or the replicas would refuse to
    start on a GPU torch cannot use."""
    env = {"SDXL_DEMO_WEIGHTS": "1", "SDXL_WEIGHTS_DIR": str(weights_dir), "SDXL_DEVICE": "cpu", "RAY_NUM_OF_GPUS": "1",
           "RAY_NUM_OF_MAX_REPLICAS": "2", "SDXL_UPSCALE_DELAY_S": str(UPSCALE_DELAY_S),
           "SDXL_DOWNSCALE_DELAY_S": str(DOWNSCALE_DELAY_S)}
    with two_node_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        deploy(cluster.dashboard, [Application(MODEL, env)], cluster.ports, timeout=300)
        with grpc.insecure_channel(f"127.0.0.1:{cluster.ports.grpc}") as channel:
            yield SimpleNamespace(cluster=cluster, channel=channel)


@pytest.fixture(scope="module")
def table(measured):
    """The rows README's Scaling section shows."""
    rows = measured.setdefault("scaling on a two-node Ray cluster", {})
    load_at_start = os.getloadavg()[0]
    yield rows
    rows["load average at the start and the end (2 cores, shared)"] = f"{load_at_start:.1f}, {os.getloadavg()[0]:.1f}"


def replica_states(cluster) -> list[str]:
    return [replica.state for replica in cluster.replicas(MODEL)]


def one_running_replica_per_node(cluster) -> bool:
    """Each live node holds a RUNNING replica (and, having one GPU, no more)."""
    running = sorted(replica.node_id for replica in cluster.replicas(MODEL) if replica.state == "RUNNING")
    return running == sorted(cluster.nodes())


def test_a_call_at_zero_replicas_waits_for_a_replica_to_start_and_succeeds(deployment, table):
    cluster = deployment.cluster
    wait_for(lambda: not replica_states(cluster), 120, "scale-down to zero replicas")
    started = time.monotonic()
    outputs = grpc_call(deployment.channel, MODEL, CALL, timeout=300)
    table["scale from zero: a call sent at zero replicas, to its answer"] = f"{time.monotonic() - started:.1f} s"
    assert outputs[0]["data"]["choices"][0]["finish-reason"] == "success"
    assert replica_states(cluster) == ["RUNNING"]


def test_under_load_a_second_replica_starts_on_the_other_node(deployment, table):
    cluster = deployment.cluster
    with Load(deployment.channel, MODEL, CALL, CLIENTS, DEADLINE_S) as load:
        started = time.monotonic()
        time.sleep(MEASURE_S)
        one = load.rate(started, time.monotonic())
        states = replica_states(cluster)
        if time.monotonic() - started < UPSCALE_DELAY_S:  # seen within the delay (a busy dashboard answers late)
            assert states == ["RUNNING"]  # no second replica yet
        wait_for(lambda: one_running_replica_per_node(cluster), 180, "running replica on each node")
        measured = time.monotonic()
        time.sleep(MEASURE_S)
        two = load.rate(measured, time.monotonic())
    table[f"calls per second, {CLIENTS} clients: one replica"] = f"{one:.2f}"
    table[f"calls per second, {CLIENTS} clients: two replicas, one per node"] = f"{two:.2f} ({two / one:.2f}x)"
    assert {call.status for call in load.calls} <= {OK, BUSY}
    first, *others = [call.image for call in load.with_status(OK)]
    # The same images from either node, batched with other callers' or not: up to float rounding.
    assert all(looks_alike(first, other) for other in others)


def test_losing_a_node_fails_only_the_calls_in_flight_there_and_its_replica_comes_back(deployment, table):
    cluster = deployment.cluster
    with Load(deployment.channel, MODEL, CALL, CLIENTS, DEADLINE_S) as load:
        wait_for(lambda: one_running_replica_per_node(cluster), 180, "running replica on each node")
        time.sleep(STEADY_S)
        killed = time.monotonic()
        cluster.kill_worker()
        declared_dead = time.monotonic()
        cluster.start_worker()
        returned = time.monotonic()
        wait_for(lambda: one_running_replica_per_node(cluster), 180, "replica back on the returned node")
        back = time.monotonic()
        time.sleep(STEADY_S)
    failed = [call for call in load.calls if call.status != OK]
    errored, lost = [call for call in failed if call.status != LOST], load.with_status(LOST)
    table["node loss: calls sent / succeeded / errored / lost"] = \
        f"{len(load.calls)} / {len(load.with_status(OK))} / {len(errored)} / {len(lost)}"
    table["node loss: the kill to the last error"] = f"{max(call.ended for call in errored) - killed:.1f} s" \
        if errored else "no call was in flight there"
    table["node loss: the kill to the node declared dead by Ray"] = f"{declared_dead - killed:.1f} s"
    table["node loss: the node's return to its replica running"] = f"{back - returned:.1f} s"
    assert not lost
    # Only calls that met the lost replica fail, with Ray's word that its actor is gone: INTERNAL "The actor ...
    # is unavailable" or "... died". Those in flight at the kill, and those routed to it in the moment after,
    # before the proxy learnt of its loss. Once a call to a replica failed, the router probes it before choosing
    # it again, which a lost replica never answers: each client meets it at most once, and every failed call was
    # sent before Ray declared the node dead.
    assert all(call.started < declared_dead for call in failed)
    assert len(failed) <= CLIENTS
    assert all(call.status == grpc.StatusCode.INTERNAL.name and "actor" in call.details.lower() for call in failed), \
        failed
    first, *others = [call.image for call in load.with_status(OK)]
    assert all(looks_alike(first, other) for other in others)


def test_after_the_load_the_deployment_returns_to_one_replica(deployment, table):
    cluster = deployment.cluster
    # The test before leaves two replicas; on a busy machine the scale-in may have begun before this line.
    load_ended = time.monotonic()
    wait_for(lambda: replica_states(cluster) == ["RUNNING"], 120, "scale-in to one replica")
    table["scale-in: from the end of the load to one replica"] = f"{time.monotonic() - load_ended:.1f} s"
