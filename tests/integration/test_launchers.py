"""Kubernetes and SkyPilot launchers (launch/k8s/, launch/skypilot.yaml, launch/Dockerfile).

The manifests are parsed and checked for what the Kubeflow Training Operator (PyTorchJob), Kubeflow
Trainer (TrainJob) and SkyPilot require. Then the container command is taken from each manifest and
run here, verbatim except for paths, under the environment variables that operator or launcher would
set, with two "nodes" as two local launcher processes on loopback: the job forms, trains a tiny run,
and (PyTorchJob) survives the loss of a pod, or (SkyPilot) resumes from the bucket's checkpoint.

Paths inside the image and the volumes map to folders here: /opt/dist_seg (the image's copy of the
project) to the repository, /shared (the ReadWriteMany volume or bucket) and the node-local cache to
temporary folders; the config file baked into the image is swapped for a tiny one. What these tests
cannot show (a real cluster, the operators themselves, the Docker build) is listed in docs/launchers.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from support.helpers import PYTHON, REPO_ROOT, subprocess_env, tiny_raw_config
from support.torchrun import free_port

from dist_seg.checkpoint_file import list_checkpoints
from dist_seg.config import apply_overrides, config_from_dict
from dist_seg.synth import generate_dataset
from dist_seg.train.run import run_training

LAUNCH = REPO_ROOT / "launch"
ENTRYPOINT = "/opt/dist_seg/launch/entrypoint.sh"
IMAGE_ROOT = "/opt/dist_seg"
IMAGE_CONFIG = "/opt/dist_seg/configs/david.yaml"
LAUNCH_TIMEOUT_S = 240  # only reached when something hangs
STEPS_PER_EPOCH = 4  # 18 training frames // global batch 4 (2 nodes x 1 process x 2)

# A model without BatchNorm and no augmentation: small, fast, deterministic.
TINY = {
    "model": {"type": "fixtures_custom_model:LinearPixelNet"},
    "training.batch_size": 2, "training.val_batch_size": 3, "training.learning_rate": 0.01,
    "training.class_weighting": "none", "training.augment": {"hflip": False, "scale_min": 1, "scale_max": 1},
    "training.log_interval": 1, "training.num_visualizations": 1, "telemetry.tensorboard": False,
    # A lost peer is an error within seconds, not after the default 10 minutes.
    "backend.dist_timeout_s": 30,
}


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [doc for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, [doc.get("kind") for doc in docs]
    return found[0]


def pytorchjob() -> dict[str, Any]:
    return one(load_all(LAUNCH / "k8s" / "pytorchjob.yaml"), "PyTorchJob")


def trainjob() -> dict[str, Any]:
    return one(load_all(LAUNCH / "k8s" / "trainjob.yaml"), "TrainJob")


def skypilot_task() -> dict[str, Any]:
    return yaml.safe_load((LAUNCH / "skypilot.yaml").read_text())


def pvc() -> dict[str, Any]:
    return one(load_all(LAUNCH / "k8s" / "pvc.yaml"), "PersistentVolumeClaim")


def worker_container(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"]
                    if c["name"] == "pytorch"]
    return container


def set_values(args: list[str]) -> dict[str, str]:
    """``--set KEY=VALUE`` pairs of a command line."""
    return dict(args[i + 1].split("=", 1) for i, arg in enumerate(args) if arg == "--set")


def mounts_by_path(container: dict[str, Any], volumes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_name = {v["name"]: v for v in volumes}
    return {m["mountPath"]: by_name[m["name"]] for m in container["volumeMounts"]}


def gpus(resources: dict[str, Any]) -> int:
    return int(resources["limits"]["nvidia.com/gpu"])


# ------------------------------------------------------------------------------------------ the manifests themselves


def test_pytorchjob_is_elastic_with_the_container_and_port_the_operator_requires():
    job = pytorchjob()
    assert job["apiVersion"] == "kubeflow.org/v1"
    spec = job["spec"]
    elastic = spec["elasticPolicy"]
    assert elastic["rdzvBackend"] == "c10d"
    assert 1 <= elastic["minReplicas"] <= elastic["maxReplicas"]
    assert elastic["maxRestarts"] >= 1
    # Worker replicas only: the operator then points the rendezvous at <name>-worker-0.
    assert set(spec["pytorchReplicaSpecs"]) == {"Worker"}
    worker = spec["pytorchReplicaSpecs"]["Worker"]
    assert elastic["minReplicas"] <= worker["replicas"] <= elastic["maxReplicas"]
    assert worker["restartPolicy"] == "OnFailure"  # a lost pod comes back and rejoins

    container = worker_container(job)
    assert {"name": "pytorchjob-port", "containerPort": 23456, "protocol": "TCP"} in container["ports"]
    assert container["command"] == [ENTRYPOINT]
    assert container["args"][0] == IMAGE_CONFIG
    assert gpus(container["resources"]) == int(spec["nprocPerNode"]) >= 1

    pod = worker["template"]["spec"]
    mounts = mounts_by_path(container, pod["volumes"])
    assert mounts["/shared"]["persistentVolumeClaim"]["claimName"] == pvc()["metadata"]["name"]
    assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in mounts["/cache"]
    values = set_values(container["args"])
    assert values["training.output_dir"].startswith("/shared/") and values["dataset.root"].startswith("/shared/")
    assert values["dataset.cache_dir"] == "/cache"
    # Long enough for SIGTERM -> checkpoint at the next step -> exit.
    assert pod["terminationGracePeriodSeconds"] >= 60


def test_the_shared_volume_is_read_write_many():
    claim = pvc()
    assert claim["apiVersion"] == "v1" and claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_trainjob_runs_on_the_torch_distributed_runtime():
    job = trainjob()
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                         "name": "torch-distributed"}
    trainer = job["spec"]["trainer"]
    assert trainer["numNodes"] >= 2
    assert gpus(trainer["resourcesPerNode"]) == int(trainer["numProcPerNode"]) >= 1
    assert trainer["command"] == [ENTRYPOINT] and trainer["args"][0] == IMAGE_CONFIG
    assert trainer["image"] == worker_container(pytorchjob())["image"]
    # Same paths as the PyTorchJob, on the same volumes; the runtime's trainer container is named "node".
    assert trainer["args"] == worker_container(pytorchjob())["args"]
    (override,) = job["spec"]["podTemplateOverrides"]
    assert override["targetJobs"] == [{"name": "node"}]
    (container,) = override["spec"]["containers"]
    assert container["name"] == "node"
    mounts = mounts_by_path(container, override["spec"]["volumes"])
    assert mounts["/shared"]["persistentVolumeClaim"]["claimName"] == pvc()["metadata"]["name"]
    assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory"
    assert "emptyDir" in mounts["/cache"]


def test_skypilot_task_is_multi_node_spot_and_keeps_its_output_in_the_bucket():
    task = skypilot_task()
    assert task["num_nodes"] >= 2
    resources = task["resources"]
    assert re.fullmatch(r"[A-Za-z0-9-]+:[1-9][0-9]*", resources["accelerators"])
    assert resources["use_spot"] is True
    assert resources["job_recovery"]["strategy"] in {"FAILOVER", "EAGER_NEXT_REGION"}
    assert resources["image_id"] == "docker:" + worker_container(pytorchjob())["image"]
    bucket = task["file_mounts"]["/shared"]
    assert bucket["name"] and bucket["mode"] in {"MOUNT", "MOUNT_CACHED"}
    run = task["run"]
    assert run.split()[0] == ENTRYPOINT and run.split()[1] == IMAGE_CONFIG
    values = set_values(run.replace("\\\n", " ").split())
    assert values["training.output_dir"].startswith("/shared/")


def test_dockerfile_puts_the_project_where_the_manifests_run_it():
    text = (LAUNCH / "Dockerfile").read_text()
    base = re.search(r"^ARG CUDA_BASE=(\S+)", text, re.M)
    assert base and base.group(1).startswith("nvidia/cuda:") and "FROM ${CUDA_BASE}" in text
    assert f"WORKDIR {IMAGE_ROOT}" in text
    for copied in ("dist_seg", "launch", "configs"):
        assert re.search(rf"^COPY {copied} \./{copied}$", text, re.M), copied
    assert "pip install ." in text
    # What the manifests name inside the image exists in the repository, executable.
    for path in (ENTRYPOINT, IMAGE_CONFIG):
        local = REPO_ROOT / Path(path).relative_to(IMAGE_ROOT)
        assert local.is_file(), path
    assert os.access(REPO_ROOT / Path(ENTRYPOINT).relative_to(IMAGE_ROOT), os.X_OK)


def test_entrypoint_parses():
    result = subprocess.run(["bash", "-n", str(LAUNCH / "entrypoint.sh")], capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("platform", ["pytorchjob", "trainjob", "skypilot", "standalone"])
def test_entrypoint_turns_each_platforms_variables_into_torchrun_options(tmp_path, platform):
    """With a stand-in torchrun that prints what it was given: the PET_* options each platform ends up with."""
    fake = tmp_path / "bin" / "torchrun"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\nenv | grep -E "^PET_" | sort\necho "ARGS $*"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PET_", "SKYPILOT_", "MASTER_"))}
    env["PATH"] = f"{fake.parent}{os.pathsep}{env['PATH']}"
    env["PET_NPROC_PER_NODE"] = "2"  # no torch import for the GPU count
    env.update({
        "pytorchjob": {"PET_RDZV_ENDPOINT": "job-worker-0:23456", "PET_RDZV_BACKEND": "c10d",
                       "PET_NNODES": "1:2", "PET_MAX_RESTARTS": "3"},
        "trainjob": {"PET_NNODES": "2", "PET_NODE_RANK": "1", "PET_MASTER_ADDR": "job-node-0-0.job",
                     "PET_MASTER_PORT": "29500"},
        "skypilot": {"SKYPILOT_NODE_RANK": "1", "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.9\n",
                     "SKYPILOT_NUM_NODES": "2", "SKYPILOT_NUM_GPUS_PER_NODE": "4", "SKYPILOT_TASK_ID": "sky-1",
                     "MASTER_PORT": "29501"},
        "standalone": {},
    }[platform])
    if platform == "skypilot":
        del env["PET_NPROC_PER_NODE"]
    out = subprocess.run(["bash", str(LAUNCH / "entrypoint.sh"), "cfg.yaml", "--set", "a=1"], env=env,
                         capture_output=True, text=True, timeout=30, check=True).stdout
    pet = dict(line.split("=", 1) for line in out.splitlines() if line.startswith("PET_"))
    assert out.splitlines()[-1] == ("ARGS -m dist_seg.train cfg.yaml --set training.resume_from_checkpoint=auto "
                                    "--set a=1")
    expected = {
        "pytorchjob": {"PET_RDZV_ENDPOINT": "job-worker-0:23456", "PET_RDZV_BACKEND": "c10d",
                       "PET_NNODES": "1:2", "PET_MAX_RESTARTS": "3", "PET_NPROC_PER_NODE": "2"},
        "trainjob": {"PET_RDZV_ENDPOINT": "job-node-0-0.job:29500", "PET_RDZV_BACKEND": "c10d",
                     "PET_NNODES": "2", "PET_MAX_RESTARTS": "3"},
        "skypilot": {"PET_RDZV_ENDPOINT": "10.0.0.7:29501", "PET_RDZV_BACKEND": "c10d", "PET_NNODES": "2",
                     "PET_NPROC_PER_NODE": "4", "PET_LOCAL_ADDR": "10.0.0.9", "PET_RDZV_ID": "sky-1"},
        "standalone": {"PET_STANDALONE": "1", "PET_MAX_RESTARTS": "3"},
    }[platform]
    assert expected.items() <= pet.items(), pet
    if platform == "standalone":
        assert "PET_RDZV_ENDPOINT" not in pet
    assert pet["PET_SIGNALS_TO_HANDLE"].endswith("SIGUSR1")


# --------------------------------------------------------------------- the container commands, run on two local "nodes"


class Node:
    """One "node" (pod or VM): a launcher process and everything it starts, killed as a whole."""

    def __init__(self, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.cmd, self.log_path = cmd, log_path
        full_env = subprocess_env()
        full_env["PATH"] = os.pathsep.join([str(Path(PYTHON).parent), full_env.get("PATH", "")])
        full_env["GLOO_SOCKET_IFNAME"] = "lo"
        full_env.update(env)
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def describe(self) -> str:
        return f"{self.log_path.name}: {' '.join(self.cmd)}\n--- last output:\n{self.log[-4000:]}"

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def listens_on(self, port: int) -> bool:
        for process in self.processes():
            try:
                if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in process.net_connections("tcp")):
                    return True
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return False

    def kill(self) -> None:
        for process in reversed(self.processes()):
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        self.proc.wait(30)

    def wait(self) -> int:
        try:
            return self.proc.wait(LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {LAUNCH_TIMEOUT_S}s, killed: {self.describe()}")


@pytest.fixture
def nodes() -> list[Node]:
    """Every node a test starts; whatever still runs at the end (a failed test) is killed."""
    started: list[Node] = []
    yield started
    for node in started:
        if node.proc.poll() is None:
            node.kill()


def wait_until(condition: Callable[[], bool], what: str, nodes: list[Node]) -> None:
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not condition():
        for node in nodes:
            if node.proc.poll() is not None:
                pytest.fail(f"exited with {node.proc.returncode} before {what}: {node.describe()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 sequences x 6 frames of 48x64; Video_003 is the validation split."""
    root = tmp_path_factory.mktemp("launch_data") / "david"
    generate_dataset(root, sequences=4, frames=6, size=(48, 64), seed=7)
    return root


