"""The vLLM configurations ``lasa serve --engine vllm``, ``engine_kwargs`` and ``lasa
vllm-args`` produce can run the steering slots (issue 18.1): no CUDA graphs, explicitly, so
that vLLM keeps it on CUDA too (it fills only an unset ``cudagraph_mode``; on the CPU build
it is NONE anyway). No engine starts here; the refusal of an engine that has CUDA graphs on
is tested on a stand-in config in ``tests/test_serve_engine.py``."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here (make setup-vllm)")

from lasa_steer.engines.vllm.checks import problems  # noqa: E402
from lasa_steer.engines.vllm.config import server_args  # noqa: E402

pytestmark = pytest.mark.vllm


def test_plain_server_flags_turn_cuda_graphs_off(tmp_path):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from lasa_steer.model.loading import resolve

    source, _ = resolve("smollm2-135m-instruct")  # a local folder: no hub look-up
    parser = make_arg_parser(FlexibleArgumentParser())
    args = parser.parse_args(["--model", source,
                              *server_args({"a": tmp_path / "a.safetensors"})])
    engine = AsyncEngineArgs.from_cli_args(args)
    assert engine.compilation_config.cudagraph_mode.name == "NONE"
    # chunked prefill stays off (a plain server may run tensor-parallel workers); prefix
    # caching at vLLM's default (each request gets cache terms of its steering)
    assert engine.enable_chunked_prefill is False and engine.enable_prefix_caching is not False


def test_lasa_serve_engine_args_turn_cuda_graphs_off():
    from vllm.config import CompilationConfig
    from vllm.engine.arg_utils import AsyncEngineArgs

    from lasa_serve.runtime import ServerConfig
    from lasa_serve.vllm_backend import _engine_args
    from lasa_steer.model.loading import resolve

    source, _ = resolve("smollm2-135m-instruct")
    kwargs = _engine_args(ServerConfig(max_batch=4), source, 256)
    # what a CUDA build starts from: the explicit NONE, not the unset default
    assert CompilationConfig(**kwargs["compilation_config"]).cudagraph_mode.name == "NONE"
    assert CompilationConfig().cudagraph_mode is None
    import vllm

    config = AsyncEngineArgs(**kwargs).create_engine_config()
    assert config.compilation_config.cudagraph_mode.name == "NONE"
    assert problems(config, vllm.__version__) == []
    # chunked prefill and prefix caching on by default; the switches turn them off
    assert config.scheduler_config.enable_chunked_prefill
    assert config.cache_config.enable_prefix_caching
    assert config.scheduler_config.max_num_batched_tokens == 2048
    off = _engine_args(ServerConfig(max_batch=4, chunked_prefill=False, prefix_caching=False),
                       source, 4096)
    config = AsyncEngineArgs(**off).create_engine_config()
    assert not config.scheduler_config.enable_chunked_prefill
    assert not config.cache_config.enable_prefix_caching
    assert config.scheduler_config.max_num_batched_tokens == 4096
    assert problems(config, vllm.__version__) == []
