"""Real architectures as users run them (issue 23), with tiny random stand-ins (no hub here):
Gemma 2 (final-logit and attention soft-capping, a sliding window shorter than the prompts)
with Gemma Scope-style JumpReLU SAEs given as a `{layer}` pattern, and GPT-2 (no pad token,
`attn.c_proj` attention) with a standard ReLU SAE on `hook_resid_pre`; every bench stage runs
end to end on each and writes the report, both models side by side in one results folder."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory, architecture_dirs):
    import torch
    from sae_lens import SAE
    from sae_lens.saes.jumprelu_sae import JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.standard_sae import StandardSAEConfig

    root = tmp_path_factory.mktemp("bench-architectures")
    torch.manual_seed(0)
    models = {name: architecture_dirs[name] for name in ("gemma2", "gpt2")}

    def fill(sae, threshold: float | None = None):
        with torch.no_grad():
            for name, p in sae.named_parameters():
                p.copy_(torch.full_like(p, threshold) if "threshold" in name else torch.randn_like(p) * 0.1)
        return sae

    for layer in range(4):  # Gemma Scope: one JumpReLU SAE per layer, hook names of TransformerLens
        config = JumpReLUSAEConfig(d_in=64, d_sae=32, metadata=SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_post"))
        fill(SAE.from_dict(config.to_dict()), 0.01).save_model(root / "gemma-scope" / f"layer_{layer}")
    config = StandardSAEConfig(d_in=64, d_sae=32, metadata=SAEMetadata(hook_name="blocks.3.hook_resid_pre"))
    fill(SAE.from_dict(config.to_dict())).save_model(root / "gpt2-res")
    return root, models


def _bench(root: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        str(BIN / "crl-bench"),
        "bench",
        "--tasks",
        "arith_mc",
        "--limit",
        "3",
        "--budget",
        "smoke",
        "--vector-val-limit",
        "4",
        "--sae-sequences",
        "32",
        "--ladder",
        "none",
        "--no-corrsteer",
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--results-dir",
        str(root / "results"),
        "--runs-dir",
        str(root / "runs"),
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=root)


def test_bench_runs_every_stage_on_gemma2_and_gpt2_stand_ins(stand_ins):
    root, models = stand_ins
    gemma = _bench(
        root,
        "--model",
        models["gemma2"],
        "--sae",
        str(root / "gemma-scope" / "layer_{layer}"),
        "--vectors",
        "mean_diff",
    )
    assert gemma.returncode == 0, gemma.stderr[-4000:]
    gpt = _bench(root, "--model", models["gpt2"], "--sae", str(root / "gpt2-res"), "--vectors", "none")
    assert gpt.returncode == 0, gpt.stderr[-4000:]
    # one SAE for one layer: the multi-layer setting is skipped with one line saying what to pass
    assert "CRL multi-layer skipped: --sae" in gpt.stderr and "{layer}" in gpt.stderr
    rows = json.loads((root / "results" / "leaderboard.json").read_text())["rows"]
    found = {(Path(r["model"]).name, r["method"], r["setting"]) for r in rows}
    assert found >= {
        ("gemma-2-tiny", "base", "-"),
        ("gemma-2-tiny", "vector", "mean_diff"),
        ("gemma-2-tiny", "rlvr", "-"),
        ("gemma-2-tiny", "crl", "one-token"),
        ("gemma-2-tiny", "crl", "multi-layer"),
        ("gpt2-tiny", "base", "-"),
        ("gpt2-tiny", "rlvr", "-"),
        ("gpt2-tiny", "crl", "one-token"),
    }
    for name in ("gemma-2-tiny", "gpt2-tiny"):  # each model's own analyses, side by side
        folder = root / "results" / name
        circuits = json.loads((folder / "circuits.json").read_text())["tasks"]["arith_mc"]
        assert circuits and (folder / "figures" / "accuracy.png").exists()
    layers = json.loads(
        next((root / "runs").glob("gemma-2-tiny/crl-multi-layer/arith_mc/seed0/config.json")).read_text()
    )
    assert layers["layers_resolved"] == [1, 2] and set(layers["saes"]) == {
        "1",
        "2",
    }  # one SAE per layer, from the pattern
    page = (root / "results" / "report.html").read_text()
    assert "gemma-2-tiny" in page and "gpt2-tiny" in page
