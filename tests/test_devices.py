"""Every stage honours --device (issue 23): a bench run given a device name that no default
produces (`cpu:0`, which torch reads as the CPU) records the device every model, wrapper and
SAE is asked to load onto; a stage that ignored --device would ask for `cpu` (or cuda)."""

import pytest

pytestmark = pytest.mark.slow


def test_every_bench_stage_loads_onto_the_device_it_was_given(tiny_dir, tiny_sae_dir, tmp_path, monkeypatch):
    from crl_bench import bench
    from crl_bench.bench_config import BenchConfig
    from harness import lm_models, models
    from harness.sae import provision

    seen: list[tuple[str, str]] = []

    def recording(name, original):
        def wrapper(*args, **kwargs):
            # a torch.device comes from an already loaded model (the same device, by construction);
            # a name comes from the run's settings or a default
            if not hasattr(kwargs.get("device"), "type"):
                seen.append((name, str(kwargs.get("device"))))
            if kwargs.get("device") == "cpu:0":  # safetensors and lm-eval name the CPU "cpu" only
                kwargs["device"] = "cpu"
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(models, "load_causal_lm", recording("load_causal_lm", models.load_causal_lm))
    import harness.sae

    sae_loader = recording("load_sae", provision.load_sae)
    monkeypatch.setattr(provision, "load_sae", sae_loader)
    monkeypatch.setattr(harness.sae, "load_sae", sae_loader)
    init = lm_models.LeanHFLM.__init__
    monkeypatch.setattr(
        lm_models.LeanHFLM, "__init__", lambda self, *a, **k: recording("LeanHFLM", init)(self, *a, **k)
    )
    config = BenchConfig(
        model=tiny_dir,
        tasks=["arith_mc"],
        limit=2,
        budget="smoke",
        sae=tiny_sae_dir,
        sae_sequences=32,
        vectors=["mean_diff"],
        vector_val_limit=2,
        crl=["one-token"],
        ladder=[],
        corrsteer=False,
        device="cpu:0",
        dtype="float32",
        results_dir=str(tmp_path / "results"),
        runs_dir=str(tmp_path / "runs"),
    )
    bench.run(config)
    stages = {name for name, _ in seen}
    assert {"load_causal_lm", "load_sae", "LeanHFLM"} <= stages
    assert [s for s in seen if s[1] != "cpu:0"] == []  # no stage fell back to a default device
