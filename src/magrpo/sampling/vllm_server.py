"""The rollout server (``magrpo vllm-serve``): vLLM engines on devices of their own, behind a small
HTTP API, that sample for a trainer elsewhere (``vllm_mode="server"``: :mod:`magrpo.sampling.vllm_client`).

FastAPI and uvicorn, as TRL's ``vllm-serve``: vLLM's own OpenAI server takes text or ids but has
no route for new weights or policy versions, and its per-request options are not the ones the
update needs (one seed per prompt, the sampled tokens' log-probs of the distribution that
sampled); a route of our own per need is a few lines each.

One engine per ``--model``: a fully trained agent needs an engine of its own (its weights move
apart from its teammate's), LoRA agents on one base share one (``--lora-rank``). The server holds
no training state: every agent's weights (or adapter) are pushed by the trainer, each push a new
**policy version**; a generation names the version it expects, and is refused (409) when the
server holds another, so a sample of a stale or unpushed policy never reaches an update silently.

Routes (JSON unless said otherwise):

- ``GET /health``: ``{"status": "ok", "pid": ...}``
- ``GET /models``: each engine's name, source, dtype, max_model_len, LoRA rank, the shape of its
  model (what a trainer matches its agents against) and each agent's policy version
- ``POST /generate``: ``{"model", "requests": [{"agent", "version", "adapter", "prompts": [[ids]],
  "params": [SamplingRequest]}]}`` -> ``{"outputs": [per request [per prompt [[ids, logprobs]]]]}``,
  all of it in one batch
- ``PUT /weights/{model}/{agent}``: the body is the agent's weights as safetensors (streamed);
  loaded in place, the prefix cache reset -> ``{"version": v}``
- ``PUT /adapter/{model}/{agent}``: the body is a zip of the adapter's folder (peft's files); a new
  LoRA version under a name of its own -> ``{"version": v}``
- ``POST /reset_prefix_cache/{model}``, ``POST /sleep/{model}``, ``POST /wake/{model}`` (CUDA)
"""

# no `from __future__ import annotations` here: FastAPI reads the routes' annotations at runtime, and
# the routes, defined inside create_app, name classes imported there

import io
import itertools
import json
import os
import shutil
import tempfile
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from magrpo.errors import ConfigError
from magrpo.sampling.placement import EnginePlacement
from magrpo.sampling.vllm_sampler import SamplingRequest, vllm_completions

#: the model config fields a trainer's agent and a served model must share
SHAPE_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


