"""The file-hash memo behind checkpoint fingerprints: shared across comparisons, never stale."""

from __future__ import annotations

import hashlib


import resume.compare.cache as cache_mod
from resume.compare.cache import EvalCache


def test_hash_memo_is_shared_and_follows_rewrites(tmp_path, monkeypatch):
    monkeypatch.setenv("BRANCHPOINT_CACHE", str(tmp_path / "memo"))
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"a" * 1000)
    first = EvalCache(tmp_path / "out1")
    first.prefetch([tmp_path])  # hashed in the thread pool
    assert first.file_hash(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    first.flush()

    def no_hashing(path):
        raise AssertionError("a known file must not be read again")

    with monkeypatch.context() as m:
        m.setattr(cache_mod, "_file_sha256", no_hashing)
        assert EvalCache(tmp_path / "out2").file_hash(f) == hashlib.sha256(b"a" * 1000).hexdigest()

    f.write_bytes(b"b" * 1000)  # same size, new content
    assert EvalCache(tmp_path / "out3").file_hash(f) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_checkpoint_fingerprint_covers_config_and_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("BRANCHPOINT_CACHE", str(tmp_path / "memo"))
    ck = tmp_path / "step1"
    ck.mkdir()
    (ck / "config.json").write_text("{}")
    (ck / "model.safetensors").write_bytes(b"x")
    (ck / "README.md").write_text("not part of the model")
    c = EvalCache(tmp_path / "out")
    fp = c.checkpoint_fingerprint(ck)
    (ck / "README.md").write_text("changed")
    assert EvalCache(tmp_path / "out").checkpoint_fingerprint(ck) == fp
    (ck / "config.json").write_text('{"vocab_size": 1}')
    assert EvalCache(tmp_path / "out").checkpoint_fingerprint(ck) != fp