def tiny_config(path: Path, data_root: Path, overrides: dict[str, Any]) -> Path:
    """The stand-in for the image's configs/david.yaml; the manifest's --set values still apply over it."""
    raw = tiny_raw_config(data_root, path.parent / "unused_out", path.parent / "unused_cache")
    apply_overrides(raw, {**TINY, **overrides}.items())
    path.write_text(yaml.safe_dump(raw))
    return path


def localize(words: list[str], config: Path, root: Path, node: int) -> list[str]:
    """A command from a manifest with the image's and the volumes' paths mapped to this machine."""
    mapping = {IMAGE_CONFIG: str(config), IMAGE_ROOT: str(REPO_ROOT), "/shared": str(root / "shared"),
               "/tmp/dist_seg_cache": str(root / f"cache{node}"), "/cache": str(root / f"cache{node}")}
    # One pass, longest prefix first: a path already mapped is never mapped again.
    pattern = re.compile("|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)) + r"(?=/|\b|$)")
    return [pattern.sub(lambda m: mapping[m.group(0)], word) for word in words]


def shared_volume(root: Path, data_root: Path) -> Path:
    """The shared volume as the manifests expect it: the dataset at /shared/data/david."""
    (root / "shared" / "data").mkdir(parents=True)
    (root / "shared" / "data" / "david").symlink_to(data_root)
    return root / "shared"


def history(out: Path) -> list[dict[str, Any]]:
    return json.loads((out / "history.json").read_text())


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """The manifest's own env entries; the pod IP is 127.0.0.1 here."""
    env = {}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP", item
            env[item["name"]] = "127.0.0.1"
    return env


@pytest.mark.slow
@pytest.mark.distributed
def test_pytorchjob_two_pods_train_and_resume_after_losing_a_pod(tmp_path, data_root, nodes):
    """The PyTorchJob's container command under the operator's elastic PET_* variables; one pod is killed
    mid-epoch and started again (restartPolicy OnFailure); the job finishes from the last checkpoint."""
    job = pytorchjob()
    container, elastic = worker_container(job), job["spec"]["elasticPolicy"]
    gate = tmp_path / "gate"
    # Both ranks hold at their 2nd step of epoch 2, after epoch 1's checkpoint is written.
    config = tiny_config(tmp_path / "david.yaml", data_root, {
        "training.epochs": 2, "model.gate_dir": str(gate), "model.hold_at": STEPS_PER_EPOCH + 2,
        "model.hold_ranks": [0, 1], "model.type": "gated_model:GatedNet"})
    shared_volume(tmp_path, data_root)
    out = Path(localize([set_values(container["args"])["training.output_dir"]], config, tmp_path, 0)[0])
    port = free_port()  # stands for dist-seg-david-worker-0:23456
    operator_env = {
        "PYTHONUNBUFFERED": "0",
        "PET_RDZV_ENDPOINT": f"127.0.0.1:{port}",
        "PET_RDZV_BACKEND": elastic["rdzvBackend"],
        "PET_NNODES": f"{elastic['minReplicas']}:{elastic['maxReplicas']}",
        "PET_MAX_RESTARTS": str(elastic["maxRestarts"]),
        # No PET_NPROC_PER_NODE: the operator sets it only for jobs with a Master replica; the
        # entrypoint counts the visible GPUs instead (none here: 1 process).
        **container_env(container),
    }

    def start(node: int, attempt: int) -> Node:
        cmd = localize(container["command"] + container["args"], config, tmp_path, node)
        started = Node(cmd, operator_env, tmp_path / f"pod{node}_attempt{attempt}.log")
        nodes.append(started)
        return started

    pods = {0: start(0, 0), 1: start(1, 0)}
    wait_until(lambda: all((gate / f"held.rank{k}").exists() for k in (0, 1))
               and (out / "checkpoints" / "epoch_0001.pth").exists(), "both ranks to reach the gate in epoch 2",
               list(pods.values()))
    # Lose the pod that does not host the rendezvous (on a cluster: any pod but worker-0).
    host = [k for k, pod in pods.items() if pod.listens_on(port)]
    assert len(host) == 1, "exactly one node hosts the c10d rendezvous store"
    lost = 1 - host[0]
    pods[lost].kill()
    pods[lost] = start(lost, 1)  # Kubernetes restarts the pod's container
    (gate / "open").touch()
    codes = {k: pod.wait() for k, pod in pods.items()}
    assert codes == {0: 0, 1: 0}, "\n".join(pod.describe() for pod in nodes)

    logs = "".join(pod.log for pod in nodes)
    assert "dist_seg entrypoint: nnodes=1:2 nproc_per_node=1 rendezvous=c10d@127.0.0.1" in logs
    assert re.search(r"resumed from \S+epoch_0001\.pth: continuing at the start of epoch 2", logs), logs[-4000:]
    records = history(out)
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["world_size"] for r in records] == [2, 2]
    assert [c.path.name for c in list_checkpoints(out / "checkpoints")][-1] == "epoch_0002.pth"