def model_shape(config: Any) -> dict[str, Any]:
    """What identifies a model's architecture and size: a trainer matches its agents by it."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {name: getattr(text, name, None) for name in SHAPE_FIELDS}


@dataclass
class HostedEngine:
    """One engine of the server and the policy versions of the agents it has served."""

    name: str
    source: str
    llm: Any
    dtype: str
    max_model_len: int
    lora_rank: int | None
    shape: dict[str, Any]
    workdir: Path
    #: agent -> the policy version it holds: the number of pushes since the server started
    versions: dict[str, int] = field(default_factory=dict)
    #: agent -> its adapter's current LoRARequest
    adapters: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    asleep: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "dtype": self.dtype,
            "max_model_len": self.max_model_len,
            "lora_rank": self.lora_rank,
            "shape": self.shape,
            "versions": dict(self.versions),
        }


class VersionError(Exception):
    """A generation that names another policy version than the one the server holds."""


_lora_ids = itertools.count(1)


def check_version(engine: HostedEngine, agent: str, version: int) -> None:
    held = engine.versions.get(agent, 0)
    if version != held:
        why = "a newer one was pushed since" if version < held else "the push of that version never arrived"
        raise VersionError(
            f"{engine.name}: agent {agent!r} asks for policy version {version}, the server holds version {held} ({why})"
        )


def generate(engine: HostedEngine, requests: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """Every request of ``requests`` in one batch on ``engine`` (versions checked first)."""
    from vllm.inputs import TokensPrompt

    from magrpo.sampling.vllm_engine import check_prompt_lengths

    prompts, params, adapters = [], [], []
    for request in requests:
        agent = request["agent"]
        check_version(engine, agent, int(request["version"]))
        adapter = None
        if request.get("adapter"):
            adapter = engine.adapters.get(agent)
            if adapter is None:
                raise VersionError(f"{engine.name}: agent {agent!r} asks for its adapter, and none was pushed")
        check_prompt_lengths(agent, request["prompts"], engine.max_model_len)
        prompts += [TokensPrompt(prompt_token_ids=list(ids)) for ids in request["prompts"]]
        params += [
            SamplingRequest(**{**p, "stop_token_ids": tuple(p["stop_token_ids"])}).to_vllm() for p in request["params"]
        ]
        adapters += [adapter] * len(request["prompts"])
    lora = adapters if engine.lora_rank is not None else None
    outputs = engine.llm.generate(prompts, params, lora_request=lora, use_tqdm=False)
    split, start = [], 0
    for request in requests:
        split.append(vllm_completions(outputs[start : start + len(request["prompts"])]))
        start += len(request["prompts"])
    return split


def load_weights(engine: HostedEngine, agent: str, path: Path) -> int:
    """The agent's weights from the safetensors file ``path`` into the engine, in place; its next
    policy version."""
    engine.llm.collective_rpc("magrpo_reload_weights", kwargs={"path": str(path)})
    engine.llm.reset_prefix_cache()  # prompt KV of the old weights must not be served again
    engine.versions[agent] = engine.versions.get(agent, 0) + 1
    return engine.versions[agent]


def load_adapter(engine: HostedEngine, agent: str, archive: bytes) -> int:
    """A new version of the agent's adapter (a zip of peft's folder) under a name and id of its own
    (the prefix cache keys prompt blocks by adapter name and path: a reused name would serve stale
    KV); its next policy version."""
    from vllm.lora.request import LoRARequest

    if engine.lora_rank is None:
        raise ConfigError(f"{engine.name} serves no LoRA adapters: start the server with --lora-rank R")
    lora_id = next(_lora_ids)
    folder = engine.workdir / "adapters" / f"{agent}-{lora_id}"
    folder.mkdir(parents=True)
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        for member in zipped.namelist():  # only plain names: nothing is written outside the folder
            if Path(member).name != member:
                raise ConfigError(f"adapter archive member {member!r} is not a plain file name")
        zipped.extractall(folder)
    request = LoRARequest(lora_name=f"{agent}-{lora_id}", lora_int_id=lora_id, lora_path=str(folder))
    engine.llm.llm_engine.add_lora(request)
    old = engine.adapters.get(agent)
    engine.adapters[agent] = request
    if old is not None:
        engine.llm.llm_engine.remove_lora(old.lora_int_id)
        shutil.rmtree(old.lora_path, ignore_errors=True)
    engine.llm.reset_prefix_cache()
    engine.versions[agent] = engine.versions.get(agent, 0) + 1
    return engine.versions[agent]


def create_app(engines: dict[str, HostedEngine]) -> Any:
    """The HTTP API over ``engines`` (by name)."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool

    app = FastAPI(title="magrpo rollout server")

    def engine_named(name: str) -> HostedEngine:
        if name not in engines:
            raise HTTPException(404, f"no model {name!r} here; the server has {sorted(engines)}")
        return engines[name]

    def locked(engine: HostedEngine, call, *args):
        with engine.lock:  # an engine takes one call at a time
            try:
                return call(engine, *args)
            except VersionError as exc:
                raise HTTPException(409, str(exc)) from exc
            except ConfigError as exc:
                raise HTTPException(400, str(exc)) from exc

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "pid": os.getpid()}

    @app.get("/models")
    def models() -> dict[str, Any]:
        return {"models": [engine.describe() for engine in engines.values()]}

    @app.post("/generate")
    def generate_route(body: dict[str, Any]) -> dict[str, Any]:
        engine = engine_named(body["model"])
        if engine.asleep:
            locked(engine, wake)
        return {"outputs": locked(engine, generate, body["requests"])}

    @app.put("/weights/{model}/{agent}")
    async def weights_route(model: str, agent: str, request: Request) -> dict[str, Any]:
        engine = engine_named(model)
        shared = Path("/dev/shm") if Path("/dev/shm").is_dir() else engine.workdir
        handle, name = tempfile.mkstemp(prefix="magrpo-weights-", suffix=".safetensors", dir=shared)
        path = Path(name)
        try:
            with os.fdopen(handle, "wb") as out:
                async for chunk in request.stream():  # streamed to memory-backed disk, never held twice
                    out.write(chunk)
            version = await run_in_threadpool(locked, engine, load_weights, agent, path)
        finally:
            path.unlink(missing_ok=True)
        return {"version": version}

    @app.put("/adapter/{model}/{agent}")
    async def adapter_route(model: str, agent: str, request: Request) -> dict[str, Any]:
        engine = engine_named(model)
        archive = await request.body()
        return {"version": await run_in_threadpool(locked, engine, load_adapter, agent, archive)}

    @app.post("/reset_prefix_cache/{model}")
    def reset_route(model: str) -> dict[str, Any]:
        engine = engine_named(model)
        locked(engine, lambda e: e.llm.reset_prefix_cache())
        return {"status": "ok"}

    @app.post("/sleep/{model}")
    def sleep_route(model: str) -> dict[str, Any]:
        engine = engine_named(model)
        locked(engine, sleep)
        return {"asleep": engine.asleep}

    @app.post("/wake/{model}")
    def wake_route(model: str) -> dict[str, Any]:
        engine = engine_named(model)
        locked(engine, wake)
        return {"asleep": engine.asleep}

    return app


