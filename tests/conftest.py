"""Shared fixtures: a temporary FT_HOME per test, a CLI runner, a tiny real model built from a
config, and real redis-server / PostgreSQL servers started on loopback for the tests that need them.

Set FT_REQUIRE_SERVICES=1 (CI does) to turn a missing redis-server or PostgreSQL into a failure
instead of a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
"""Slices of the real data of both tasks, shipped with the tests (see its README.md)."""
FAULTS_TRAIN = DATA / "fault_triples_train.jsonl"
FAULTS_TEST = DATA / "fault_triples_test.jsonl"
FAULTS_TEXT_ANSWER = DATA / "fault_triples_test_text_answer.jsonl"
ADGEN_DEV = DATA / "adgen_dev.jsonl"


def _need_service(what: str) -> None:
    if os.environ.get("FT_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required (FT_REQUIRE_SERVICES=1) but not available")
    pytest.skip(f"{what} not available")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ft_env(tmp_path, monkeypatch) -> dict[str, str]:
    """A fresh FT_HOME for one test, set in os.environ (and returned for subprocesses)."""
    home = tmp_path / "ft-home"
    for var in ("FT_DATABASE_URL", "FT_BROKER_URL", "FT_ARTIFACTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FT_HOME", str(home))
    monkeypatch.setenv("FT_USER", "tester")
    return {"FT_HOME": str(home), "FT_USER": "tester"}


@pytest.fixture
def settings(ft_env):
    from catalog.settings import Settings

    return Settings.from_env()


@pytest.fixture
def catalog(settings):
    """An initialised catalog (migrated to head, built-in templates seeded)."""
    from catalog.db import Catalog
    from catalog.migrate import upgrade
    from datasets_prep.templates import seed_builtin_templates

    settings.ensure_dirs()
    cat = Catalog(settings)
    upgrade(cat.engine)
    seed_builtin_templates(cat, settings.user)
    yield cat
    cat.dispose()


@pytest.fixture
def store(settings):
    from catalog.store import ArtifactStore

    return ArtifactStore(settings.artifacts)


@pytest.fixture
def ft(ft_env):
    """Run `ft ARGS...` in-process; returns the click Result. `ft("init")`, `ft("datasets", "list")`."""
    from cli.main import cli

    runner = CliRunner()

    def run(*args: str, input: str | None = None, ok: bool = True):
        result = runner.invoke(cli, list(args), input=input, catch_exceptions=False)
        if ok and result.exit_code != 0:
            raise AssertionError(f"ft {' '.join(args)} exited {result.exit_code}:\n{result.output}")
        return result

    return run


# ---------------------------------------------------------------- tiny real model


def build_tiny_model(dest: Path, layers: int = 2, hidden: int = 64, shake: float = 0.0) -> Path:
    """A real Llama-architecture model (random weights) with a real byte-level BPE tokenizer
    trained on the reference data, saved as an ordinary transformers directory.

    `shake` adds that much Gaussian noise to every matrix: freshly initialised, the model repeats one
    token whatever the prompt, which hides a model switch; shaken, each prompt gets its own completion
    and a few training steps visibly change it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )

    def texts():
        for path in (FAULTS_TRAIN, ADGEN_DEV):
            with open(path, encoding="utf-8") as f:
                for line in f:
                    row = json.loads(line)
                    yield " ".join(str(v) for v in row.values())
        yield "Below is an instruction that describes a task. ### Instruction: ### Input: ### Response:"

    tok.train_from_iterator(texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<pad>", bos_token=None
    )
    fast.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    dest.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(dest)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
    )
    import torch

    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if shake:
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.add_(torch.randn(p.shape, generator=gen) * shake)
    model.save_pretrained(dest)
    return dest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-64 Llama with a real tokenizer, built once per test session."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "tiny-llama")


@pytest.fixture(scope="session")
def lively_model_dir(tmp_path_factory) -> Path:
    """The tiny model with its matrices shaken (`build_tiny_model(shake=0.2)`): prompt-dependent
    completions, so that evaluation tests can see which model produced them."""
    return build_tiny_model(tmp_path_factory.mktemp("lively-model") / "tiny-llama", shake=0.2)


# ---------------------------------------------------------------- real servers


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on a free loopback port, for this test session."""
    exe = shutil.which("redis-server")
    if not exe:
        _need_service("redis-server")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("redis-server did not start")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(candidates[-1]) if candidates else None


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    """A real PostgreSQL server in a temporary directory on a free port (as user `postgres` when
    the tests run as root, since PostgreSQL refuses to run as root). Yields a base URL."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        _need_service("PostgreSQL (initdb/pg_ctl)")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _need_service("psycopg")
    base = Path(f"/tmp/ft-pg-{os.getpid()}")
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    data = base / "data"
    port = free_port()
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = ["runuser", "-u", "postgres", "--"]
        shutil.chown(base, "postgres", "postgres")
    run = lambda *cmd: subprocess.run([*prefix, *cmd], check=True, capture_output=True, text=True)  # noqa: E731
    run(initdb, "-D", str(data), "-U", "ft", "--auth=trust", "-E", "UTF8", "--locale=C")
    run(
        pg_ctl, "-D", str(data), "-l", str(base / "log"), "-w", "-t", "30",
        "-o", f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
    )  # fmt: skip
    yield f"postgresql+psycopg://ft@127.0.0.1:{port}"
    subprocess.run([*prefix, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh, empty database on the session's PostgreSQL server."""
    import psycopg

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[:50]
    admin = postgres_server.replace("postgresql+psycopg", "postgresql") + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{postgres_server}/{name}"
