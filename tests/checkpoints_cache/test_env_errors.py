"""The Hub failing after the retries is one line and exit 1 (the top-level handler of the CLI)."""

from __future__ import annotations

from resume.cli import main as cli

from .repos import RUN


def test_http_500_after_the_retries_is_one_line(env, hub, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", env.endpoint)
    hub.inject("500", "/revision/", times=10)
    assert cli(["fetch", RUN, "--step", "1000", "--dry-run"]) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "the Hub answered HTTP 500" in lines[0] and "after 4 tries" in lines[0], err
    assert "/revision/step1000" in lines[0] and "Traceback" not in err
    assert len(hub.requests("GET", "/revision/")) == 4  # the retries happened before giving up