def sleep(engine: HostedEngine) -> None:
    """Free the engine's GPU memory (CUDA sleep mode; nothing on the CPU)."""
    if engine.llm.llm_engine.vllm_config.model_config.enable_sleep_mode and not engine.asleep:
        engine.llm.sleep(level=1)
        engine.asleep = True


def wake(engine: HostedEngine) -> None:
    if engine.asleep:
        engine.llm.wake_up()
        engine.asleep = False


@dataclass(frozen=True)
class ServedModel:
    """One ``--model`` of ``magrpo vllm-serve`` and its options."""

    spec: str
    placement: EnginePlacement
    dtype: str = "auto"
    max_model_len: int = 4096
    lora_rank: int | None = None
    max_loras: int = 4


def start_engines(
    models: Sequence[ServedModel],
    *,
    seed: int,
    kv_cache_gib: float,
    gpu_memory_utilization: float | None,
    scratch: Path,
) -> dict[str, HostedEngine]:
    """One engine per model, each in a process of its own where there are several (two engines in
    one process cannot decode at the same time), named by its place: ``model-0``, ``model-1``, ...
    Each writes its copy of the weights and its adapters under ``scratch``."""
    from magrpo.sampling.vllm_engine import build_llm, own_engine_processes, share_of_cores, usable_cores

    own = own_engine_processes("auto", [m.placement for m in models])
    engines = {}
    for index, served in enumerate(models):
        placement = served.placement
        if own and placement.device_type == "cpu" and not placement.indices:
            placement = EnginePlacement("cpu", tuple(share_of_cores(index, len(models), usable_cores())))
        workdir = scratch / f"model-{index}"
        folder, config, dtype = served_model_folder(served, workdir / "base")
        limit = getattr(config, "max_position_embeddings", None) or served.max_model_len
        max_model_len = min(served.max_model_len, limit)  # at most the model's own limit
        llm = build_llm(
            folder,
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            placement=placement,
            own_process=own,
            lora_rank=served.lora_rank,
            max_loras=served.max_loras,
            kv_cache_gib=kv_cache_gib,
            gpu_memory_utilization=gpu_memory_utilization or 0.9 / len(models),
            sleep_mode=placement.device_type == "cuda",
            scratch=(workdir,),
        )
        name = f"model-{index}"
        engines[name] = HostedEngine(
            name,
            served.spec,
            llm,
            str(dtype).removeprefix("torch."),
            max_model_len,
            served.lora_rank,
            model_shape(config),
            workdir,
        )
    return engines


def served_model_folder(served: ServedModel, destination: Path) -> tuple[Path, Any, torch.dtype]:
    """The checkpoint folder an engine starts from, its config and the engine's dtype: the model
    loaded as a trainer loads it (the bundled model, a preset, a folder, a GGUF file) and written
    as the colocated engines write theirs (its architecture named, a tied head once)."""
    from magrpo.models.loading import load_model_and_tokenizer
    from magrpo.sampling.vllm_engine import _write_base_model

    device_type = served.placement.device_type
    dtype = (
        (torch.bfloat16 if device_type == "cuda" else torch.float32)
        if served.dtype == "auto"
        else getattr(torch, served.dtype)
    )
    model, tokenizer = load_model_and_tokenizer(served.spec, device=torch.device("cpu"), dtype=dtype)
    _write_base_model(model, tokenizer, destination)
    config = model.config
    del model
    return destination, config, dtype