@pytest.mark.slow
@pytest.mark.distributed
def test_trainjob_two_nodes_form_one_job_and_train(tmp_path, data_root, nodes):
    """The TrainJob's trainer command under the PET_* variables the torch-distributed runtime sets."""
    trainer = trainjob()["spec"]["trainer"]
    config = tiny_config(tmp_path / "david.yaml", data_root, {"training.epochs": 1})
    shared_volume(tmp_path, data_root)
    out = Path(localize([set_values(trainer["args"])["training.output_dir"]], config, tmp_path, 0)[0])
    port = free_port()  # stands for 29500 on dist-seg-david-node-0-0.dist-seg-david
    for node in (0, 1):
        runtime_env = {
            **{e["name"]: e["value"] for e in trainer.get("env", [])},
            "PET_NNODES": "2",  # the manifest's numNodes, as two local "nodes"
            "PET_NPROC_PER_NODE": "1",  # one CPU process instead of numProcPerNode GPUs
            "PET_NODE_RANK": str(node), "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port),
            # A pod's name resolves to its IP on the cluster; here, name the loopback address directly.
            "PET_LOCAL_ADDR": "127.0.0.1",
        }
        cmd = localize(trainer["command"] + trainer["args"], config, tmp_path, node)
        nodes.append(Node(cmd, runtime_env, tmp_path / f"node{node}.log"))
    codes = [node.wait() for node in nodes]
    assert codes == [0, 0], "\n".join(node.describe() for node in nodes)
    assert "rendezvous=c10d@127.0.0.1:" in nodes[0].log
    assert [(r["epoch"], r["world_size"]) for r in history(out)] == [(1, 2)]


