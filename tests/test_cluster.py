"""The platform paths against real components: a ``ray start --head`` cluster that takes
``ray job submit`` with token authentication, and a real ``mlflow server`` that a sweep
submitted as a Ray job logs its parent run, nested trial runs and ablation table to.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.dataset as pds
import pytest
import yaml
from mlflow.tracking import MlflowClient
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.job_submission import JobStatus, JobSubmissionClient

from orchestrate.config import load_config

if TYPE_CHECKING:  # registered as plugins in conftest.py
    from mlflow_server import MlflowServer
    from ray_head import RayHead

INFRA = Path(__file__).resolve().parents[1] / "infra"
SUBMIT_TIMEOUT_S = 120.0  # a job that only imports orchestrate
PIPELINE_TIMEOUT_S = 1200.0  # synth + ingest (+ sweep) of a tiny corpus on 2 shared cores
EMODAL_EXTRACTORS = "tasks.emodal.variants=[audio, video]"  # ingests emodal_audio, emodal_face


def orchestrate_command(*args: str | Path) -> str:
    """A shell command line running orchestrate with the head's ``python`` (first on its PATH)."""
    return shlex.join(["python", "-m", "orchestrate", *map(str, args)])


def submit(head: RayHead, submission_id: str, commands: list[str], timeout_s: float) -> str:
    """``ray job submit`` the commands (joined by &&), assert the job SUCCEEDED, return its logs."""
    if len(commands) > 1:
        entrypoint = ["sh", "-c", " && ".join(commands)]
    else:
        entrypoint = shlex.split(commands[0])
    result = head.job_submit(entrypoint, submission_id, timeout_s)
    client = JobSubmissionClient(head.dashboard_url, headers=head.auth_headers)
    status = client.get_job_status(submission_id)
    logs = client.get_job_logs(submission_id)
    assert result.returncode == 0 and status == JobStatus.SUCCEEDED, (
        f"job {submission_id}: `ray job submit` exited {result.returncode}, status {status}\n"
        f"--- job logs (tail)\n{logs[-6000:]}\n--- ray job submit stderr (tail)\n"
        f"{result.stderr[-3000:]}"
    )
    return logs


def ingest_command(corpus: Path, workspace: Path) -> str:
    """``orchestrate ingest`` of the corpus with the EMODal extractors into the workspace store."""
    return orchestrate_command(
        "ingest", "--workspace", workspace, f"dataset.root={corpus}", EMODAL_EXTRACTORS, "--quiet"
    )


def sweep_command(corpus: Path, workspace: Path, tracking_uri: str) -> str:
    """The smallest real nested sweep: EMODal audio-only, one trial a study, one epoch."""
    return orchestrate_command(
        "sweep", "--workspace", workspace, "--tracking-uri", tracking_uri,
        f"dataset.root={corpus}", EMODAL_EXTRACTORS, "tasks={emodal: {variants: [audio]}}",
        "sweep.num_samples=1", "sweep.max_epochs=1", "sweep.folds=3",
        "sweep.protocols=[actor-kfold]", "sweep.baseline=[]", "--quiet",
    )  # fmt: skip


def extractor_rows(workspace: Path, extractor: str) -> list[dict]:
    """Every feature row one extractor wrote into the workspace's (default, local) store."""
    store = Path(load_config(None, [f"workspace={workspace}"]).store_uri)
    directories = sorted(store.glob(f"features/{extractor}/v*"))
    assert directories, f"no features/{extractor}/v* under {store}"
    assert len(directories) == 1, f"one parameter set expected, found {directories}"
    return pds.dataset(directories[0], format="parquet").to_table().to_pylist()


def test_submitter_without_the_token_is_refused(ray_head: RayHead) -> None:
    """The head enforces token auth: a client whose RAY_AUTH_MODE is unset cannot submit."""
    entrypoint = ["python", "-c", "print('never runs')"]
    result = ray_head.job_submit(entrypoint, "no-token", SUBMIT_TIMEOUT_S, auth=False)
    assert result.returncode != 0
    refused = ("Unauthorized" in result.stderr) or ("Authentication required" in result.stderr)
    assert refused, result.stderr
    client = JobSubmissionClient(ray_head.dashboard_url, headers=ray_head.auth_headers)
    assert "no-token" not in {job.submission_id for job in client.list_jobs()}


def test_job_runs_orchestrate_and_joins_the_cluster_with_the_token(ray_head: RayHead) -> None:
    """The job's driver finds orchestrate (and every package a sweep imports) on the head's
    Python outside the checkout, and its ray.init() joins the head through RAY_ADDRESS with
    the token it inherited from the head, as orchestrate's own drivers do."""
    join = (
        "import orchestrate.cli, tasks, search_spaces, ray; ray.init(); "
        "print('cluster CPUs', int(ray.cluster_resources()['CPU']))"
    )
    commands = [orchestrate_command("--help"), shlex.join(["python", "-c", join])]
    logs = submit(ray_head, "orchestrate-on-the-head", commands, SUBMIT_TIMEOUT_S)
    for command in ("synth", "ingest", "sweep", "run", "demo"):
        assert command in logs, logs
    assert "cluster CPUs 2" in logs, logs


