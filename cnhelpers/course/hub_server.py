"""A small Hugging Face Hub-protocol server on loopback: the tests' Hub, and notebook 09's stand-in for huggingface.co.

It serves repositories from a folder on disk to the *real* ``huggingface_hub`` client (point the client at it
with ``HF_ENDPOINT=http://127.0.0.1:PORT``), so the course's loading code is tested over HTTP instead of by
patching the client. Standard library only.

Layout of the served folder (``tests/hub_repos.py`` builds one)::

    ROOT/models/<org>/<name>/refs.json          {"branches": {"main": SHA, ...}, "tags": {...},
                                                  "commits": [{"id": SHA, "title": ..., "date": ...}, ...]}
    ROOT/models/<org>/<name>/<SHA>/<files...>    the tree of commit SHA (40 hex digits)
    ROOT/datasets/<org>/<name>/...               the same for data sets

A revision is a branch or tag of ``refs.json`` or a full commit sha. What the client uses, as huggingface_hub 2.4
calls it (and as the real Hub answers):

* ``GET /api/{models|datasets}/{repo}[/revision/{rev}]``: repo info (``sha``, ``siblings``; ``?blobs=true`` adds
  sizes, blob ids and LFS info).
* ``GET /api/{type}s/{repo}/tree/{rev}[/{path}]?recursive=&expand=``: the tree listing (``type``, ``oid``, ``size``,
  ``path``, ``lfs`` for LFS files).
* ``POST /api/{type}s/{repo}/paths-info/{rev}``, ``GET /api/{type}s/{repo}/refs``: as on the Hub.
* ``HEAD``/``GET /[datasets/]{repo}/resolve/{rev}/{path}``: a regular (git) file answers 200 with ``ETag`` = its git
  blob sha1, ``X-Repo-Commit``, ``Content-Length``; an LFS file (weights, archives, images) answers
  ``302 Found`` to a stand-in CDN (``/_lfs/<sha256>`` on *another host name* of this same server: ``localhost``
  when the client came to ``127.0.0.1`` and the other way round) with ``X-Linked-Etag`` = sha256,
  ``X-Linked-Size`` and ``X-Repo-Commit``, exactly like the Hub's LFS redirect. The client does not follow a
  redirect to another host for its HEAD, takes the metadata from the 302 and GETs the CDN address.
  ``lfs_redirect=False`` answers LFS files directly with 200 instead. ``Range: bytes=N-`` gets 206.
* Errors carry the ``X-Error-Code`` header that ``hf_raise_for_status`` reads: ``RepoNotFound`` (401, as the Hub
  answers an anonymous client), ``RevisionNotFound`` (404), ``EntryNotFound`` (404, with ``X-Repo-Commit`` so the
  client caches the absence).
* ``GET /api/agent-harnesses`` (the client asks once per HF_HOME): an empty registry.
* Gated repositories (``refs.json`` has ``"gated": {"tokens": [...]}``): the repo info says ``"gated": "manual"``
  and lists the files, as the Hub's does for anyone; a file's ``resolve`` (HEAD or GET) answers ``401`` with
  ``X-Error-Code: GatedRepo`` without a token and ``403`` with the same code for a token not on the list, as the
  Hub answers an anonymous user and a user who has not accepted the licence; ``hf_raise_for_status`` turns both
  into ``GatedRepoError``. (The CDN address a granted ``resolve`` redirects to is not checked: the Hub's is a signed
  URL, and the client sends no token to another host.)

Uploads (what ``create_repo`` and ``upload_folder`` of huggingface_hub 2.4 send; a write needs
``Authorization: Bearer <token>``, any token, and the token's user is ``user_for_token``'s):

* ``GET /api/whoami-v2``: the token's user (401 without a token). ``POST /api/validate-yaml``: no errors.
* ``POST /api/repos/create`` ``{"name", "organization", "type"}``: a new repository whose ``main`` has one commit
  holding ``.gitattributes``; 409 if it exists (``exist_ok=True`` passes that by).
* ``POST /api/{type}s/{repo}/preupload/{rev}``: ``uploadMode`` ``lfs`` for the paths the Hub keeps in LFS
  (:data:`LFS_SUFFIXES`, 10 MB and up), ``regular`` otherwise.
* ``POST /{repo}.git/info/lfs/objects/batch`` (basic transfer): an upload address ``PUT /_lfs_upload/<sha256>``
  (sha256 checked) and a verify address ``POST /_lfs_verify/<sha256>``; no actions for an object already held.
  huggingface_hub uses this LFS path only when ``hf_xet`` is not installed or ``HF_HUB_DISABLE_XET=1``: with
  ``hf_xet`` (the default) LFS files go to Xet storage, which this server does not implement (tests set
  ``HF_HUB_DISABLE_XET=1``).
* ``POST /api/{type}s/{repo}/commit/{rev}`` (NDJSON: ``header``, ``file`` base64, ``lfsFile`` by sha256,
  ``deletedFile``, ``deletedFolder``): a new commit (the parent's tree plus the changes, in its own folder), the
  branch moved to it; answers ``commitUrl``, ``commitOid``. The repository then downloads like the built ones.

Test controls (Python API on the server object, or HTTP for a server in another process):

* ``server.log`` / ``GET /_test/log``: every request (method, path, kind, repo, revision, file, status, bytes).
  ``server.fetched_files(repo_id)`` lists the files whose *content* was sent (GET of resolve or of the CDN).
  ``server.clear_log()`` / ``DELETE /_test/log``.
* ``server.add_fault(file, after_bytes=N, times=K, repo_id=None)`` / ``POST /_test/faults`` with that JSON: the next
  K content GETs of that file send the headers (full ``Content-Length``) and the body up to byte offset N of the
  file, then the connection is closed, as by a server killed mid-file. ``times=None``: until cleared.
  ``status=503`` instead of ``after_bytes`` answers that status instead. The upload endpoints take faults by
  name: ``file="<commit>"``, ``"<preupload>"``, ``"<lfs-batch>"``, ``"<lfs-upload>"``, ``"<create>"`` with
  ``status=500`` answer that status (``repo_id`` narrows it). ``server.clear_faults()`` /
  ``DELETE /_test/faults``.

Run it::

    python -m cnhelpers.course.hub_server --root DIR --port 0 --port-file F   # writes the chosen port to F

or from Python: ``server, url = start_server(root)``; ``server.stop()``. :func:`local_hub` is the notebooks' use:
an empty Hub, started once per process, with the environment that points ``huggingface_hub`` at it.
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
# Files the Hub stores in LFS: the default .gitattributes of a new Hub repository (models and data sets), plus
# anything over 10 MB.
LFS_SUFFIXES = (
    ".7z", ".arrow", ".bin", ".bz2", ".ckpt", ".ftz", ".gz", ".h5", ".joblib", ".mlmodel", ".model", ".msgpack",
    ".npy", ".npz", ".onnx", ".onnx_data", ".ot", ".parquet", ".pb", ".pickle", ".pkl", ".pt", ".pth", ".rar",
    ".safetensors", ".tar", ".tflite", ".tgz", ".wasm", ".xz", ".zip", ".zst",
    ".png", ".jpg", ".jpeg", ".webp", ".gif", ".mp3", ".wav", ".flac", ".mp4",
)
LFS_MIN_SIZE = 10 * 1024 * 1024
CHUNK = 64 * 1024
EMPTY_AGENT_REGISTRY = {"standardEnvVars": [], "harnesses": {}}


def is_lfs_path(path: str, size: int) -> bool:
    return path.lower().endswith(LFS_SUFFIXES) or size >= LFS_MIN_SIZE


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class HubError(Exception):
    """An error answer, in the shape hf_raise_for_status turns into the matching huggingface_hub error."""

    def __init__(self, status: int, code: str | None, message: str, commit: str | None = None,
                 body: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit
        self.body = body or {}  # more fields of the JSON answer (the Hub's 409 on create names the repo's url)


class FileInfo:
    __slots__ = ("blob_id", "disk", "lfs", "path", "sha256", "size")

    def __init__(self, path: str, disk: Path, size: int, blob_id: str, sha256: str, lfs: bool):
        self.path, self.disk, self.size, self.blob_id, self.sha256, self.lfs = path, disk, size, blob_id, sha256, lfs

    @property
    def etag(self) -> str:
        """What the Hub sends as the file's ETag: sha256 for LFS files, the git blob sha1 otherwise."""
        return self.sha256 if self.lfs else self.blob_id

    def tree_entry(self) -> dict:
        entry = {"type": "file", "oid": self.blob_id, "size": self.size, "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size,
                            "pointerSize": len(lfs_pointer(self.sha256, self.size))}
        return entry


