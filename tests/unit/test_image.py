"""The container image (Containerfile, .ci/build-image, `make image`) agrees with the k8s manifests that
run it, without building it: the tag, the user, the entrypoint and the manifests' args, the writable
paths. `make image` builds and runs it (docs/image.md)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "k8s" / "base"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"ghcr.io/example/safeguard-streams:{VERSION}"
REPOSITORY = IMAGE.rsplit(":", 1)[0]


def instructions(stage: int = -1) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of one stage of the Containerfile: continuations joined, comments out."""
    lines, current = [], ""
    for raw in (ROOT / "Containerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip()
        if current.endswith("\\"):
            current = current[:-1]
            continue
        lines.append(current.strip())
        current = ""
    stages: list[list[tuple[str, str]]] = [[]]
    for line in lines:
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages[1:][stage]


def one(stage: list[tuple[str, str]], word: str) -> str:
    found = [rest for w, rest in stage if w == word]
    assert len(found) == 1, f"the final stage has {len(found)} {word} instructions"
    return found[0]


def app_pods() -> list[tuple[str, dict]]:
    """Every pod template in k8s/base whose containers run our image or our CLI."""
    pods = []
    for path in sorted(BASE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") not in {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}:
                continue
            spec = doc["spec"]["jobTemplate"]["spec"] if doc["kind"] == "CronJob" else doc["spec"]
            pod = spec["template"]["spec"]
            containers = pod.get("initContainers", []) + pod["containers"]
            if any(c["image"].startswith(REPOSITORY) for c in containers):
                pods.append((f"{doc['kind']}/{doc['metadata']['name']}", pod))
    return pods


def test_the_manifests_run_the_image_the_build_tags() -> None:
    env = {k: v for k, v in os.environ.items() if k != "IMAGE"}
    built = subprocess.run(["bash", str(ROOT / ".ci" / "build-image"), "--print-image"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert built == IMAGE
    if shutil.which("make"):
        made = subprocess.run(["make", "-s", "-C", str(ROOT), "--eval", "print-image: ; @echo $(IMAGE)", "print-image"],
                              env=env, capture_output=True, text=True, check=True).stdout.strip()
        assert made == IMAGE
    pods = app_pods()
    assert {name for name, _ in pods} >= {"StatefulSet/safeguard-consumer", "Deployment/safeguard-escalate"}
    for name, pod in pods:
        for container in pod.get("initContainers", []) + pod["containers"]:
            if container["image"].startswith(REPOSITORY):
                assert container["image"] == IMAGE, f"{name}: {container['image']} is not {IMAGE}"


def test_the_image_user_is_the_manifests_user() -> None:
    final = instructions()
    uid, gid = one(final, "USER").split(":")
    run = " ".join(rest for word, rest in final if word == "RUN")
    assert f"--uid {uid} " in run and f"--gid {gid} " in run  # a passwd entry for the numeric user
    assert int(uid) != 0
    for name, pod in app_pods():
        security = pod["securityContext"]
        assert (security["runAsUser"], security["runAsGroup"]) == (int(uid), int(gid)), name
        assert security["runAsNonRoot"] is True and security.get("fsGroup") == int(gid), name


def test_the_image_writes_only_to_tmp_which_every_pod_mounts() -> None:
    env = dict(item.split("=", 1) for item in shlex.split(" ".join(r for w, r in instructions() if w == "ENV")))
    assert env["HOME"] == "/tmp" and env["TMPDIR"] == "/tmp" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    for name, pod in app_pods():
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{name}: /tmp is not an emptyDir"


def test_the_entrypoint_is_safeguard_and_the_manifests_args_are_its_subcommands() -> None:
    """Kubernetes runs ENTRYPOINT + args: the image's entrypoint is safeguard itself (exec form, PID 1,
    so SIGTERM reaches it) and every pod's args parse as a safeguard command line."""
    from streams.cli.main import _parser

    final = instructions()
    assert json.loads(one(final, "ENTRYPOINT")) == ["safeguard"]
    assert json.loads(one(final, "CMD")) == ["--help"]
    parser = _parser()
    for name, pod in app_pods():
        container = pod["containers"][0]
        assert "command" not in container, f"{name}: a command replaces the image's entrypoint"
        args = parser.parse_args(container["args"])  # exits (SystemExit) on anything safeguard rejects
        if container["args"][:2] == ["prefilter", "train"]:  # the nightly retraining job, behind its gate
            assert args.from_labels and args.replace is not None, name
            continue
        assert args.func.__name__ in {"_cmd_run", "_cmd_escalate"}, name


def test_the_build_script_gives_the_containerfile_its_wheelhouse() -> None:
    build = [rest for word, rest in instructions(0) if word == "ARG" and rest.startswith("WHEELHOUSE=")]
    assert build, "the build stage takes ARG WHEELHOUSE"
    default = build[0].split("=", 1)[1]
    script = (ROOT / ".ci" / "build-image").read_text()
    assert f"--build-arg WHEELHOUSE={default}" in script and "WHEELHOUSE=$CACHE/wheelhouse" in script
    assert default == ".cache/image/wheelhouse"
    ignore = (ROOT / ".containerignore").read_text().splitlines()
    assert f"!{default}/" in ignore  # the build context lets it in
    assert ".cache/" in (ROOT / ".gitignore").read_text().splitlines()

