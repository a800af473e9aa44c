"""Result files name the commit they measured, also where the tree travelled without its history."""

import subprocess

from ddpm_triton.provenance import COMMIT_ENV, ROOT, git_commit


def test_commit_is_the_checkouts_head(monkeypatch):
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert git_commit().split()[0] == head.stdout.strip()


def test_a_named_commit_wins_and_says_where_it_came_from(monkeypatch):
    monkeypatch.setenv(COMMIT_ENV, "0123abc")
    assert git_commit() == f"0123abc (from ${COMMIT_ENV})"
