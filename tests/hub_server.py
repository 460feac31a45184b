"""A local stand-in for the Hugging Face Hub's HTTP endpoints, for tests of pushing and loading subsets.

It answers the requests the real `huggingface_hub` client sends for ``whoami``, ``create_repo``,
``create_branch``, ``create_commit`` (``validate-yaml``, ``preupload``, the LFS batch API with the
"basic" transfer, the LFS upload and verify URLs it hands out, the ndjson ``commit``), ``repo_info``
and file downloads (``resolve``, HEAD and GET), with their payloads as the client sends them. Repos hold
git-like commits per branch; LFS objects are checked against their sha256 and kept per repo, so a
re-run of an interrupted upload finds what already arrived. Private repos answer 404 to anyone but
their owner, as the Hub does. ``fail_commits`` makes the next commit requests fail with a 500 after
the data was uploaded. Xet storage is not offered: clients must run with ``HF_HUB_DISABLE_XET``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

import yaml

_LFS_SUFFIXES = (".parquet", ".arrow", ".png", ".jpg", ".bin", ".safetensors")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a regular file, as the client computes it to skip unchanged files."""
    return hashlib.sha1(b"blob " + str(len(data)).encode() + b"\0" + data).hexdigest()


@dataclass
class Repo:
    owner: str
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    commits: dict[str, dict] = field(default_factory=dict)  # oid -> {"files", "parent", "summary"}
    lfs: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content