class Repo:
    """One served repository: refs.json and one folder per commit."""

    def __init__(self, folder: Path, repo_type: str, repo_id: str, hashes: HashCache):
        self.folder, self.repo_type, self.repo_id, self._hashes = folder, repo_type, repo_id, hashes

    def refs(self) -> dict:
        path = self.folder / "refs.json"
        data = json.loads(path.read_text()) if path.is_file() else {}
        if "branches" not in data:  # also accept the short form {"main": sha, ...}
            data = {"branches": {k: v for k, v in data.items() if isinstance(v, str)}, "tags": {}}
        data.setdefault("tags", {})
        data.setdefault("commits", [])
        return data

    def gated_tokens(self) -> list[str] | None:
        """The tokens granted access when the repository is gated (None: not gated)."""
        gated = self.refs().get("gated")
        return None if not gated else list(gated.get("tokens", []))

    def check_access(self, token: str | None) -> None:
        """Refuse a file's content of a gated repository as the Hub does (401 anonymous, 403 not granted)."""
        tokens = self.gated_tokens()
        if tokens is None or (token and token in tokens):
            return
        if not token:
            raise HubError(401, "GatedRepo", f"Access to model {self.repo_id} is restricted. You must have access to "
                                             "it and be authenticated to access it. Please log in.")
        raise HubError(403, "GatedRepo", f"Access to model {self.repo_id} is restricted and you are not in the "
                                         f"authorized list. Visit https://huggingface.co/{self.repo_id} to ask for access.")

    def resolve(self, revision: str) -> str:
        refs = self.refs()
        if revision in refs["branches"]:
            sha = refs["branches"][revision]
        elif revision in refs["tags"]:
            sha = refs["tags"][revision]
        elif COMMIT_RE.match(revision):
            sha = revision
        else:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        if not (self.folder / sha).is_dir():
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return sha

    def files(self, sha: str) -> list[FileInfo]:
        base = self.folder / sha
        out = []
        for disk in sorted(p for p in base.rglob("*") if p.is_file()):
            out.append(self._hashes.info(disk.relative_to(base).as_posix(), disk))
        return out

    def file(self, sha: str, path: str) -> FileInfo:
        base = (self.folder / sha).resolve()
        disk = (base / path).resolve()
        if base not in disk.parents or not disk.is_file():
            raise HubError(404, "EntryNotFound", "Entry not found", commit=sha)
        return self._hashes.info(path, disk)

    def commit_date(self, sha: str) -> str:
        for commit in self.refs()["commits"]:
            if commit.get("id") == sha and commit.get("date"):
                return commit["date"]
        return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime((self.folder / sha).stat().st_mtime))


