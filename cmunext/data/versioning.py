"""Dataset versions with DVC: a pointer file (data.dvc) committed in git, the files in a DVC remote.

- ``ensure_dvc``: ``dvc init`` where needed and a default local-directory remote in the state
  folder (offline, nothing to start); the DVC config is committed at once, because a revision of
  data.dvc can only be read back through a remote that was configured at or before it.
- ``version_data``: ``dvc add`` + ``dvc push`` + git commit of the pointer; returns the revision.
- ``set_remote``: make an S3 (or S3-protocol) bucket the default remote; credentials come only
  from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE), never from a file
  this module writes.
- ``materialize``: the exact files of a revision (or of the workspace) in a folder, cached by md5
  in the state folder so that asking again costs a local copy.

DVC runs in-process through ``dvc.repo.Repo`` and ``dvc.api.DVCFileSystem``; its console output is
captured, and its failures become ``VersioningError`` subclasses whose messages name the remote,
the endpoint or the revision. git runs as the ``git`` command.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from cmunext_serving.imageio import DataError

from ..storage_errors import classify

DEFAULT_REMOTE = "local"
S3_REMOTE = "s3"
WORKSPACE = "workspace"
_DVC_FILES = (".dvc/config", ".dvc/.gitignore", ".dvcignore")
_CREDENTIAL_KEYS = ("access_key_id", "secret_access_key", "session_token")


class VersioningError(DataError):
    """Dataset versioning failed; the message says what and where."""


class NotAGitRepoError(VersioningError):
    """The project folder is not the top of a git working tree."""


class RevisionError(VersioningError):
    """A revision is unknown, or holds no pointer file for the dataset."""


class RemoteError(VersioningError):
    """The DVC remote could not be used; `remote`, `url` and `endpoint` say which one."""

    def __init__(self, message: str, remote: str | None = None, url: str | None = None,
                 endpoint: str | None = None) -> None:
        super().__init__(message)
        self.remote, self.url, self.endpoint = remote, url, endpoint


class RemoteUnreachableError(RemoteError):
    """Nothing answers at the remote's endpoint (connection refused, DNS failure, timeout)."""


class RemoteAuthError(RemoteError):
    """The remote refused the credentials, or there were none."""


class RemoteDataError(RemoteError):
    """The remote answered but lacks the bucket or the files asked for."""


# ---- small helpers -----------------------------------------------------------------------------

def state_dir_for(project_root: str | Path) -> Path:
    """The state folder of a project: $CMUNEXT_HOME, else PROJECT/.cmunext (as cmunext.paths, but
    anchored at the project instead of the working directory)."""
    home = os.environ.get("CMUNEXT_HOME")
    root = Path(home) if home else Path(project_root) / ".cmunext"
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def _git(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise VersioningError("git is not installed (needed to version data)") from None
    if check and proc.returncode != 0:
        raise VersioningError(f"{root}: git {' '.join(args)} failed: {(proc.stderr or proc.stdout).strip()}")
    return proc


def _git_root(project_root: str | Path) -> Path:
    root = Path(project_root).resolve()
    if not root.is_dir():
        raise NotAGitRepoError(f"{root}: project folder not found")
    proc = _git(root, "rev-parse", "--show-toplevel", check=False)
    if proc.returncode != 0:
        raise NotAGitRepoError(f"{root}: not a git repository (run `git init` there first)")
    top = Path(proc.stdout.strip()).resolve()
    if top != root:
        raise NotAGitRepoError(f"{root}: not the top of its git repository ({top}); version data from there")
    return root


def _commit(root: Path, paths: list[str], message: str) -> str | None:
    """Commit exactly `paths` (other staged changes stay staged); None when nothing changed."""
    paths = [p for p in paths if (root / p).exists() or _git(root, "ls-files", "--", p).stdout.strip()]
    if not paths:
        return None
    _git(root, "add", "--", *paths)
    has_head = _git(root, "rev-parse", "--verify", "-q", "HEAD", check=False).returncode == 0
    if has_head and _git(root, "diff", "--cached", "--quiet", "HEAD", "--", *paths, check=False).returncode == 0:
        return None
    identity = []
    if not _git(root, "config", "user.email", check=False).stdout.strip():
        identity = ["-c", "user.name=cmunext", "-c", "user.email=cmunext@localhost"]
    _git(root, *identity, "commit", "-q", "-m", message, "--", *paths)
    return _git(root, "rev-parse", "HEAD").stdout.strip()


@contextlib.contextmanager
def _dvc_quiet():
    """Capture DVC's console logging (it installs its own stdout/stderr handlers on import)."""
    import dvc.logger  # noqa: F401 - DVC installs its handlers on import: import first, then replace them
    logger = logging.getLogger("dvc")
    saved = logger.handlers[:], logger.propagate, logger.level
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    # DVC's two progress-bar classes switch themselves off by their module logger's level
    bars = [logging.getLogger(n) for n in ("dvc.progress", "dvc_data.callbacks")]
    bar_levels = [b.level for b in bars]
    logger.handlers, logger.propagate = [_Keep(logging.WARNING)], False
    logger.setLevel(logging.WARNING)
    for b in bars:
        b.setLevel(logging.CRITICAL)
    try:
        yield records
    finally:
        logger.handlers, logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])
        for b, level in zip(bars, bar_levels):
            b.setLevel(level)


