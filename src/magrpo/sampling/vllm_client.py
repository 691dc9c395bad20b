"""A trainer's side of a rollout server (``vllm_mode="server"``): :class:`RemoteEngine`, an engine
that lives in a ``magrpo vllm-serve`` process (:mod:`magrpo.sampling.vllm_server`), behind the same
calls as the trainer's own engines, so the vLLM sampler drives it unchanged.

- **Which engine serves which agent.** The trainer's agents are grouped as its own engines would
  be (one group per distinct model object: a full agent alone, LoRA agents on one base together);
  each group takes the next engine of its server whose model has the group's shape (type, vocab,
  sizes) and, for LoRA agents, serves adapters. Checked before the first step, with a message that
  names the URL and what is missing.
- **The current policy.** After every optimiser step the agent marks its engine stale; before its
  next generation the engine pushes the agent's weights (safetensors, streamed one tensor at a
  time: :mod:`magrpo.sampling.weights`) or its adapter (a zip of peft's folder), and keeps the
  policy version the server answers. Every generation names that version; the server refuses
  another. The first generation of a run (a resumed one too) pushes first: the server holds no
  training state.
- **Faults.** A server that does not answer raises :class:`RolloutServerError` naming its URL; the
  run stops after writing a checkpoint of its last complete step (:mod:`magrpo.run`).
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch

from magrpo.errors import ConfigError, RolloutServerError
from magrpo.grouping import group_by_identity
from magrpo.models.agent import AgentPolicy
from magrpo.sampling.vllm_sampler import AgentRequests, Completion
from magrpo.sampling.vllm_server import model_shape
from magrpo.sampling.weights import engine_weights, safetensors_chunks


class ServerConnection:
    """HTTP calls to one server, each failure a :class:`RolloutServerError` naming its URL."""

    def __init__(self, url: str, timeout: float) -> None:
        import requests

        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = requests.Session()

    def call(self, method: str, route: str, **options: Any) -> Any:
        import requests

        try:
            response = self.session.request(method, self.url + route, timeout=self.timeout, **options)
        except requests.RequestException as exc:
            raise RolloutServerError(self.url, f"{method} {route} got no answer ({type(exc).__name__}: {exc})") from exc
        if response.status_code != 200:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise RolloutServerError(self.url, f"{method} {route} answered {response.status_code}: {detail}")
        return response.json()


class RemoteEngine:
    """One engine of a rollout server serving ``agents`` (one full agent, or LoRA agents on one base)."""

    own_process = True  # it decodes elsewhere: the team's engines decode at the same time
    sync_before_generate = True  # rollouts sampled ahead push between updates themselves (magrpo.overlap)
    sleep_mode = False  # the server's engines stay awake: the trainer's update does not share their devices

    def __init__(self, agents: Sequence[AgentPolicy], connection: ServerConnection, model: str, dtype: str) -> None:
        self.agents, self.connection, self.model = list(agents), connection, model
        self.dtype = getattr(torch, dtype)
        self.versions: dict[str, int] = {}
        self.stale = {agent.name for agent in self.agents}  # the server holds no training state: push first

    @property
    def url(self) -> str:
        return self.connection.url

    def mark_stale(self, agent: AgentPolicy) -> None:
        self.stale.add(agent.name)

    def ensure_current(self) -> None:
        """Every stale agent's weights (or adapter) pushed; the versions the server answered kept."""
        for agent in self.agents:
            if agent.name in self.stale:
                self.versions[agent.name] = self.push(agent)
        self.stale.clear()

    def push(self, agent: AgentPolicy) -> int:
        """The agent's current weights or adapter to the server; the policy version it now holds."""
        if agent.adapter is not None:
            answer = self.connection.call("PUT", f"/adapter/{self.model}/{agent.name}", data=adapter_archive(agent))
        else:
            body = safetensors_chunks(engine_weights(agent.model, self.dtype))
            answer = self.connection.call(
                "PUT",
                f"/weights/{self.model}/{agent.name}",
                data=body,
                headers={"Content-Type": "application/octet-stream"},
            )
        return int(answer["version"])

    def generate(self, requests: Sequence[AgentRequests]) -> list[list[list[Completion]]]:
        if self.sync_before_generate:
            self.ensure_current()
        body = {
            "model": self.model,
            "requests": [
                {
                    "agent": agent.name,
                    "version": self.versions[agent.name],
                    "adapter": agent.adapter is not None,
                    "prompts": [list(map(int, p)) for p in prompts],
                    "params": [r.to_dict() for r in params],
                }
                for agent, prompts, params in requests
            ],
        }
        outputs = self.connection.call("POST", "/generate", json=body)["outputs"]
        return [[[(list(ids), list(lps)) for ids, lps in prompt] for prompt in request] for request in outputs]

    def sleep(self) -> None:
        pass  # the server's engines stay awake: the trainer's update does not share their devices

    def wake(self) -> None:
        pass

    def process_ids(self) -> list[int]:
        return []  # on another process (or machine): not this one's memory