def serve(models: Sequence[ServedModel], *, host: str, port: int, seed: int, kv_cache_gib: float,
          gpu_memory_utilization: float | None, log_level: str = "warning",
          scratch_dir: Path | None = None) -> None:  # fmt: skip
    """Start the engines, then answer on ``host:port`` until stopped (Ctrl-C or SIGTERM). The
    engines' copies of the weights, a model's size each, are written to a folder of their own
    under ``scratch_dir`` (default: the system's temporary folder), removed when the server stops."""
    import signal
    import threading

    import uvicorn

    scratch = Path(tempfile.mkdtemp(prefix="magrpo-serve-", dir=scratch_dir))
    # SIGTERM's default would end the process before the folder is removed; uvicorn re-raises the
    # signal it stopped on once it has shut down, which this handler turns into an exit (signals
    # reach the main thread only: a server in another thread is stopped by its caller)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        engines = start_engines(
            models, seed=seed, kv_cache_gib=kv_cache_gib, gpu_memory_utilization=gpu_memory_utilization, scratch=scratch
        )
        print(
            json.dumps({"serving": [e.describe() for e in engines.values()], "url": f"http://{host}:{port}"}),
            flush=True,
        )
        uvicorn.run(create_app(engines), host=host, port=port, log_level=log_level)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM does not cut the clean-up short
        shutil.rmtree(scratch, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


class ServerProcess:
    """``magrpo vllm-serve`` in a process of its own (its own process group, so its engine
    processes end with it), on ``host:port`` (port 0: a free one), ready once ``/health`` answers.
    It never outlives the process that started it, however that one ends (``kill -9`` too): an
    :class:`~magrpo.sampling.engine_watch.EngineWatch` ends the server and its engines then, and
    removes the folder (under ``scratch_dir``, default the system's temporary folder) where the
    engines keep their copies of the weights::

        with ServerProcess(["default", "default"], "--kv-cache-gib", "0.5") as server:
            config = MAGRPOConfig(rollout_backend="vllm", vllm_mode="server", vllm_server_url=server.url, ...)
    """

    def __init__(
        self,
        models: Sequence[str],
        *options: str,
        host: str = "127.0.0.1",
        port: int = 0,
        log: Path | None = None,
        scratch_dir: Path | None = None,
    ) -> None:
        if "--scratch-dir" in options:
            raise ValueError("give ServerProcess(scratch_dir=...), not --scratch-dir: it removes its folder itself")
        self.models, self.options, self.host = list(models), options, host
        self.scratch_dir = scratch_dir
        self.scratch: Path | None = None
        self.port = port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.log = log
        self.proc: Any = None
        self.watch: Any = None

    def start(self, timeout: float = 300.0) -> "ServerProcess":
        import subprocess
        import sys
        import time

        import requests

        from magrpo.sampling.engine_watch import EngineWatch

        command = [sys.executable, "-m", "magrpo.cli", "vllm-serve", "--host", self.host, "--port", str(self.port)]
        for model in self.models:
            command += ["--model", model]
        self.scratch = Path(tempfile.mkdtemp(prefix="magrpo-serve-", dir=self.scratch_dir))
        command += ["--scratch-dir", str(self.scratch)]
        out = self.log.open("a") if self.log is not None else subprocess.DEVNULL
        # the server and its engines carry its marker: they end with this process, and their folder goes
        self.watch = EngineWatch(remove=[self.scratch])
        self.proc = subprocess.Popen(
            [*command, *self.options],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **self.watch.environment},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-3000:] if self.log is not None else "(no log kept)"
                self.stop()  # its folder and watcher go too
                raise RuntimeError(f"magrpo vllm-serve exited with {self.proc.returncode} before answering:\n{tail}")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"magrpo vllm-serve did not answer on {self.url} within {timeout:.0f} s")

    def process_ids(self) -> list[int]:
        """The server's process and every process below it (its engines'), Linux."""
        found, pending = [], [self.proc.pid] if self.proc is not None else []
        while pending:
            pid = pending.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*/children"):
                pending += [int(child) for child in task.read_text().split()]
        return found

    def stop(self, sig: int | None = None) -> None:
        import signal
        import subprocess

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig or signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self._release_watch()
        if self.scratch is not None:  # the server removes its own when it stops cleanly; not when killed
            shutil.rmtree(self.scratch, ignore_errors=True)

    def _release_watch(self) -> None:
        """Let the watcher go: it ends whatever of the server is left (after a grace) and exits."""
        if self.watch is not None:
            self.watch.release()
            self.watch = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


__all__ = [
    "HostedEngine",
    "ServerProcess",
    "free_port",
    "ServedModel",
    "VersionError",
    "create_app",
    "model_shape",
    "serve",
    "start_engines",
]