@pytest.mark.slow
def test_ingest_job_writes_feature_rows(ray_head: RayHead, tmp_path: Path) -> None:
    """synth + ingest submitted as one Ray job: one ok row per clip per extractor in the store."""
    corpus, workspace = tmp_path / "corpus", tmp_path / "ws"
    submit(
        ray_head,
        "ingest-emodal",
        [
            orchestrate_command("synth", "--out", corpus, "--actors", 1, "--clips-per-emotion", 1),
            ingest_command(corpus, workspace),
        ],
        PIPELINE_TIMEOUT_S,
    )
    clips = {path.stem for path in corpus.rglob("*.mp4")}
    assert clips, f"synth wrote no clips into {corpus}"

    audio = extractor_rows(workspace, "emodal_audio")
    assert {row["clip_id"] for row in audio} == clips
    assert len(audio) == len(clips)
    assert [row["reason"] for row in audio if row["status"] != "ok"] == []
    for row in audio:
        features = np.asarray(row["features"], dtype=np.float32)
        assert list(row["features__shape"]) == [68] and features.shape == (68,)
        assert np.isfinite(features).all() and np.ptp(features) > 0
        assert row["actor"] and row["label"] and row["content_hash"]

    faces = extractor_rows(workspace, "emodal_face")
    assert {row["clip_id"] for row in faces} == clips
    assert [row["reason"] for row in faces if row["status"] != "ok"] == []
    for row in faces:
        assert list(row["face__shape"]) == [128, 128]


@pytest.mark.slow
def test_sweep_job_logs_to_mlflow_server(
    ray_head: RayHead, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    """A sweep submitted as a Ray job logs a parent run, nested trials and the ablation table."""
    corpus, workspace = tmp_path / "corpus", tmp_path / "ws"
    submit(
        ray_head,
        "sweep-emodal",
        [
            orchestrate_command("synth", "--out", corpus, "--actors", 3, "--clips-per-emotion", 1),
            ingest_command(corpus, workspace),
            sweep_command(corpus, workspace, mlflow_server.uri),
        ],
        PIPELINE_TIMEOUT_S,
    )

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("orchestrate")
    assert experiment is not None, "no 'orchestrate' experiment on the server"
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if run.data.tags.get("kind") == "sweep"]
    assert [run.data.tags.get("task") for run in parents] == ["emodal"], runs
    parent = parents[0]
    trials = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert trials, f"no nested trial run under {parent.info.run_id}"
    assert all(run.data.tags.get("variant") == "audio" for run in trials)
    assert all(run.data.metrics for run in trials), "a trial run logged no metrics"
    kinds = sorted({run.data.tags.get("kind") for run in trials})
    assert kinds == ["final", "trial"], kinds  # validation-only trials, tested final models

    # Artifacts went through the server's proxy into its --artifacts-destination.
    ablation = [item.path for item in client.list_artifacts(parent.info.run_id, "ablation")]
    assert "ablation/emodal.json" in ablation, ablation
    table_file = client.download_artifacts(
        parent.info.run_id, "ablation/emodal.json", str(tmp_path)
    )
    assert "audio" in Path(table_file).read_text()
    assert any(mlflow_server.artifacts.rglob("emodal.json"))


# -- the deployment files in infra/ -----------------------------------------------------------


