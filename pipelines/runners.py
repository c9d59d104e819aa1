"""Where kfp.local runs each task: in this environment (subprocess) or in the component image (container).

The container runner runs every task in images.conf's component image through kfp.local's DockerRunner over
the engine's Docker API (podman's, served for the run), as the image's non-root user, with nothing installed
at run time. Tasks reach MLflow over the network, as pods do: a server named by MLFLOW_TRACKING_URI, else a
private `mlflow server` over the state folder's store for the length of the run. Like kfp.local itself, the
runner shares the pipeline root and the state folder (bentos, the registry's lock) with the tasks by mounting
them at the same paths; the data source folder and the project (DVC) are mounted read-only.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cmunext.containers.engine import Engine

RUNNERS = ("subprocess", "container")
# what a task needs from this process's environment (credentials and endpoints, never baked into images)
PASSED_ENV_PREFIXES = ("MLFLOW_", "AWS_", "CMUNEXT_", "DVC_", "BENTOML_")


def _make_shared(path: Path) -> None:
    """Let the image's non-root user write where this process wrote (the tasks share these folders with it)."""
    path.mkdir(parents=True, exist_ok=True)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                os.chmod(p, os.stat(p).st_mode | 0o666 | (0o111 if name in dirs else 0))
    os.chmod(path, 0o777)


def _restore(saved: dict[str, str | None]) -> None:
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _run_docker_container(client, image: str, command: list[str], volumes: dict, **container_run_args) -> int:
    """kfp.local's run_docker_container, except that the container is removed only after its exit code is read.
    kfp 2.17 starts it with auto_remove=True, so a task that fails fast is often gone before `wait()` and kfp
    then reports exit code 0: a failed step would count as a success."""
    import docker
    from kfp.local.docker_task_handler import add_latest_tag_if_not_present

    image = add_latest_tag_if_not_present(image)
    if not any(image in (i.tags + i.attrs.get("RepoDigests", [])) for i in client.images.list()):
        raise RuntimeError(f"image {image} is not in the engine's store: build it with `make images`")
    print(f"Found image {image!r}\n")
    container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                      volumes=volumes, auto_remove=False, **container_run_args)
    try:
        for line in container.logs(stream=True):
            print(line.decode(errors="replace"), end="")
        return container.wait()["StatusCode"]
    finally:
        try:
            container.remove(force=True)
        except docker.errors.APIError:
            pass


@contextmanager
def reliable_exit_codes() -> Iterator[None]:
    """kfp.local's DockerRunner with _run_docker_container in place of its own, for the length of the block."""
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = _run_docker_container
    try:
        yield
    finally:
        docker_task_handler.run_docker_container = original


def _bento_store_for(isolated: bool) -> str:
    """The bento store's root, refused for ISOLATED steps unless every step can reach it."""
    from cmunext.serving import store

    bento_store = store.root(None)
    if isolated and not bento_store.startswith("s3://") and not os.environ.get(store.ENV):
        raise ValueError(f"isolated steps share no disk: set {store.ENV} (or registry.bento_store) to s3://... or "
                         "to a folder every step mounts")
    return bento_store


def _serve_mlflow_and_engine(stack: ExitStack, engine: Engine, state: Path) -> None:
    """Point MLFLOW_TRACKING_URI (unless a server is named already) and DOCKER_HOST at servers that live as long as
    STACK; both variables are restored when it closes."""
    from cmunext.containers.engine import docker_api
    from cmunext.tracking.local_server import local_mlflow_server

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "DOCKER_HOST")}
    stack.callback(_restore, saved)
    if not os.environ.get("MLFLOW_TRACKING_URI", "").startswith(("http://", "https://")):
        os.environ["MLFLOW_TRACKING_URI"] = stack.enter_context(local_mlflow_server(state))
    os.environ["DOCKER_HOST"] = stack.enter_context(docker_api(engine))


def _task_mounts(state: Path, pipeline_root: Path, project_root: Path, read_only: list[Path], isolated: bool,
                 bento_store: str) -> list:
    """The tasks' bind mounts, their folders made writable by the image's user; the project and READ_ONLY are
    mounted read-only."""
    import docker

    # kfp mounts the pipeline root (its artifact hand-off) itself; isolated tasks get nothing else of this
    # machine's but a folder bento store, if that is what the store is
    _make_shared(pipeline_root)
    if isolated:
        shared = [Path(bento_store)] if not bento_store.startswith("s3://") else []
    else:
        shared = [state]
    mounts = []
    for folder in shared:
        folder.mkdir(parents=True, exist_ok=True)
        _make_shared(folder)
        mounts.append(docker.types.Mount(str(folder), str(folder), type="bind"))
    for folder in {project_root.resolve(), *(p.resolve() for p in read_only)}:
        mounts.append(docker.types.Mount(str(folder), str(folder), type="bind", read_only=True))
    return mounts


def _task_environment(state: Path, isolated: bool, bento_store: str) -> dict[str, str]:
    """The environment every task gets: this process's PASSED_ENV_PREFIXES variables and the state to use."""
    from cmunext.serving import store

    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV_PREFIXES)}
    if isolated:
        env.pop("CMUNEXT_HOME", None)  # each container's own, empty, gone when it ends
        env.pop("BENTOML_HOME", None)
        env[store.ENV] = bento_store
    else:
        env["CMUNEXT_HOME"] = str(state)
    env.update(TQDM_DISABLE="1", PYTHONUNBUFFERED="1",
               # the project is mounted owned by another user: let git (DVC's revisions) read it
               GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="safe.directory", GIT_CONFIG_VALUE_0="*")
    env.pop("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", None)
    return env


@contextmanager
def kfp_runner(kind: str, state: Path, pipeline_root: Path, project_root: Path,
               read_only: list[Path] = (), isolated: bool = False) -> Iterator[object]:
    """A kfp.local runner of KIND; for containers, also the engine's API and, when needed, a local MLflow server.
    ISOLATED (containers only): every task keeps its state in its own container, as pods do; the tasks share
    only the pipeline root (the artifacts kfp hands from step to step), MLflow and the bento store."""
    from kfp import local

    if kind == "subprocess":
        yield local.SubprocessRunner(use_venv=False)
        return
    if kind != "container":
        raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, got {kind!r}")
    bento_store = _bento_store_for(isolated)

    from cmunext.containers.engine import find_engine
    from cmunext.containers.images import component_image

    engine = find_engine()
    engine.require_image(component_image(), "build it with `make images` (or set CMUNEXT_COMPONENT_IMAGE)")
    with ExitStack() as stack:
        _serve_mlflow_and_engine(stack, engine, state)
        pipeline_root.mkdir(parents=True, exist_ok=True)
        stack.enter_context(reliable_exit_codes())
        old_umask = os.umask(0)  # folders kfp.local makes for the tasks must be writable by the image's user
        stack.callback(os.umask, old_umask)
        mounts = _task_mounts(state, pipeline_root, project_root, read_only, isolated, bento_store)
        env = _task_environment(state, isolated, bento_store)
        yield local.DockerRunner(network_mode="host", environment=env, mounts=mounts)
