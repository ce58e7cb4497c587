"""Models as users type them (issue 23): short names resolve to hub ids, errors tell offline,
gated and not-found apart, and the user's Hugging Face login stays readable."""

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def test_short_names_resolve_to_hub_ids_and_share_a_results_folder():
    from harness.models import SHORT_NAMES, model_slug, resolve_model

    for short, hub in [
        ("gemma-2-2b", "google/gemma-2-2b"),
        ("gemma-2-9b", "google/gemma-2-9b"),
        ("gpt2", "openai-community/gpt2"),
        ("gpt2-small", "openai-community/gpt2"),
    ]:
        assert SHORT_NAMES[short] == hub and resolve_model(short) == hub
        assert model_slug(short) == model_slug(hub) == hub.replace("/", "__")
    assert resolve_model("Org/Other-Model") == "Org/Other-Model"  # any hub id passes unchanged


def test_model_info_offline_names_the_hub_id_and_close_matches(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for spec, expected in [
        ("gemma-2-2b", "'gemma-2-2b' (google/gemma-2-2b)"),
        ("gemma-2-2bb", "Did you mean gemma-2-2b"),
    ]:
        done = subprocess.run(
            [str(BIN / "crl-bench"), "model-info", "--model", spec],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert done.returncode == 2 and expected in done.stderr and "offline" in done.stderr
        assert "Traceback" not in done.stderr


def test_hub_errors_say_gated_not_found_or_offline():
    from harness.models import hub_error

    class GatedRepoError(Exception):
        pass

    class RepositoryNotFoundError(Exception):
        pass

    assert "offline" in hub_error("gemma-2-2b", "google/gemma-2-2b", OSError("cannot reach the hub"))
    wrapped = OSError("You are trying to access a gated repo")
    wrapped.__cause__ = GatedRepoError("401 Client Error")
    assert "huggingface-cli login" in hub_error("gemma-2-2b", "google/gemma-2-2b", wrapped)
    missing = OSError("not a valid model identifier")
    missing.__cause__ = RepositoryNotFoundError("404 Client Error")
    message = hub_error("gemma-2-2bx", "gemma-2-2bx", missing)
    assert "not found on Hugging Face" in message and "gemma-2-2b" in message


def test_the_users_login_token_is_read_by_the_harness(tmp_path):
    """`huggingface-cli login` writes $HF_HOME/token; crl-bench moves only the cache folders, so
    the token is found by the hub calls of a process set up as the CLI sets itself up."""
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text("hf_test_token_123\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")} | {
        "HF_HOME": str(home),
        "CRL_BENCH_CACHE": str(tmp_path / "c"),
    }
    code = (
        "from harness.paths import use_cache_for_hf; use_cache_for_hf(); import os\n"
        "from huggingface_hub import constants, get_token\n"
        "print(get_token()); print(constants.HF_HUB_CACHE)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    token, hub_cache = done.stdout.split()
    assert token == "hf_test_token_123" and hub_cache == str(tmp_path / "c" / "huggingface" / "hub")
    makefile = (ROOT / "Makefile").read_text()
    assert "HF_HOME" not in [line.split()[1] for line in makefile.splitlines() if line.startswith("export ")]
