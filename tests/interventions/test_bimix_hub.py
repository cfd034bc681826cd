"""BiMix on a Hub dataset: fetched once by ``datasets`` through huggingface_hub from the loopback Hub
stand-in into the HF cache, then read by a branch offline from that cache (``HF_HUB_OFFLINE=1``)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from tests.checkpoints_cache import hub_standin as hs

from .test_bimix_corpus import make_docs

REPO = Path(__file__).resolve().parents[2]


class TreeHandler(hs._Handler):
    """The stand-in's handler with the Hub's folder-aware tree listing (``datasets`` lists folders:
    without ``recursive`` a listing holds the folder's own files and subfolders)."""

    def _api(self, repo_type: str, repo_id: str, what: str, rev: str, sub: str) -> None:
        repo = self.hub.repos.get((repo_type, repo_id))
        commit = repo.resolve(rev) if repo is not None else None
        if what != "tree" or commit is None:
            return super()._api(repo_type, repo_id, what, rev, sub)
        recursive = parse_qs(urlparse(self.path).query).get("recursive", ["false"])[0].lower() == "true"
        base = sub.strip("/")
        files, folders = [], set()
        for path, data in sorted(repo.commits[commit].items()):
            if base and not path.startswith(base + "/"):
                continue
            parts = (path[len(base) + 1:] if base else path).split("/")
            for i in range(1, len(parts) if recursive else min(2, len(parts))):
                folders.add("/".join(([base] if base else []) + parts[:i]))
            if recursive or len(parts) == 1:
                files.append(self.hub.entry(repo, path, data))
        return self._json(files + [{"type": "directory", "oid": "0" * 40, "path": f} for f in sorted(folders)])


class DatasetHub(hs.HubStandin):
    def start(self) -> "DatasetHub":
        standin = self

        class Handler(TreeHandler):
            hub = standin

        self._server = hs._QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self


def branch_cli(toy: Path, out: Path, spec: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "resume", "branch", str(toy), "--from-step", "48", "--steps", "2",
           "--intervention", spec, "--out", str(out), "--no-compare"]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_hub_dataset_through_the_cache_then_offline(toy, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(make_docs(tokens={"iid4": 4000, "iid32": 8000, "cycle": 2000})), buf)
    spec = "bimix:source=org/labelled,domain_column=domain,token_column=token_ids"
    base = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "BRANCHPOINT_HOME": str(tmp_path / "bp"),
            "OMP_NUM_THREADS": "1"}
    with DatasetHub() as hub:
        hub.add_commit("dataset", "org/labelled", "main",
                       {"data/train-00000-of-00001.parquet": buf.getvalue(), "README.md": b"# labelled\n"})
        # a user fetched the dataset once (datasets downloads it through huggingface_hub into the HF cache)
        load = "import datasets; print(len(datasets.load_dataset('org/labelled', split='train')))"
        seeded = subprocess.run([sys.executable, "-c", load], env={**base, "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"},
                                capture_output=True, text=True, timeout=300)
        assert seeded.returncode == 0, seeded.stderr[-3000:]
        assert hub.requests("GET", "train-00000-of-00001.parquet")
    # the stand-in is gone: the branch reads the dataset from the cache, offline
    offline = branch_cli(toy, tmp_path / "offline", spec, {**base, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 0, offline.stderr[-3000:]
    iv = json.loads((tmp_path / "offline" / "trajectory.json").read_text())["intervention"]
    assert iv["resolved"]["corpus"]["source"] == "org/labelled"
    assert iv["resolved"]["corpus"]["num_rows"] == sum(iv["resolved"]["corpus"]["rows"].values()) > 0
    assert sorted(iv["params"]["mixture"]) == ["cycle", "iid32", "iid4"]
    assert len(list((tmp_path / "bp" / "bimix").glob("*/corpus.json"))) == 1