def auth_env(container: dict) -> tuple[str | None, str | None, str | None]:
    """A container's RAY_AUTH_MODE and the (secret, key) its RAY_AUTH_TOKEN comes from."""
    env = {item["name"]: item for item in container.get("env", [])}
    mode = env.get("RAY_AUTH_MODE", {}).get("value")
    secret = env.get("RAY_AUTH_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {})
    return mode, secret.get("name"), secret.get("key")


def test_kuberay_rayjob_runs_orchestrate_with_consistent_token_auth(tmp_path: Path) -> None:
    """The RayJob's run.yaml is a valid orchestrate config; head, workers and submitter
    share RAY_AUTH_MODE=token and one token secret; the config and workspace are mounted."""
    documents = list(yaml.safe_load_all((INFRA / "kuberay-rayjob.yaml").read_text()))
    by_kind = {document["kind"]: document for document in documents if document}
    job = by_kind["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    assert job["spec"]["entrypoint"].startswith("orchestrate run --config /config/run.yaml")

    run_file = tmp_path / "run.yaml"
    run_file.write_text(by_kind["ConfigMap"]["data"]["run.yaml"])
    config = load_config(run_file)  # raises ConfigError naming the field on a bad key/value
    assert config.store_uri.startswith("s3://") and config.dataset.root.startswith("s3://")
    assert config.tracking_uri.startswith("http://")

    cluster = job["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    workers = [group["template"]["spec"] for group in cluster["workerGroupSpecs"]]
    submitter = job["spec"]["submitterPodTemplate"]["spec"]
    auth = {auth_env(pod["containers"][0]) for pod in [head, *workers, submitter]}
    assert auth == {("token", "orchestrate-ray-auth", "auth_token")}

    def mounts(pod: dict) -> dict[str, str]:
        return {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}

    volumes = {volume["name"]: volume for volume in head["volumes"]}
    assert volumes[mounts(head)["/config"]]["configMap"]["name"] == "orchestrate-run-config"
    # Ray Tune's storage (<workspace>/sweeps) must be the same volume on every node.
    workspace_root = "/" + config.workspace_path.parts[1]
    for pod in [head, *workers]:
        claim = {v["name"]: v for v in pod["volumes"]}[mounts(pod)[workspace_root]]
        assert claim["persistentVolumeClaim"]["claimName"] == "orchestrate-workspace"
    pvc = [d for d in documents if d["kind"] == "PersistentVolumeClaim"]
    assert "ReadWriteMany" in {m for d in pvc for m in d["spec"]["accessModes"]}


def test_ray_up_cluster_config_is_valid_with_token_auth() -> None:
    """`ray up`'s own schema accepts the config; every container runs with RAY_AUTH_MODE=token
    and gets the token file at Ray's default path."""
    raw = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    assert any(":/workspace" in option for option in config["docker"]["run_options"])


def test_dockerfile_copies_the_packages_pyproject_installs() -> None:
    """The image copies every source tree pyproject.toml packages, and installs from its pins."""
    dockerfile = (INFRA / "Dockerfile").read_text()
    root = INFRA.parent
    copied = [
        line.split()[1]
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "/opt/orchestrate/" in line
    ]
    for source in copied:
        assert (root / source).exists(), f"Dockerfile copies {source}, not in the repository"
    for package in ("orchestrate", "tasks", "search_spaces"):
        assert package in copied
    assert "['project']['dependencies']" in dockerfile
    assert dockerfile.splitlines()[0].startswith("#") and "FROM ${BASE_IMAGE}" in dockerfile


def test_manifests_agree_with_the_code_and_the_pins() -> None:
    """Entrypoints name real commands and flags; Ray version and image tag match the pin;
    the RayCluster is the RayJob's cluster; the head advertises no CPUs; autoscaling is on."""
    import re
    import shlex

    from orchestrate.cli import build_parser

    pin = re.search(r"ray\[[^\]]*\]==([\d.]+)", (INFRA.parent / "pyproject.toml").read_text())[1]
    documents = list(yaml.safe_load_all((INFRA / "kuberay-rayjob.yaml").read_text()))
    job = next(d for d in documents if d and d["kind"] == "RayJob")
    (cluster,) = [
        d for d in yaml.safe_load_all((INFRA / "kuberay-raycluster.yaml").read_text()) if d
    ]
    assert cluster["kind"] == "RayCluster" and cluster["spec"] == job["spec"]["rayClusterSpec"]
    spec = cluster["spec"]
    assert spec["rayVersion"] == pin and spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    assert groups["gpu"]["minReplicas"] == 0 and groups["gpu"]["maxReplicas"] >= 1
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == 1
    for field in ("shutdownAfterJobFinishes", "ttlSecondsAfterFinished", "backoffLimit",
                  "activeDeadlineSeconds", "runtimeEnvYAML"):  # fmt: skip
        assert field in job["spec"], field
    assert isinstance(yaml.safe_load(job["spec"]["runtimeEnvYAML"]), dict)
    assert job["spec"]["entrypointNumCpus"] >= 1  # the driver needs a worker's CPU

    # The entrypoint parses with orchestrate's own CLI (real command, real flags).
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "orchestrate"
    args, rest = build_parser().parse_known_args(argv[1:])
    assert args.command.__name__ == "cmd_run" and not rest

    # The image: the official Ray image of the pinned version, Python 3.11.
    dockerfile = (INFRA / "Dockerfile").read_text()
    base = re.search(r"ARG BASE_IMAGE=(\S+)", dockerfile)[1]
    assert base == f"rayproject/ray:{pin}-py311"
    assert f"rayproject/ray:{pin}-py311-gpu" in dockerfile
    cm = next(d for d in documents if d and d["kind"] == "ConfigMap")
    example = (INFRA / "run-s3-mlflow.yaml").read_text()
    assert yaml.safe_load(example) == yaml.safe_load(cm["data"]["run.yaml"])
    config = load_config(INFRA / "run-s3-mlflow.yaml")
    assert config.store_uri.startswith("s3://") and config.tracking_uri.startswith("http")