@dataclass
class HubState:
    tokens: dict[str, str]  # token -> user name
    repos: dict[str, Repo] = field(default_factory=dict)  # "datasets/ns/name" -> Repo
    fail_commits: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, method: str, pattern: str) -> int:
        """How many requests of ``method`` had a path matching the regex ``pattern``."""
        return sum(1 for m, p in self.requests if m == method and re.search(pattern, p))


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState
    base_url: str

    def log_message(self, *args):  # quiet test output
        pass

    # -- plumbing -------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes | dict | list = b"", headers: dict[str, str] | None = None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str, code: str | None = None):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return self.state.tokens.get(auth[7:]) if auth.startswith("Bearer ") else None

    def _repo(self, key: str, *, write: bool = False) -> Repo | None:
        repo, user = self.state.repos.get(key), self._user()
        if repo is None or (repo.private and user != repo.owner):
            self._error(404, "Repository Not Found", "RepoNotFound")
            return None
        if write and user != repo.owner:
            self._error(403, "You don't have the rights to write to this repo")
            return None
        return repo

    def _revision(self, repo: Repo, revision: str) -> str | None:
        revision = unquote(revision)
        if revision in repo.branches:
            return repo.branches[revision]
        if revision in repo.commits:
            return revision
        self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return None

    def _commit(self, repo: Repo, branch: str, files: dict, summary: str) -> str:
        parent = repo.branches.get(branch)
        oid = hashlib.sha1(json.dumps([parent, summary, sorted(files)], default=str).encode()
                           + str(len(repo.commits)).encode()).hexdigest()
        repo.commits[oid] = {"files": files, "parent": parent, "summary": summary}
        repo.branches[branch] = oid
        return oid

    # -- dispatch -------------------------------------------------------------------------------
    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _dispatch(self, method: str):
        url = urlparse(self.path)
        path, query = url.path, parse_qs(url.query)
        with self.state.lock:
            self.state.requests.append((method, path))
        body = self._body() if method in ("POST", "PUT") else b""
        repo_part = r"(?P<key>(?P<type>datasets|models|spaces)/(?P<ns>[^/]+)/(?P<name>[^/]+?))"
        routes = [
            ("GET", r"/api/whoami-v2", self._whoami),
            ("POST", r"/api/repos/create", self._create_repo),
            ("POST", r"/api/validate-yaml", self._validate_yaml),
            ("POST", rf"/api/{repo_part}/preupload/(?P<rev>[^/]+)", self._preupload),
            ("POST", rf"/api/{repo_part}/commit/(?P<rev>[^/]+)", self._commit_endpoint),
            ("POST", rf"/api/{repo_part}/branch/(?P<branch>[^/]+)", self._create_branch),
            ("GET", rf"/api/{repo_part}(?:/revision/(?P<rev>[^/]+))?", self._repo_info),
            ("GET", rf"/api/{repo_part}/tree/(?P<rev>[^/]+)(?:/(?P<folder>.+))?", self._tree),
            ("POST", rf"/{repo_part}\.git/info/lfs/objects/batch", self._lfs_batch),
            ("PUT", rf"/lfs-upload/{repo_part}/(?P<oid>[0-9a-f]{{64}})", self._lfs_upload),
            ("POST", rf"/lfs-verify/{repo_part}", self._lfs_verify),
            ("GET", rf"/{repo_part}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
            ("HEAD", rf"/{repo_part}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", self._resolve),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                with self.state.lock:
                    return handler(match.groupdict(), body, query)
        self._error(404, f"no stand-in route for {method} {path}")

    # -- endpoints ------------------------------------------------------------------------------
    def _whoami(self, groups, body, query):
        user = self._user()
        if user is None:
            return self._error(401, "Invalid credentials in Authorization header")
        self._send(200, {"type": "user", "name": user, "auth": {"accessToken": {"role": "write"}}})

    def _create_repo(self, groups, body, query):
        user = self._user()
        if user is None:
            return self._error(401, "Invalid credentials in Authorization header")
        payload = json.loads(body)
        namespace = payload.get("organization") or user
        if namespace != user:
            return self._error(403, f"You don't have the rights to create a repo under {namespace}")
        key = f"{payload.get('type', 'model')}s/{namespace}/{payload['name']}"
        if key in self.state.repos:  # the Hub's 409 carries the url, which create_repo(exist_ok=True) returns
            message = "You already created this dataset repo"
            return self._send(409, {"error": message, "url": f"{self.base_url}/{key}"}, {"X-Error-Message": message})
        repo = Repo(owner=user, private=payload.get("visibility") == "private")
        attributes = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
        self._commit(repo, "main", {".gitattributes": ("regular", attributes)}, "initial commit")
        self.state.repos[key] = repo
        self._send(200, {"url": f"{self.base_url}/{key}", "name": f"{namespace}/{payload['name']}"})

    def _validate_yaml(self, groups, body, query):
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---", content, re.DOTALL)
        try:
            yaml.safe_load(match.group(1) if match else "")
        except yaml.YAMLError as err:
            return self._send(400, {"errors": [{"message": str(err)}]}, {"X-Error-Message": str(err)})
        self._send(200, {"errors": [], "warnings": []})

    def _create_branch(self, groups, body, query):
        repo = self._repo(groups["key"], write=True)
        if repo is None:
            return
        branch = unquote(groups["branch"])
        if branch in repo.branches:
            return self._error(409, f"Reference already exists: refs/heads/{branch}")
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        oid = self._revision(repo, start)
        if oid is not None:
            repo.branches[branch] = oid
            self._send(200, {})

    def _preupload(self, groups, body, query):
        repo = self._repo(groups["key"], write=True)
        if repo is None:
            return
        oid = self._revision(repo, groups["rev"])
        if oid is None:
            return
        present = repo.commits[oid]["files"]
        files = []
        for item in json.loads(body)["files"]:
            mode = "lfs" if item["path"].endswith(_LFS_SUFFIXES) or item["size"] > 10_000_000 else "regular"
            remote = present.get(item["path"])
            remote_oid = None
            if remote is not None:
                remote_oid = remote[1] if remote[0] == "lfs" else git_blob_sha1(remote[1])
            files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": remote_oid})
        self._send(200, {"files": files})

    def _lfs_batch(self, groups, body, query):
        repo = self._repo(groups["key"], write=True)
        if repo is None:
            return
        payload = json.loads(body)
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in repo.lfs:  # already uploaded objects get no actions: the client skips them
                entry["actions"] = {
                    "upload": {"href": f"{self.base_url}/lfs-upload/{groups['key']}/{obj['oid']}"},
                    "verify": {"href": f"{self.base_url}/lfs-verify/{groups['key']}"},
                }
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def _lfs_upload(self, groups, body, query):
        repo = self.state.repos.get(groups["key"])
        if repo is None:
            return self._error(404, "Repository Not Found")
        if hashlib.sha256(body).hexdigest() != groups["oid"]:
            return self._error(400, "uploaded content does not match its sha256")
        repo.lfs[groups["oid"]] = body
        self._send(200)

    def _lfs_verify(self, groups, body, query):
        repo = self.state.repos.get(groups["key"])
        oid = json.loads(body)["oid"]
        if repo is None or oid not in repo.lfs:
            return self._error(404, f"LFS object {oid} not found")
        self._send(200, {})

    def _commit_endpoint(self, groups, body, query):
        repo = self._repo(groups["key"], write=True)
        if repo is None:
            return
        branch = unquote(groups["rev"])
        if branch not in repo.branches:
            return self._error(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        if self.state.fail_commits > 0:
            self.state.fail_commits -= 1
            return self._error(500, "Internal Error - the commit could not be created (injected failure)")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != repo.branches[branch]:
            return self._error(412, "A commit has happened since the parent commit")
        files = dict(repo.commits[repo.branches[branch]]["files"])
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                files[value["path"]] = ("regular", base64.b64decode(value["content"]))
            elif line["key"] == "lfsFile":
                if value["oid"] not in repo.lfs:
                    return self._error(422, f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value["path"]] = ("lfs", value["oid"])
            elif line["key"] == "deletedFile":
                files.pop(value["path"], None)
            else:
                return self._error(400, f"unsupported commit operation {line['key']!r}")
        oid = self._commit(repo, branch, files, header["summary"])
        self._send(200, {"commitUrl": f"{self.base_url}/{groups['key']}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None})

    def _repo_info(self, groups, body, query):
        repo = self._repo(groups["key"])
        if repo is None:
            return
        oid = self._revision(repo, groups.get("rev") or "main")
        if oid is None:
            return
        files = repo.commits[oid]["files"]
        card_data = None
        if "README.md" in files:  # the Hub parses the card's YAML into cardData
            match = re.match(r"^---\n(.*?)\n---", self._file_content(repo, files["README.md"]).decode(), re.DOTALL)
            card_data = yaml.safe_load(match.group(1)) if match else None
        self._send(200, {"id": f"{groups['ns']}/{groups['name']}", "author": groups["ns"], "sha": oid,
                         "private": repo.private, "cardData": card_data,
                         "siblings": [{"rfilename": name} for name in sorted(files)]})

    def _tree(self, groups, body, query):
        repo = self._repo(groups["key"])
        if repo is None:
            return
        oid = self._revision(repo, groups["rev"])
        if oid is None:
            return
        folder = unquote(groups.get("folder") or "").strip("/")
        recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = f"{folder}/" if folder else ""
        entries, folders = [], set()
        for path, entry in sorted(repo.commits[oid]["files"].items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):].split("/")
            for depth in range(1, len(rest) if recursive else min(2, len(rest))):  # the folders on the way
                sub = prefix + "/".join(rest[:depth])
                if sub not in folders:
                    folders.add(sub)
                    entries.append({"type": "directory", "path": sub, "size": 0, "oid": git_blob_sha1(sub.encode())})
            if len(rest) > 1 and not recursive:
                continue
            content = self._file_content(repo, entry)
            item = {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha1(content)}
            if entry[0] == "lfs":
                item["lfs"] = {"oid": entry[1], "size": len(content), "pointerSize": 130}
            entries.append(item)
        self._send(200, entries)

    def _file_content(self, repo: Repo, entry: tuple[str, object]) -> bytes:
        return repo.lfs[entry[1]] if entry[0] == "lfs" else entry[1]

    def _resolve(self, groups, body, query):
        repo = self._repo(groups["key"])
        if repo is None:
            return
        oid = self._revision(repo, groups["rev"])
        if oid is None:
            return
        entry = repo.commits[oid]["files"].get(unquote(groups["file"]))
        if entry is None:
            return self._error(404, "Entry not found", "EntryNotFound")
        content = self._file_content(repo, entry)
        etag = entry[1] if entry[0] == "lfs" else git_blob_sha1(content)
        self._send(200, content, {"X-Repo-Commit": oid, "ETag": f'"{etag}"',
                                  "Content-Type": "application/octet-stream"})


class HubServer:
    """The stand-in, serving on a free local port in a background thread; use as a context manager.

    Example:
        >>> with HubServer(tokens={"hf_me": "me"}) as hub:
        ...     HfApi(endpoint=hub.url, token="hf_me").whoami()["name"]
        'me'
    """

    def __init__(self, tokens: dict[str, str]):
        self.state = HubState(tokens=dict(tokens))
        handler = type("Handler", (_Handler,), {"state": self.state})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        handler.base_url = self.url
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "datasets") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` (a branch or commit) as stored, by path."""
        repo = self.state.repos[f"{repo_type}/{repo_id}"]
        oid = repo.branches.get(revision, revision)
        return {path: (repo.lfs[v] if kind == "lfs" else v) for path, (kind, v) in repo.commits[oid]["files"].items()}

    def commits(self, repo_id: str, branch: str = "main", repo_type: str = "datasets") -> list[str]:
        """The commit summaries on ``branch``, newest first."""
        repo, out = self.state.repos[f"{repo_type}/{repo_id}"], []
        oid = repo.branches[branch]
        while oid is not None:
            out.append(repo.commits[oid]["summary"])
            oid = repo.commits[oid]["parent"]
        return out
