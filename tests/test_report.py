"""The run directory: the resolved config it writes can be passed back to repeat the run."""

from __future__ import annotations

from magrpo import MAGRPOConfig


def test_a_run_directorys_config_yaml_is_reusable(tmp_path):
    from magrpo.report import RunLog

    cfg = MAGRPOConfig(num_generations=3, learning_rate=3e-6)
    RunLog(tmp_path, cfg, extra={"task": "coding", "models": ["default", "default"]})
    assert MAGRPOConfig.from_yaml(tmp_path / "config.yaml") == cfg