@pytest.mark.slow
@pytest.mark.distributed
def test_skypilot_two_nodes_resume_from_the_checkpoint_in_the_bucket(tmp_path, data_root, nodes):
    """The task's run command under SKYPILOT_* variables, relaunched (after a preemption) on a bucket
    that already holds epoch 1: it continues at epoch 2, now on two nodes."""
    task = skypilot_task()
    config = tiny_config(tmp_path / "david.yaml", data_root, {"training.epochs": 2})
    shared_volume(tmp_path, data_root)
    run = task["run"]
    out = Path(localize([set_values(run.replace("\\\n", " ").split())["training.output_dir"]],
                        config, tmp_path, 0)[0])
    # The first launch, preempted after epoch 1: one process writes epoch 1 to the bucket.
    first = yaml.safe_load(config.read_text())
    apply_overrides(first, [("training.epochs", 1), ("training.output_dir", str(out)),
                            ("dataset.cache_dir", str(tmp_path / "cache_first"))])
    assert run_training(config_from_dict(first)).status == "completed"
    assert (out / "checkpoints" / "epoch_0001.pth").exists()

    port = free_port()
    for node in (0, 1):
        sky_env = {**{k: str(v) for k, v in task.get("envs", {}).items()},
                   "SKYPILOT_NODE_RANK": str(node), "SKYPILOT_NODE_IPS": "127.0.0.1\n127.0.0.1\n",
                   "SKYPILOT_NUM_NODES": "2",  # the task's num_nodes, as two local "nodes"
                   "SKYPILOT_NUM_GPUS_PER_NODE": "0", "SKYPILOT_TASK_ID": f"sky-test-{port}",
                   "MASTER_PORT": str(port),  # a free port instead of the task's 29500
                   "PET_NPROC_PER_NODE": "1"}  # one CPU process per "VM"
        # The run section is a shell script; SkyPilot runs it with bash on every node.
        script = " ".join(localize([run], config, tmp_path, node))
        nodes.append(Node(["bash", "-c", script], sky_env, tmp_path / f"vm{node}.log"))
    codes = [node.wait() for node in nodes]
    assert codes == [0, 0], "\n".join(node.describe() for node in nodes)
    logs = "".join(node.log for node in nodes)
    assert "rendezvous=c10d@127.0.0.1:" in logs
    assert re.search(r"resumed from \S+epoch_0001\.pth: continuing at the start of epoch 2", logs), logs[-4000:]
    assert [(r["epoch"], r["world_size"]) for r in history(out)] == [(1, 1), (2, 2)]
