"""``lasa serve --engine vllm`` without vLLM, and the vLLM engine's pure parts (the flags it
refuses, the steering it hands the plugin). The engine itself is tested in
``tests/vllm_plugin/test_vllm_serve.py`` (``.venv-vllm``)."""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("fastapi")

from lasa_serve.runtime import ServerConfig  # noqa: E402
from lasa_serve.vllm_backend import plugin_args, refused_flags  # noqa: E402
from lasa_steer.steering.rows import OFF, RowSteering  # noqa: E402


def test_engine_vllm_without_vllm_says_what_to_install(capsys):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed in this environment")
    from lasa_steer.cli.main import main

    assert main(["serve", "--engine", "vllm", "--port", "1"]) == 1
    err = capsys.readouterr().err
    assert "--engine vllm needs vLLM" in err
    assert "`vllm` extra" in err and "make setup-vllm" in err


def test_flags_without_a_vllm_meaning_are_refused():
    assert refused_flags(ServerConfig()) == []
    refused = refused_flags(ServerConfig(device="cuda:1", threads=2))
    assert [r.split(":")[0] for r in refused] == ["--device", "--threads"]


def test_the_plugin_gets_the_resolved_settings_explicitly():
    assert plugin_args(OFF, None) == {"lasa_mode": "off"}
    assert plugin_args(OFF, "v") == {"lasa_mode": "off"}
    from types import SimpleNamespace as NS

    row = RowSteering(vector=NS(gate=None), strength=2.5, mode="gate",  # type: ignore
                      action="add", direction="refusal")
    assert plugin_args(row, "v") == {"lasa_vector": "v", "lasa_mode": "gate",
                                     "lasa_action": "add", "lasa_strength": 2.5,
                                     "lasa_direction": "refusal"}
    assert plugin_args(row, None) == {"lasa_mode": "off"}
    # the row's vector already sits at the resolved operating point: the plugin gets its name
    at_point = RowSteering(vector=NS(gate=NS(operating_point="recall")),  # type: ignore
                           strength=2.5, mode="gate", action="add", direction="refusal")
    assert plugin_args(at_point, "v")["lasa_operating_point"] == "recall"


def _engine_config(cudagraph_mode: str):
    """A stand-in for the started engine's ``VllmConfig`` as vLLM builds it on CUDA with
    what ``lasa serve`` passes (slots, logits processor, no chunked prefill or prefix
    caching), ``cudagraph_mode`` as given."""
    from types import SimpleNamespace as NS

    from lasa_steer.engines.vllm.config import CONFIG_KEY, LOGITS_PROCESSOR

    return NS(additional_config={CONFIG_KEY: 1},
              model_config=NS(logits_processors=[LOGITS_PROCESSOR]),
              compilation_config=NS(cudagraph_mode=f"CUDAGraphMode.{cudagraph_mode}"),
              scheduler_config=NS(enable_chunked_prefill=False),
              cache_config=NS(enable_prefix_caching=False),
              parallel_config=NS(pipeline_parallel_size=1), speculative_config=None,
              use_v2_model_runner=False)


def test_engine_with_cuda_graphs_refuses_to_serve():
    """vLLM's CUDA default (FULL_AND_PIECEWISE) would replay graphs without the steering
    slots: the server refuses to start rather than serve unsteered."""
    from lasa_serve.vllm_backend import refuse_unsteerable
    from lasa_steer import LasaError

    refuse_unsteerable(_engine_config("NONE"), "0.32.0")
    with pytest.raises(LasaError, match="refusing to serve: CUDA graphs are on"):
        refuse_unsteerable(_engine_config("FULL_AND_PIECEWISE"), "0.32.0")


def test_engine_args_turn_cuda_graphs_off():
    """What ``lasa serve --engine vllm`` and ``engine_kwargs`` pass: cudagraph_mode NONE
    (an explicit value that vLLM keeps on CUDA; it fills only an unset one)."""
    from lasa_steer.engines.vllm import ENGINE_KWARGS

    assert ENGINE_KWARGS["compilation_config"] == {"cudagraph_mode": "NONE"}


def test_kv_space_is_bounded_by_default():
    """vLLM's CPU default took 19.8 of 23.5 GiB (issue 20); lasa serve's is --max-batch full
    contexts of the model's KV bytes, at most 3 GiB and a quarter of memory, at least one
    context; --kv-space wins over VLLM_CPU_KVCACHE_SPACE, which wins over the default."""
    from types import SimpleNamespace as NS

    from lasa_serve.kv_space import GIB, bytes_per_token, choose

    smol = NS(num_attention_heads=9, num_key_value_heads=3, hidden_size=576,
              num_hidden_layers=30)  # SmolLM2-135M
    assert bytes_per_token(smol, "float32") == 2 * 30 * 3 * 64 * 4
    assert bytes_per_token(smol, "bfloat16") == 2 * 30 * 3 * 64 * 2
    big = choose(None, True, smol, "float32", 32, 8192, env={}, total_memory=24 * GIB)
    assert big.bytes == 3 * GIB and big.source.startswith("3.00 GiB")
    assert choose(None, True, smol, "float32", 32, 8192, env={},
                  total_memory=8 * GIB).bytes == 2 * GIB  # a quarter of an 8 GiB machine
    small = choose(None, True, smol, "float32", 2, 512, env={}, total_memory=24 * GIB)
    assert small.bytes == 2 * 512 * 46080
    assert choose(None, True, smol, "float32", 1, 8192, env={},
                  total_memory=GIB).bytes == 8192 * 46080  # one context at least
    env = {"VLLM_CPU_KVCACHE_SPACE": "2"}
    assert choose(None, True, smol, "float32", 32, 8192, env=env).bytes is None
    flag = choose(1.5, True, smol, "float32", 32, 8192, env=env)
    assert flag.bytes == int(1.5 * GIB) and flag.drop_env
    assert choose(None, False, smol, "float32", 32, 8192, env={}).bytes is None  # GPU
    from lasa_steer import LasaError

    with pytest.raises(LasaError, match="--kv-space"):
        choose(0, True, smol, "float32", 32, 8192, env={})