def adapter_archive(agent: AgentPolicy) -> bytes:
    """The agent's adapter as peft saves it (config and weights), zipped."""
    from magrpo.models.loading import save_agent

    with tempfile.TemporaryDirectory(prefix="magrpo-adapter-") as folder:
        save_agent(agent, Path(folder))
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zipped:
            for path in sorted(Path(folder).iterdir()):
                if path.is_file():
                    zipped.write(path, path.name)
        return buffer.getvalue()


def attach_remote_engines(
    agents: Sequence[AgentPolicy], urls: str | Sequence[str], timeout: float
) -> list[RemoteEngine]:
    """Each group of agents (as the trainer's own engines would group them) to an engine of its
    server (``urls``: one for the team, or one per agent), checked before any step: the server
    answers, and has an engine of the group's shape (serving adapters for LoRA agents)."""
    per_agent = [urls] * len(agents) if isinstance(urls, str) else list(urls)
    if len(per_agent) != len(agents):
        raise ConfigError(
            f"vllm_server_url has {len(per_agent)} entries for {len(agents)} agents; give one or one per agent"
        )
    connections: dict[str, ServerConnection] = {}
    served: dict[str, list[dict[str, Any]]] = {}
    engines = []
    for group in group_by_identity(agents, key=lambda agent: agent.model):
        members = [agents[i] for i in group]
        group_urls = {per_agent[i] for i in group}
        if len(group_urls) > 1:
            raise ConfigError(
                f"agents {[a.name for a in members]} share one model and so one engine; give them one vllm_server_url"
            )
        url = group_urls.pop()
        if url not in connections:
            connections[url] = ServerConnection(url, timeout)
            connections[url].call("GET", "/health")
            served[url] = list(connections[url].call("GET", "/models")["models"])
        lora = any(agent.adapter is not None for agent in members)
        base = members[0].model.get_base_model() if lora else members[0].model
        wanted = model_shape(base.config)
        fits = [m for m in served[url] if m["shape"] == wanted and (not lora or m["lora_rank"] is not None)]
        if not fits:
            raise ConfigError(
                f"rollout server {url} has no free engine for {[a.name for a in members]} (a model of shape {wanted}"
                f"{', serving LoRA adapters' if lora else ''}); it serves "
                f"{[(m['name'], m['source'], m['shape'], m['lora_rank']) for m in served[url]] or 'nothing more'}: "
                "start it with one --model per fully trained agent (LoRA agents on one base: one --model with "
                "--lora-rank)"
            )
        model = fits[0]
        served[url].remove(model)  # an engine serves one group: a full agent's weights are its own
        engine = RemoteEngine(members, connections[url], model["name"], model["dtype"])
        for agent in members:
            agent.rollout_engine = engine
        engines.append(engine)
    return engines


__all__ = ["RemoteEngine", "RolloutServerError", "ServerConnection", "adapter_archive", "attach_remote_engines"]