def _repo(root: Path, **kwargs):
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    from dvc.repo import Repo
    return Repo(str(root), **kwargs)


def _dvcfile(root: Path, data_dir: str) -> tuple[Path, str]:
    data = (root / data_dir).resolve()
    if data != root and root not in data.parents:
        raise VersioningError(f"{data}: the data folder must be inside the project {root}")
    rel = data.relative_to(root).as_posix()
    return data, rel + ".dvc"


def _read_pointer(text: str, where: str) -> dict:
    import yaml
    try:
        outs = (yaml.safe_load(text) or {}).get("outs") or []
        out = outs[0]
        return {"md5": out["md5"], "files": int(out.get("nfiles", 0)), "size": int(out.get("size", 0))}
    except (yaml.YAMLError, AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
        raise VersioningError(f"{where}: not a DVC pointer file ({type(exc).__name__}: {exc})") from None


# ---- remotes and error translation -------------------------------------------------------------

def _remote_info(root: Path) -> tuple[str, dict]:
    """(name, config) of the workspace's default remote."""
    with _dvc_quiet(), _repo(root) as repo:
        conf = repo.config
        name = conf["core"].get("remote")
        if not name or name not in conf["remote"]:
            raise RemoteError(f"{root}: no default DVC remote configured (run `cmunext data remote URL`)")
        return name, dict(conf["remote"][name])


def _describe(name: str | None, conf: dict) -> str:
    url = conf.get("url", "?")
    endpoint = conf.get("endpointurl")
    where = f"DVC remote {name!r} ({url}" + (f" at {endpoint}" if endpoint else "") + ")"
    return where


def _remote_error(exc: BaseException, logs, name: str | None, conf: dict, action: str,
                  hint: str = "") -> VersioningError:
    err = _remote_error_bare(exc, logs, name, conf, action)
    if hint:
        err.args = (f"{err.args[0]}; {hint}",)
    return err


def _remote_error_bare(exc: BaseException, logs, name: str | None, conf: dict, action: str) -> VersioningError:
    kind, detail = classify(exc, logs)
    where = _describe(name, conf)
    url, endpoint = conf.get("url"), conf.get("endpointurl")
    args = (name, url, endpoint)
    if kind == "unreachable":
        target = endpoint or "the default AWS S3 endpoint"
        return RemoteUnreachableError(f"cannot {action}: nothing answers at {target} for {where}: is the "
                                      f"server running and the endpoint right? ({detail})", *args)
    if kind == "auth":
        return RemoteAuthError(f"cannot {action}: {endpoint or 'S3'} refused the credentials for {where}; "
                               "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the "
                               f"environment ({detail})", *args)
    if kind == "nocreds":
        return RemoteAuthError(f"cannot {action}: no S3 credentials found for {where}; set "
                               "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment",
                               *args)
    if kind == "nobucket":
        return RemoteDataError(f"cannot {action}: the bucket of {where} does not exist; create it first "
                               f"({detail})", *args)
    if kind == "missing":
        return RemoteDataError(f"cannot {action}: files are missing from {where}; was this version pushed "
                               f"there? ({detail})", *args)
    return RemoteError(f"cannot {action} with {where}: {type(exc).__name__}: {detail or exc}", *args)


def _check_endpoint(name: str, conf: dict, action: str, timeout: float = 5.0) -> None:
    """Fail fast when nothing listens at an explicit endpoint: DVC would retry for many seconds
    before giving up with a generic error."""
    endpoint = conf.get("endpointurl")
    if not endpoint:
        return
    ep = urlparse(endpoint)
    port = ep.port or (443 if ep.scheme == "https" else 80)
    try:
        socket.create_connection((ep.hostname, port), timeout=timeout).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RemoteUnreachableError(f"cannot {action}: nothing answers at {endpoint} for {_describe(name, conf)} "
                                     f"({reason}): is the server running and the endpoint right?",
                                     name, conf.get("url"), endpoint) from None


def _clear_fs_caches() -> None:
    """fsspec caches filesystem instances (and with them resolved credentials) per process."""
    try:
        from s3fs import S3FileSystem
        S3FileSystem.clear_instance_cache()
    except ImportError:
        pass


# ---- public API --------------------------------------------------------------------------------

def ensure_dvc(project_root: str | Path) -> dict:
    """`dvc init` where needed, and a default local-directory remote under the state folder when
    no default remote is configured; commits the DVC config files that changed.

    Returns {"initialized": bool, "remote": name, "url": url, "revision": sha or None}.
    """
    root = _git_root(project_root)
    initialized = False
    with _dvc_quiet():
        if not (root / ".dvc").is_dir():
            from dvc.repo import Repo
            try:
                Repo.init(str(root)).close()
            except Exception as exc:  # noqa: BLE001 - DVC raises many kinds; name the folder
                raise VersioningError(f"{root}: dvc init failed: {exc}") from None
            initialized = True
        with _repo(root) as repo:
            name = repo.config["core"].get("remote")
            if not name:
                name = DEFAULT_REMOTE
                url = str(state_dir_for(root) / "dvc-remote")
                Path(url).mkdir(parents=True, exist_ok=True)
                with repo.config.edit("repo") as conf:
                    conf["remote"][name] = {"url": url}
                    conf["core"]["remote"] = name
            else:
                url = repo.config["remote"].get(name, {}).get("url")
    sha = _commit(root, list(_DVC_FILES), f"dvc: init with default remote {name!r}" if initialized
                  else f"dvc: default remote {name!r}")
    return {"initialized": initialized, "remote": name, "url": url, "revision": sha}


def set_remote(project_root: str | Path, url: str, endpoint_url: str | None = None, *,
               name: str | None = None, check: bool = True) -> dict:
    """Make URL (``s3://bucket/prefix`` or a local folder) the default DVC remote, written to the
    committed .dvc/config (url and endpoint only: no secrets). With `check`, the remote is probed
    first with the environment's credentials and nothing changes when that fails.

    Returns {"remote", "url", "endpoint_url", "revision" (the config commit, or None)}.
    """
    root = _git_root(project_root)
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise VersioningError(f"{url}: no bucket in the S3 URL (expected s3://bucket/prefix)")
        name = name or S3_REMOTE
    elif parsed.scheme in ("", "file") or (len(parsed.scheme) == 1 and os.name == "nt"):
        if endpoint_url:
            raise VersioningError(f"{url}: an endpoint URL applies only to s3:// remotes")
        url = str(Path(parsed.path if parsed.scheme == "file" else url).expanduser().resolve())
        name = name or DEFAULT_REMOTE
    else:
        raise VersioningError(f"{url}: unsupported remote (use s3://bucket/prefix or a local folder)")
    if endpoint_url:
        ep = urlparse(endpoint_url)
        if ep.scheme not in ("http", "https") or not ep.hostname:
            raise VersioningError(f"{endpoint_url}: the endpoint URL must be http(s)://host[:port]")
        if ep.username or ep.password:
            raise VersioningError("the endpoint URL must not carry credentials; put them in the environment "
                                  "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")

    ensure_dvc(root)
    conf = {"url": url}
    if endpoint_url:
        conf["endpointurl"] = endpoint_url
    if check:
        _probe(root, name, conf)
    with _dvc_quiet(), _repo(root) as repo:
        with repo.config.edit("repo") as c:
            old = c["remote"].get(name, {})
            stale = [k for k in _CREDENTIAL_KEYS if k in old]
            if stale:  # never keep secrets in the tracked config
                raise VersioningError(f"{root / '.dvc/config'}: remote {name!r} holds credentials "
                                      f"({', '.join(stale)}); remove them from the tracked config first")
            c["remote"][name] = conf
            c["core"]["remote"] = name
    if parsed.scheme != "s3":
        Path(url).mkdir(parents=True, exist_ok=True)
    sha = _commit(root, [".dvc/config"], f"dvc: default remote {name!r} -> {url}")
    return {"remote": name, "url": url, "endpoint_url": endpoint_url, "revision": sha}


def _probe(root: Path, name: str, conf: dict) -> None:
    """List the remote once, so a wrong endpoint or credentials fail before any config changes."""
    _check_endpoint(name, conf, "reach the remote")
    _clear_fs_caches()
    with _dvc_quiet() as logs:
        try:
            with _repo(root, config={"remote": {name: conf}}) as repo:
                odb = repo.cloud.get_remote_odb(name)
                if odb.fs.protocol in ("s3", "s3a"):
                    bucket = odb.path.split("/", 1)[0]
                    try:
                        odb.fs.fs.info(bucket)
                    except FileNotFoundError:
                        raise RemoteDataError(f"cannot use the remote: the bucket {bucket!r} of "
                                              f"{_describe(name, conf)} does not exist; create it first",
                                              name, conf.get("url"), conf.get("endpointurl")) from None
                odb.fs.exists(odb.path)
        except RemoteError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated below
            raise _remote_error(exc, logs, name, conf, "reach the remote") from None


def version_data(project_root: str | Path, data_dir: str = "data", message: str | None = None) -> dict:
    """`dvc add DATA`, `dvc push` to the default remote, then commit DATA.dvc (+ .gitignore and the
    DVC config) in git. Prints nothing.

    Returns {"revision": git sha of the commit holding this pointer, "md5": the pointer's md5
    (``<hex>.dir``), "files": n, "size": bytes, "remote": name, "committed": False when the data
    was already versioned (nothing new to commit)}.
    """
    root = _git_root(project_root)
    data, dvcfile = _dvcfile(root, data_dir)
    if not data.is_dir():
        raise VersioningError(f"{data}: data folder not found")
    if not any(data.iterdir()):
        raise VersioningError(f"{data}: data folder is empty")
    rel = data.relative_to(root).as_posix()
    if _git(root, "ls-files", "--", rel).stdout.strip():
        raise VersioningError(f"{data}: tracked by git; DVC must own it (run `git rm -r --cached {rel}`)")
    remote = ensure_dvc(root)["remote"]

    with _dvc_quiet() as logs:
        with _repo(root) as repo:
            try:
                repo.add(str(data))
            except Exception as exc:  # noqa: BLE001
                raise VersioningError(f"{data}: dvc add failed: {exc}") from None
            conf = dict(repo.config["remote"].get(remote, {}))
            hint = f"{dvcfile} is updated but not committed: run again once the remote works"
            try:
                _check_endpoint(remote, conf, f"push {rel}")
            except RemoteError as exc:
                raise type(exc)(f"{exc}; {hint}", exc.remote, exc.url, exc.endpoint) from None
            _clear_fs_caches()
            try:
                repo.push(targets=[str(root / dvcfile)])
            except Exception as exc:  # noqa: BLE001
                raise _remote_error(exc, logs, remote, conf, f"push {rel}", hint) from None

    pointer = _read_pointer((root / dvcfile).read_text(), str(root / dvcfile))
    gitignore = (data.parent / ".gitignore").relative_to(root).as_posix()
    msg = message or f"data: version {pointer['md5'][:8]} of {rel}/ ({pointer['files']} files)"
    sha = _commit(root, [dvcfile, gitignore, ".dvc/config"], msg)
    committed = sha is not None
    if sha is None:  # unchanged: the newest commit holding this pointer
        sha = _git(root, "log", "-1", "--format=%H", "--", dvcfile).stdout.strip()
    return {"revision": sha, "md5": pointer["md5"], "files": pointer["files"], "size": pointer["size"],
            "remote": remote, "committed": committed}


def _resolve_revision(root: Path, revision: str) -> str:
    proc = _git(root, "rev-parse", "--verify", "-q", f"{revision}^{{commit}}", check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        raise RevisionError(f"unknown revision {revision!r} in {root}")
    return proc.stdout.strip()


def revision_md5(project_root: str | Path, revision: str, data_dir: str = "data") -> str:
    """The dataset md5 that data.dvc records at a git revision (cheap: reads only the pointer)."""
    root = _git_root(project_root)
    sha = _resolve_revision(root, revision)
    _, pointer = _dvcfile(root, data_dir)
    proc = _git(root, "show", f"{sha}:{pointer}", check=False)
    if proc.returncode != 0:
        raise RevisionError(f"revision {revision!r} ({sha[:12]}) of {root} has no {pointer}")
    return _read_pointer(proc.stdout, f"{pointer}@{revision}")["md5"]


def dataset_md5(path: str | Path, project_root: str | Path | None = None) -> dict:
    """The md5 DVC would record for a folder (``<hex>.dir``) and its file count, without adding it.
    Uses the project's .dvcignore and hash cache when `project_root` is given."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs import LocalFileSystem, MemoryFileSystem

    path = Path(path).resolve()
    if not path.is_dir():
        raise VersioningError(f"{path}: data folder not found")
    with _dvc_quiet():
        if project_root is not None:  # the repo's hash state makes hashing the same files again cheap
            with _repo(Path(project_root).resolve()) as repo:
                _, meta, obj = build(repo.cache.local, str(path), repo.fs, "md5", dry_run=True,
                                     ignore=repo.dvcignore)
        else:
            odb = HashFileDB(MemoryFileSystem(), "/staging")
            _, meta, obj = build(odb, str(path), LocalFileSystem(), "md5", dry_run=True)
    return {"md5": obj.hash_info.value, "files": int(meta.nfiles or 0), "size": int(meta.size or 0)}


def _copy_tree(src: Path, dest: Path) -> None:
    """Copy SRC to DEST through a temporary sibling, so DEST is either complete or absent."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_rev(root: Path, sha: str, revision: str, rel: str, dest: Path, name: str, conf: dict,
              override: bool) -> None:
    from dvc.api import DVCFileSystem

    action = f"read {rel} at revision {revision!r}"
    _check_endpoint(name, conf, action)
    _clear_fs_caches()
    config = {"core": {"remote": name}, "remote": {name: conf}} if override else None
    with _dvc_quiet() as logs:
        try:
            DVCFileSystem(str(root), rev=sha, config=config).get(rel, str(dest), recursive=True)
        except Exception as exc:  # noqa: BLE001
            shutil.rmtree(dest, ignore_errors=True)
            raise _remote_error(exc, logs, name, conf, action) from None


def _remote_at(root: Path, sha: str) -> tuple[str, dict] | None:
    """(name, config) of the default remote as configured at a revision, if any."""
    try:
        with _dvc_quiet(), _repo(root, rev=sha) as repo:
            name = repo.config["core"].get("remote")
            return (name, dict(repo.config["remote"][name])) if name in repo.config["remote"] else None
    except Exception:  # noqa: BLE001 - an unreadable old config only means: no second place to look
        return None


def _fetch(root: Path, sha: str, revision: str, rel: str, md5: str, cache: Path) -> None:
    """Fill CACHE with the files of REL at SHA: through the workspace's default remote (data may
    have moved since), else through the remote that the revision itself names."""
    name, conf = _remote_info(root)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.fetch-", dir=cache.parent))
    try:
        try:
            _read_rev(root, sha, revision, rel, tmp / "data", name, conf, override=True)
        except RemoteDataError as first:
            old = _remote_at(root, sha)
            if old is None or old == (name, conf):
                raise
            try:
                _read_rev(root, sha, revision, rel, tmp / "data", *old, override=False)
            except RemoteError:
                raise first from None
            name, conf = old
        got = dataset_md5(tmp / "data")
        if got["md5"] != md5:
            raise RemoteDataError(f"{rel} at revision {revision!r}: read md5 {got['md5']} from "
                                  f"{_describe(name, conf)}, expected {md5}; the remote copy is incomplete",
                                  name, conf.get("url"), conf.get("endpointurl"))
        if cache.exists():
            shutil.rmtree(cache)
        (tmp / "data").rename(cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def materialize(project_root: str | Path, revision: str, dest: str | Path, data_dir: str = "data", *,
                overwrite: bool = False) -> dict:
    """Write exactly the dataset at REVISION (a git revision of DATA.dvc, or "workspace" for the
    folder as it is) into DEST. Revisions are cached by md5 in the state folder, so asking again
    needs no remote; a DEST that already holds that md5 is left as it is.

    Returns {"revision": full sha or "workspace", "md5": "<hex>.dir", "files": n, "dest": path,
    "cached": True when no remote was read}. DEST must be absent, empty, already hold the same
    data, or `overwrite` must be set.
    """
    root = _git_root(project_root)
    data, dvcfile = _dvcfile(root, data_dir)
    rel = data.relative_to(root).as_posix()
    dest = Path(dest).resolve()
    if dest == data or data in dest.parents or dest in data.parents:
        raise VersioningError(f"{dest}: the destination must not overlap the data folder {data}")

    if revision == WORKSPACE:
        info = dataset_md5(data, root)
        sha, source, cached = WORKSPACE, data, True
    else:
        sha = _resolve_revision(root, revision)
        proc = _git(root, "show", f"{sha}:{dvcfile}", check=False)
        if proc.returncode != 0:
            raise RevisionError(f"revision {revision!r} ({sha[:12]}) of {root} has no {dvcfile}")
        info = _read_pointer(proc.stdout, f"{dvcfile} at {revision!r}")
        source = state_dir_for(root) / "datasets" / info["md5"].removesuffix(".dir")
        cached = source.is_dir()
        if not cached:
            _fetch(root, sha, revision, rel, info["md5"], source)

    if dest.exists() and any(dest.iterdir()):
        if dataset_md5(dest, root)["md5"] == info["md5"]:
            return {"revision": sha, "md5": info["md5"], "files": info["files"], "dest": str(dest), "cached": cached}
        if not overwrite:
            raise VersioningError(f"{dest}: already holds different data; choose an empty folder or overwrite")
    _copy_tree(source, dest)
    return {"revision": sha, "md5": info["md5"], "files": info["files"], "dest": str(dest), "cached": cached}
