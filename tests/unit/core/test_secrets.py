"""The master key (its file, its environment variable, what the server refuses) and the
encryption of context variables: AES-256-GCM bound to environment, project and key."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from agentplex.core.secrets import MasterKey, check_key, check_value
from agentplex.errors import BadRequest, MasterKeyError
from agentplex.settings import load_settings

ENV, OTHER_ENV = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
PROJECT, OTHER_PROJECT = "33333333-3333-4333-8333-333333333333", "4444-not-a-uuid"
SECRET = "postgres://user:s3cr3t-p4ss@host/db"


# -- the master key file -----------------------------------------------------------------------


def test_the_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = MasterKey.load_or_create(data_dir)
    path = data_dir / "master.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    assert [p.name for p in data_dir.iterdir()] == ["master.key"]  # no temporary left behind
    again = MasterKey.load_or_create(data_dir)
    assert again.fingerprint == first.fingerprint
    assert first.source == str(path)
    # the key never shows in its repr
    assert path.read_bytes().hex() not in repr(first)


def test_the_configured_key_wins_over_the_file(tmp_path: Path) -> None:
    raw = os.urandom(32)
    from_file = MasterKey.load_or_create(tmp_path)
    configured = MasterKey.load_or_create(tmp_path, base64.b64encode(raw).decode())
    assert configured.fingerprint == MasterKey(raw).fingerprint != from_file.fingerprint
    assert configured.source == "AGENTPLEX_MASTER_KEY"
    # URL-safe base64, unpadded, with stray whitespace: the same key
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert MasterKey.from_base64(f" {urlsafe}\n").fingerprint == configured.fingerprint


def test_the_setting_reads_agentplex_master_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = os.urandom(32)
    monkeypatch.setenv("AGENTPLEX_MASTER_KEY", base64.b64encode(raw).decode())
    settings = load_settings()
    assert settings.server.master_key is not None
    key = MasterKey.load_or_create(tmp_path, settings.server.master_key)
    assert key.fingerprint == MasterKey(raw).fingerprint
    assert not (tmp_path / "master.key").exists()
    assert base64.b64encode(raw).decode() not in str(settings.redacted())


@pytest.mark.parametrize(
    ("text", "says"),
    [("not base64 at all!", "not valid base64"), (base64.b64encode(b"short").decode(), "5 bytes")],
)
def test_a_bad_configured_key_is_refused_without_echoing_it(text: str, says: str) -> None:
    with pytest.raises(MasterKeyError) as caught:
        MasterKey.load_or_create(Path("/nonexistent"), text)
    assert says in caught.value.message
    assert "AGENTPLEX_MASTER_KEY" in caught.value.message
    assert text not in caught.value.message


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_a_key_file_of_the_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(b"k" * size)
    path.chmod(0o600)
    with pytest.raises(MasterKeyError) as caught:
        MasterKey.load_or_create(tmp_path)
    assert str(path) in caught.value.message and "exactly 32" in caught.value.message
    assert path.read_bytes() == b"k" * size  # never replaced: it may be the only copy


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_file_others_may_read_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(os.urandom(32))
    path.chmod(mode)
    with pytest.raises(MasterKeyError) as caught:
        MasterKey.load_or_create(tmp_path)
    assert f"chmod 600 {path}" in caught.value.message
    assert f"{mode:04o}" in caught.value.message


def test_an_unreadable_key_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "master.key").mkdir()  # not a file
    with pytest.raises(MasterKeyError, match="not a regular file"):
        MasterKey.load_or_create(tmp_path)
    (tmp_path / "master.key").rmdir()
    (tmp_path / "master.key").write_bytes(os.urandom(32))
    real_open = os.open

    def denied(path: object, *args: object, **kwargs: object) -> int:
        if str(path).endswith("master.key"):
            raise PermissionError(13, "Permission denied")
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(MasterKeyError, match=r"Cannot read the master key .*Permission denied"):
        MasterKey.load_or_create(tmp_path)


def test_a_data_dir_that_cannot_hold_the_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(MasterKeyError, match="Not a directory"):
        MasterKey.load_or_create(blocker / "data")
    real_open = os.open

    def full(path: object, *args: object, **kwargs: object) -> int:
        if Path(str(path)).name.startswith(".master.key."):
            raise OSError(28, "No space left on device")
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", full)
    with pytest.raises(MasterKeyError, match=r"Cannot create the master key .*No space left"):
        MasterKey.load_or_create(tmp_path / "data")
    assert list((tmp_path / "data").iterdir()) == []


def test_two_processes_creating_the_key_at_once_agree(tmp_path: Path) -> None:
    # the second writer finds the first one's file linked in place and reads it
    winner = tmp_path / "master.key"
    MasterKey._create(winner)
    content = winner.read_bytes()
    MasterKey._create(winner)
    assert winner.read_bytes() == content
    assert [p.name for p in tmp_path.iterdir()] == ["master.key"]


# -- sealing -----------------------------------------------------------------------------------


def test_a_sealed_value_opens_only_where_it_was_sealed() -> None:
    key = MasterKey.generate()
    ciphertext, nonce = key.seal(ENV, PROJECT, "DATABASE_URL", SECRET)
    assert SECRET.encode() not in ciphertext and len(nonce) == 12
    assert key.unseal(ENV, PROJECT, "DATABASE_URL", ciphertext, nonce) == SECRET
    for env, project, name in [
        (OTHER_ENV, PROJECT, "DATABASE_URL"),  # another environment's key
        (ENV, OTHER_PROJECT, "DATABASE_URL"),  # moved to another project
        (ENV, PROJECT, "OTHER_KEY"),  # moved to another variable
    ]:
        with pytest.raises(InvalidTag):
            key.unseal(env, project, name, ciphertext, nonce)
    with pytest.raises(InvalidTag):
        MasterKey.generate().unseal(ENV, PROJECT, "DATABASE_URL", ciphertext, nonce)
    flipped = bytes([ciphertext[0] ^ 1]) + ciphertext[1:]
    with pytest.raises(InvalidTag):
        key.unseal(ENV, PROJECT, "DATABASE_URL", flipped, nonce)


def test_every_seal_uses_a_fresh_nonce() -> None:
    key = MasterKey.generate()
    sealed = {key.seal(ENV, PROJECT, "K", "same value") for _ in range(50)}
    assert len(sealed) == 50
    assert len({nonce for _c, nonce in sealed}) == 50


def test_environment_keys_differ_and_come_from_the_master_key() -> None:
    raw = os.urandom(32)
    a, b = MasterKey(raw), MasterKey(raw)
    ciphertext, nonce = a.seal(ENV, PROJECT, "K", "v")
    assert b.unseal(ENV, PROJECT, "K", ciphertext, nonce) == "v"
    assert a._cipher(ENV) is a._cipher(ENV)  # derived once per environment


# -- what a key and a value may be -------------------------------------------------------------


@pytest.mark.parametrize("key", ["DATABASE_URL", "_private", "a", "x1_Y2", "K" * 128])
def test_environment_variable_names_are_keys(key: str) -> None:
    assert check_key(key) == key


@pytest.mark.parametrize(
    ("key", "says"),
    [
        ("", "non-empty"),
        ("1ABC", "environment variable name"),
        ("MY-KEY", "environment variable name"),
        ("A B", "environment variable name"),
        ("A=B", "environment variable name"),
        ("CLÉ", "environment variable name"),
        ("A\x00", "environment variable name"),
        ("K" * 129, "at most 128"),
        ("AGENTPLEX_MASTER_KEY", "reserved"),
        ("agentplex_token", "reserved"),
    ],
)
def test_other_keys_are_refused_saying_why(key: str, says: str) -> None:
    with pytest.raises(BadRequest, match=says):
        check_key(key)


def test_values_are_checked_without_being_quoted() -> None:
    assert check_value("K", "") == ""
    assert check_value("K", "é" * 32768) == "é" * 32768  # exactly 64 KiB of UTF-8
    refused = ["x" * (64 * 1024 + 1), "é" * 32769, "abc\x00def-secret", "\ud800-secret"]
    for value in refused:
        with pytest.raises(BadRequest) as caught:
            check_value("K", value)
        assert value[:6] not in caught.value.message
        assert "K" in caught.value.message