class HashCache:
    """sha1 (git blob) and sha256 of served files, computed once per (inode, size, mtime)."""

    def __init__(self):
        self._cache: dict[tuple, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def info(self, path: str, disk: Path) -> FileInfo:
        st = disk.stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            hashes = self._cache.get(key)
        if hashes is None:
            data = disk.read_bytes()
            hashes = (git_blob_sha1(data), hashlib.sha256(data).hexdigest())
            with self._lock:
                self._cache[key] = hashes
        return FileInfo(path, disk, st.st_size, hashes[0], hashes[1], is_lfs_path(path, st.st_size))


class HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: str | Path, host: str = "127.0.0.1", port: int = 0, *, lfs_redirect: bool = True,
                 quiet: bool = True):
        self.root = Path(root)
        self.lfs_redirect = lfs_redirect
        self.quiet = quiet
        self.log: list[dict] = []
        self.faults: list[dict] = []
        self.hashes = HashCache()
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()  # commits and repository creation, one at a time
        self._thread: threading.Thread | None = None
        self._connections: set = set()  # the open client sockets (HTTP/1.1 keeps them alive between requests)
        super().__init__((host, port), HubHandler)

    def process_request(self, request, client_address):
        with self._lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    # -- addresses
    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.server_address[0]}:{self.port}"

    # -- repositories
    def repo(self, repo_type: str, repo_id: str) -> Repo:
        if repo_type not in REPO_TYPES or repo_id.count("/") != 1 or ".." in repo_id.split("/"):
            raise HubError(401, "RepoNotFound", "Repository not found")
        folder = self.root / repo_type / repo_id
        if not (folder / "refs.json").is_file():
            raise HubError(401, "RepoNotFound", "Repository not found")
        return Repo(folder, repo_type, repo_id, self.hashes)

    def blob_by_sha256(self, sha256: str, repo_type: str | None, repo_id: str | None, path: str | None) -> FileInfo:
        """The CDN side: find the blob by its sha256 (the query names the repository and path it came from)."""
        if repo_type and repo_id and path:
            repo = self.repo(repo_type, repo_id)
            for sha in sorted(p.name for p in repo.folder.iterdir() if p.is_dir() and COMMIT_RE.match(p.name)):
                candidate = repo.folder / sha / path
                if candidate.is_file():
                    info = self.hashes.info(path, candidate)
                    if info.sha256 == sha256:
                        return info
        raise HubError(404, None, "Not found")

    # -- uploads
    @property
    def lfs_store(self) -> Path:
        return self.root / "_lfs_objects"

    def create_repo(self, repo_type: str, repo_id: str) -> Path:
        if repo_type not in REPO_TYPES or repo_id.count("/") != 1 or not all(
                re.fullmatch(r"[\w.-]+", part) and part not in (".", "..") for part in repo_id.split("/")):
            raise HubError(400, None, f"Invalid repo name {repo_id!r}")
        folder = self.root / repo_type / repo_id
        with self._write_lock:
            if (folder / "refs.json").is_file():
                raise HubError(409, None, "You already created this model repo")
            gitattributes = ("*.bin filter=lfs diff=lfs merge=lfs -text\n"
                             "*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
            sha = hashlib.sha1(f"create:{repo_type}/{repo_id}:{time.time_ns()}".encode()).hexdigest()
            (folder / sha).mkdir(parents=True)
            (folder / sha / ".gitattributes").write_text(gitattributes)
            date = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            _write_json(folder / "refs.json", {"branches": {"main": sha}, "tags": {},
                                               "commits": [{"id": sha, "title": "initial commit", "date": date}]})
        return folder

    def commit(self, repo: Repo, revision: str, lines: list[dict]) -> str:
        """Apply an NDJSON commit payload on top of ``revision`` (a branch); returns the new commit's sha."""
        with self._write_lock:
            refs = repo.refs()
            if revision not in refs["branches"]:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            parent = refs["branches"][revision]
            header = next((line["value"] for line in lines if line.get("key") == "header"), {})
            if header.get("parentCommit") and header["parentCommit"] != parent:
                raise HubError(412, None, "A commit has happened since. Please refresh and try again.")
            digest = hashlib.sha1(f"{parent}:{time.time_ns()}".encode())
            for line in lines:
                digest.update(json.dumps(line, sort_keys=True).encode())
            sha = digest.hexdigest()
            staging = repo.folder / f".{sha}.tmp"
            shutil.copytree(repo.folder / parent, staging, copy_function=os.link)
            try:
                for line in lines:
                    key, value = line.get("key"), line.get("value") or {}
                    if key == "header":
                        continue
                    path = str(value.get("path", "")).strip("/")
                    target = (staging / path).resolve()
                    if not path or staging.resolve() not in target.parents:
                        raise HubError(400, None, f"Invalid path {path!r}")
                    if key in ("file", "lfsFile") and target.exists():
                        target.unlink()  # a hard link shared with the parent commit: replace, never write through
                    if key == "file":
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(base64.b64decode(value.get("content", "")))
                    elif key == "lfsFile":
                        blob = self.lfs_store / str(value.get("oid"))
                        if not blob.is_file():
                            raise HubError(422, None, f"LFS object {value.get('oid')} of {path} was not uploaded")
                        target.parent.mkdir(parents=True, exist_ok=True)
                        os.link(blob, target)
                    elif key == "deletedFile":
                        target.unlink(missing_ok=True)
                    elif key == "deletedFolder":
                        shutil.rmtree(target, ignore_errors=True)
                    else:
                        raise HubError(400, None, f"Unknown commit operation {key!r}")
                os.replace(staging, repo.folder / sha)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            refs["branches"][revision] = sha
            refs["commits"].insert(0, {"id": sha, "title": header.get("summary", ""),
                                       "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())})
            _write_json(repo.folder / "refs.json", refs)
        return sha

    # -- test controls
    def record(self, entry: dict) -> None:
        with self._lock:
            self.log.append(entry)

    def requests(self) -> list[dict]:
        with self._lock:
            return [dict(entry) for entry in self.log]  # copies: an entry in flight is still being filled in

    def clear_log(self) -> None:
        with self._lock:
            self.log.clear()

    def fetched_files(self, repo_id: str | None = None, repo_type: str | None = None) -> list[str]:
        """Files whose content was sent (GET of resolve, or of the CDN address), in request order."""
        return [e["file"] for e in self.requests()
                if e["method"] == "GET" and e["kind"] in ("resolve", "lfs") and e["status"] in (200, 206)
                and (repo_id is None or e["repo_id"] == repo_id)
                and (repo_type is None or e["repo_type"] == repo_type)]

    def add_fault(self, file: str, *, after_bytes: int | None = None, status: int | None = None,
                  times: int | None = 1, repo_id: str | None = None) -> None:
        if (after_bytes is None) == (status is None):
            raise ValueError("give exactly one of after_bytes (cut the connection) or status (answer that status)")
        with self._lock:
            self.faults.append({"file": file, "after_bytes": after_bytes, "status": status, "times": times,
                                "repo_id": repo_id, "hits": 0})

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def take_fault(self, repo_id: str, file: str) -> dict | None:
        with self._lock:
            for fault in self.faults:
                if fault["file"] == file and fault["repo_id"] in (None, repo_id) and fault["times"] != 0:
                    fault["hits"] += 1
                    if fault["times"] is not None:
                        fault["times"] -= 1
                    return dict(fault)
        return None

    # -- running
    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop as a killed server would: no new connections, and the open ones (kept alive by HTTP/1.1) cut."""
        self.shutdown()
        self.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by its handler
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)


def start_server(root: str | Path, host: str = "127.0.0.1", port: int = 0, **kwargs) -> tuple[HubServer, str]:
    """Start a server on a thread; returns ``(server, url)``. Stop it with ``server.stop()``."""
    server = HubServer(root, host, port, **kwargs).start()
    return server, server.url


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HubServer
    server_version = "cnhelpers-test-hub/1"

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)

    # -- plumbing
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")

    def do_PUT(self):
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self._entry = {"method": method, "path": split.path, "query": split.query, "kind": "other",
                       "repo_type": None, "repo_id": None, "revision": None, "file": None, "status": None,
                       "bytes": 0, "range": self.headers.get("Range"), "time": time.time()}
        self._request_body = self._read_body() if method in ("POST", "PUT") else b""  # read it whatever the answer,
        # or it would be the next request. The entry goes into the log before any answer leaves (and is filled in
        # as the answer goes): a client that has its answer, even a cut one, and then clears or reads the log never
        # races the handler's bookkeeping. Test controls are logged once done, so a read never lists itself.
        control = split.path.startswith("/_test/")
        if not control:
            self.server.record(self._entry)
        try:
            self._route(method, split.path, parse_qs(split.query))
        except HubError as error:
            self._send_error(error)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            if control:
                self.server.record(self._entry)

    def _body(self) -> bytes:
        return self._request_body

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() or None if auth.lower().startswith("bearer ") else None

    def _require_token(self) -> str:
        token = self._token()
        if not token:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        return token

    def _upload_fault(self, name: str, repo_id: str | None) -> None:
        fault = self.server.take_fault(repo_id or "", name)
        if fault:
            self._entry["fault"] = fault
            raise HubError(fault["status"] or 500, None, f"injected {fault['status'] or 500}")

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None,
              content_type: str = "application/json; charset=utf-8") -> None:
        self._entry["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD" and body:
            self._entry["bytes"] = len(body)
            self.wfile.write(body)

    def _send_json(self, data, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _send_error(self, error: HubError) -> None:
        headers = {"X-Error-Message": error.message}
        if error.code:
            headers["X-Error-Code"] = error.code
        if error.commit:
            headers["X-Repo-Commit"] = error.commit
        self._send_json({"error": error.message, **error.body}, error.status, headers)

    # -- routes
    def _route(self, method: str, path: str, query: dict) -> None:
        parts = path.split("/")[1:]  # raw (still quoted) segments
        if parts[:1] == ["_test"]:
            return self._test_control(method, parts[1:])
        if parts[:1] == ["_lfs"] and len(parts) == 2 and method in ("GET", "HEAD"):
            return self._cdn(parts[1], query)
        if parts[:1] == ["api"]:
            return self._api(method, parts[1:], query)
        if parts[:1] == ["_lfs_upload"] and len(parts) == 2 and method == "PUT":
            return self._lfs_put(parts[1])
        if parts[:1] == ["_lfs_verify"] and len(parts) == 2 and method == "POST":
            self._entry["kind"] = "lfs-verify"
            if not (self.server.lfs_store / parts[1]).is_file():
                raise HubError(404, None, "Object not found")
            return self._send_json({"ok": True})
        if method == "POST" and path.endswith("/info/lfs/objects/batch"):
            return self._lfs_batch(parts)
        if method in ("GET", "HEAD"):
            # /{org}/{name}/resolve/{rev}/{path...} or /{datasets|spaces}/{org}/{name}/resolve/...
            repo_type = "models"
            if parts and parts[0] in ("datasets", "spaces"):
                repo_type, parts = parts[0], parts[1:]
            if len(parts) >= 5 and parts[2] == "resolve":
                repo_id = f"{unquote(parts[0])}/{unquote(parts[1])}"
                return self._resolve(repo_type, repo_id, unquote(parts[3]), unquote("/".join(parts[4:])))
        raise HubError(404, None, "Not found")

    def _api(self, method: str, parts: list[str], query: dict) -> None:
        if parts == ["agent-harnesses"]:
            self._entry["kind"] = "agent-harnesses"
            return self._send_json(EMPTY_AGENT_REGISTRY)
        if parts == ["whoami-v2"] and method == "GET":
            self._entry["kind"] = "whoami"
            user = user_for_token(self._require_token())
            return self._send_json({"type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user,
                                    "fullname": user, "orgs": [], "auth": {"type": "access_token",
                                    "accessToken": {"displayName": "test", "role": "write"}}})
        if parts == ["validate-yaml"] and method == "POST":  # upload_folder checks README.md's metadata first
            self._entry["kind"] = "validate-yaml"
            self._body()
            return self._send_json({"errors": [], "warnings": []})
        if parts == ["repos", "create"] and method == "POST":
            self._entry["kind"] = "create"
            self._require_token()
            spec = json.loads(self._body() or b"{}")
            repo_type = (spec.get("type") or "model") + "s"
            repo_id = f"{spec.get('organization') or user_for_token(self._token())}/{spec.get('name')}"
            self._entry.update(repo_type=repo_type, repo_id=repo_id)
            self._upload_fault("<create>", repo_id)
            prefix = "" if repo_type == "models" else f"{repo_type}/"
            try:
                self.server.create_repo(repo_type, repo_id)
            except HubError as error:  # the Hub's 409 names the repo's url: create_repo(exist_ok=True) reads it
                if error.status == 409:
                    error.body = {"url": f"{self.server.url}/{prefix}{repo_id}"}
                raise
            return self._send_json({"url": f"{self.server.url}/{prefix}{repo_id}", "name": repo_id,
                                    "id": hashlib.sha1(repo_id.encode()).hexdigest()[:24]})
        if len(parts) < 3 or parts[0] not in REPO_TYPES:
            raise HubError(404, None, "Not found")
        repo_type, repo_id, rest = parts[0], f"{unquote(parts[1])}/{unquote(parts[2])}", parts[3:]
        self._entry.update(repo_type=repo_type, repo_id=repo_id)
        repo = self.server.repo(repo_type, repo_id)
        if method == "POST" and rest[:1] == ["preupload"] and len(rest) == 2:
            self._entry.update(kind="preupload", revision=unquote(rest[1]))
            self._require_token()
            body = json.loads(self._body() or b"{}")
            self._upload_fault("<preupload>", repo_id)
            return self._send_json({"files": [
                {"path": f["path"], "uploadMode": "lfs" if is_lfs_path(f["path"], int(f.get("size") or 0))
                 else "regular", "shouldIgnore": False, "oid": None} for f in body.get("files", [])]})
        if method == "POST" and rest[:1] == ["commit"] and len(rest) == 2:
            revision = unquote(rest[1])
            self._entry.update(kind="commit", revision=revision)
            self._require_token()
            lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
            self._upload_fault("<commit>", repo_id)
            sha = self.server.commit(repo, revision, lines)
            prefix = "" if repo_type == "models" else f"{repo_type}/"
            return self._send_json({"success": True, "commitOid": sha, "pullRequestUrl": None,
                                    "commitUrl": f"{self.server.url}/{prefix}{repo_id}/commit/{sha}"})
        if method == "GET" and (not rest or rest[0] == "revision"):
            revision = unquote(rest[1]) if len(rest) >= 2 else "main"
            self._entry.update(kind="api-info", revision=revision)
            return self._send_json(self._repo_info(repo, revision, blobs=_truthy(query.get("blobs"))))
        if method == "GET" and rest[:1] == ["tree"] and len(rest) >= 2:
            revision, sub = unquote(rest[1]), unquote("/".join(rest[2:])).strip("/")
            self._entry.update(kind="api-tree", revision=revision, file=sub or None)
            return self._send_json(self._tree(repo, revision, sub, recursive=_truthy(query.get("recursive"))))
        if method == "POST" and rest[:1] == ["paths-info"] and len(rest) == 2:
            revision = unquote(rest[1])
            self._entry.update(kind="api-paths-info", revision=revision)
            return self._send_json(self._paths_info(repo, revision, self._body()))
        if method == "GET" and rest == ["refs"]:
            self._entry["kind"] = "api-refs"
            refs = repo.refs()
            return self._send_json({
                "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s}
                             for n, s in refs["branches"].items()],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s}
                         for n, s in refs["tags"].items()],
                "converts": [],
            })
        raise HubError(404, None, "Not found")

    def _repo_info(self, repo: Repo, revision: str, blobs: bool) -> dict:
        sha = repo.resolve(revision)
        siblings = []
        for info in repo.files(sha):
            sibling = {"rfilename": info.path}
            if blobs:
                sibling.update(size=info.size, blobId=info.blob_id)
                if info.lfs:
                    sibling["lfs"] = {"sha256": info.sha256, "size": info.size,
                                      "pointerSize": len(lfs_pointer(info.sha256, info.size))}
            siblings.append(sibling)
        org = repo.repo_id.split("/")[0]
        date = repo.commit_date(sha)
        data = {"_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "author": org,
                "sha": sha, "lastModified": date, "createdAt": date, "private": False,
                "gated": "manual" if repo.gated_tokens() is not None else False,
                "disabled": False, "downloads": 0, "likes": 0, "tags": [], "siblings": siblings}
        if repo.repo_type == "models":
            data["modelId"] = repo.repo_id
            if any(s["rfilename"] == "model_index.json" for s in siblings):
                data["library_name"] = "diffusers"
        return data

    def _tree(self, repo: Repo, revision: str, sub: str, recursive: bool) -> list[dict]:
        sha = repo.resolve(revision)
        files = repo.files(sha)
        prefix = f"{sub}/" if sub else ""
        inside = [f for f in files if f.path.startswith(prefix)]
        if sub and not inside:
            raise HubError(404, "EntryNotFound", f"{sub} does not exist on {revision}", commit=sha)
        entries, folders = [], {}
        for info in inside:
            rel = info.path[len(prefix):].split("/")
            for depth in range(1, len(rel)):  # the folders on the way
                folder = prefix + "/".join(rel[:depth])
                if recursive or depth == 1:
                    folders.setdefault(folder, [])
            if recursive or len(rel) == 1:
                entries.append(info.tree_entry())
        for folder in folders:
            oid = hashlib.sha1("\n".join(f"{f.path}:{f.blob_id}" for f in files
                                         if f.path.startswith(folder + "/")).encode()).hexdigest()
            entries.append({"type": "directory", "oid": oid, "size": 0, "path": folder})
        return sorted(entries, key=lambda e: (e["type"] != "directory", e["path"]))

    def _paths_info(self, repo: Repo, revision: str, body: bytes) -> list[dict]:
        sha = repo.resolve(revision)
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            paths = json.loads(body or b"{}").get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        files = repo.files(sha)
        by_path = {f.path: f for f in files}
        out = []
        for path in paths:
            path = path.strip("/")
            if path in by_path:
                out.append(by_path[path].tree_entry())
            elif any(f.path.startswith(path + "/") for f in files):
                out.append({"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0,
                            "path": path})
        return out

    def _resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        self._entry.update(kind="resolve", repo_type=repo_type, repo_id=repo_id, revision=revision, file=path)
        repo = self.server.repo(repo_type, repo_id)
        repo.check_access(self._token())
        sha = repo.resolve(revision)
        info = repo.file(sha, path)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{info.etag}"', "Accept-Ranges": "bytes",
                   "Last-Modified": email.utils.formatdate(info.disk.stat().st_mtime, usegmt=True)}
        if info.lfs and self.server.lfs_redirect:
            host = self.headers.get("Host", "")
            cdn_host = "127.0.0.1" if host.split(":")[0] == "localhost" else "localhost"
            location = (f"http://{cdn_host}:{self.server.port}/_lfs/{info.sha256}"
                        f"?repo={quote(repo_type + '/' + repo_id, safe='')}&path={quote(path, safe='')}")
            headers.update({"ETag": f'"{info.blob_id}"', "X-Linked-Etag": f'"{info.sha256}"',
                            "X-Linked-Size": str(info.size), "Location": location})
            return self._send(302, b"", headers, content_type="text/plain; charset=utf-8")
        if info.lfs:
            headers.update({"X-Linked-Etag": f'"{info.sha256}"', "X-Linked-Size": str(info.size)})
        self._send_content(repo_id, info, headers)

    def _cdn(self, sha256: str, query: dict) -> None:
        repo = (query.get("repo") or [""])[0]
        repo_type, _, repo_id = repo.partition("/")
        path = (query.get("path") or [None])[0]
        self._entry.update(kind="lfs", repo_type=repo_type or None, repo_id=repo_id or None, file=path)
        info = self.server.blob_by_sha256(sha256, repo_type, repo_id, path)
        self._send_content(repo_id, info, {"ETag": f'"{sha256}"', "Accept-Ranges": "bytes"})

    def _send_content(self, repo_id: str, info: FileInfo, headers: dict) -> None:
        size, start, end = info.size, 0, info.size - 1
        status = 200
        wanted = self.headers.get("Range")
        if wanted:
            match = re.fullmatch(r"bytes=(\d*)-(\d*)", wanted.strip())
            if not match or (not match.group(1) and not match.group(2)):
                raise HubError(416, None, f"Invalid range {wanted}")
            if match.group(1):
                start = int(match.group(1))
                end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start = max(size - int(match.group(2)), 0)
            if start >= size or start > end:
                self._send(416, b"", {"Content-Range": f"bytes */{size}"})
                return
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        fault = self.server.take_fault(repo_id, info.path) if self.command == "GET" else None
        if fault and fault["status"] is not None:
            self._entry["fault"] = fault
            raise HubError(fault["status"], None, f"injected {fault['status']}")
        length = end - start + 1
        self._entry["status"] = status
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        stop_at = end + 1
        if fault:
            self._entry["fault"] = fault
            stop_at = max(start, min(stop_at, fault["after_bytes"]))
        with open(info.disk, "rb") as f:
            f.seek(start)
            position = start
            while position < stop_at:
                chunk = f.read(min(CHUNK, stop_at - position))
                if not chunk:
                    break
                self._entry["bytes"] += len(chunk)  # counted before it leaves: the log is read while this runs
                self.wfile.write(chunk)
                position += len(chunk)
        if fault:  # a server killed mid-file: the headers promised more than comes
            self._entry["cut"] = True
            self.wfile.flush()
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _lfs_batch(self, parts: list[str]) -> None:
        repo_type = "models"
        if parts[0] in ("datasets", "spaces"):
            repo_type, parts = parts[0], parts[1:]
        repo_id = f"{unquote(parts[0])}/{unquote(parts[1])[:-len('.git')]}"
        self._entry.update(kind="lfs-batch", repo_type=repo_type, repo_id=repo_id)
        self.server.repo(repo_type, repo_id)
        self._require_token()
        body = json.loads(self._body() or b"{}")
        self._upload_fault("<lfs-batch>", repo_id)
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj.get("oid")), int(obj.get("size") or 0)
            entry = {"oid": oid, "size": size, "authenticated": True}
            if not (self.server.lfs_store / oid).is_file():
                entry["actions"] = {
                    "upload": {"href": f"{self.server.url}/_lfs_upload/{oid}?repo={quote(repo_id, safe='')}",
                               "expires_at": "2099-01-01T00:00:00Z"},
                    "verify": {"href": f"{self.server.url}/_lfs_verify/{oid}", "expires_at": "2099-01-01T00:00:00Z"},
                }
            objects.append(entry)
        self._send(200, json.dumps({"transfer": "basic", "objects": objects}).encode(),
                   content_type="application/vnd.git-lfs+json")

    def _lfs_put(self, oid: str) -> None:
        self._entry.update(kind="lfs-upload", file=oid)
        data = self._body()
        self._upload_fault("<lfs-upload>", None)
        if hashlib.sha256(data).hexdigest() != oid:
            raise HubError(400, None, "The uploaded content does not match its sha256")
        store = self.server.lfs_store
        store.mkdir(parents=True, exist_ok=True)
        tmp = store / f".{oid}.{threading.get_ident()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, store / oid)
        self._entry["bytes"] = len(data)
        self._send(200, b"")

    def _test_control(self, method: str, parts: list[str]) -> None:
        self._entry["kind"] = "control"
        if parts == ["log"] and method == "GET":
            return self._send_json(self.server.requests())
        if parts == ["log"] and method == "DELETE":
            self.server.clear_log()
            return self._send_json({"ok": True})
        if parts == ["faults"] and method == "POST":
            spec = json.loads(self._body() or b"{}")
            try:
                self.server.add_fault(spec["file"], after_bytes=spec.get("after_bytes"), status=spec.get("status"),
                                      times=spec.get("times", 1), repo_id=spec.get("repo_id"))
            except (KeyError, ValueError) as error:
                raise HubError(400, None, f"bad fault: {error}")
            return self._send_json({"ok": True})
        if parts == ["faults"] and method == "DELETE":
            self.server.clear_faults()
            return self._send_json({"ok": True})
        if parts == ["faults"] and method == "GET":
            with self.server._lock:
                return self._send_json(list(self.server.faults))
        raise HubError(404, None, "Not found")


def user_for_token(token: str | None) -> str:
    """The user a token belongs to: the part before the first ``_`` after ``hf_`` (``hf_tester_x`` -> ``tester``),
    else ``tester``."""
    parts = (token or "").split("_")
    return parts[1] if len(parts) >= 3 and parts[0] == "hf" and parts[1] else "tester"


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].strip().lower() in ("1", "true", "yes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", required=True, help="the folder of repositories (see the module docstring)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--port-file", help="write the chosen port to this file once listening")
    parser.add_argument("--no-lfs-redirect", action="store_true", help="serve LFS files directly (200)")
    parser.add_argument("--verbose", action="store_true", help="log each request to stderr")
    args = parser.parse_args(argv)
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        parser.error("this test server only binds loopback addresses")
    server = HubServer(args.root, args.host, args.port, lfs_redirect=not args.no_lfs_redirect,
                       quiet=not args.verbose)
    if args.port_file:
        tmp = Path(f"{args.port_file}.tmp")
        tmp.write_text(str(server.port))
        os.replace(tmp, args.port_file)
    print(f"serving {args.root} at {server.url}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


#: The token :func:`local_hub` logs in with: its user is the part after ``hf_`` (:func:`user_for_token`).
LOCAL_TOKEN = "hf_learner_write"
_local: dict = {}


def local_hub() -> HubServer:
    """An empty Hub on 127.0.0.1 (a port the system chooses), started once per process and stopped when it ends,
    with this process's environment pointed at it, as ``hf auth login`` and the Hub would set it up: ``HF_ENDPOINT``
    (the server), ``HF_TOKEN`` (:data:`LOCAL_TOKEN`, user ``learner``), ``HF_HOME`` (a folder of its own, so the
    real Hub's token and cache are never touched), ``HF_HUB_DISABLE_XET=1`` (the server speaks the LFS upload
    protocol, not Xet's), no download bars. Processes started afterwards (``python -m cnhelpers.train --push_to_hub``) inherit it.

    ``huggingface_hub`` reads these when it is imported: call this first. If it was imported already, pointing at
    another address, this raises a RuntimeError that says to restart the kernel. Returns the server
    (``server.url``, ``server.root``: the repositories it holds, ``models/<user>/<name>/``)."""
    import atexit
    import tempfile

    if "server" not in _local:
        root = Path(tempfile.mkdtemp(prefix="cn-local-hub-"))
        server, url = start_server(root)
        atexit.register(shutil.rmtree, root, True)
        atexit.register(server.stop)
        os.environ.update(HF_ENDPOINT=url, HF_TOKEN=LOCAL_TOKEN, HF_HOME=str(root / "hf-home"),
                          HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
        _local["server"] = server
    server = _local["server"]
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and constants.ENDPOINT != server.url:
        raise RuntimeError(f"huggingface_hub was imported before the local Hub started, so it talks to "
                           f"{constants.ENDPOINT}: restart the kernel and run the notebook from the top")
    return server


if __name__ == "__main__":
    sys.exit(main())
