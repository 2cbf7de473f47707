"""The vLLM plugin's request settings (``lasa_*`` extra_args) and its engine-config checks,
without vLLM: these modules never import it."""

from __future__ import annotations

import json
from types import SimpleNamespace as NS

import pytest

from lasa_steer import SteeringConfigError, SteeringVector
from lasa_steer.engines.vllm import external_id, xargs
from lasa_steer.engines.vllm.checks import cuda_graphs_allowed, cudagraph_mode, problems
from lasa_steer.engines.vllm.config import (CONFIG_KEY, LOGITS_PROCESSOR, SLOTS_VERSION,
                                            SlotOptions, slot_options,
                                            WORKER_EXTENSION, LoadInstall, config_entry,
                                            has_logits_processor, load_install, parse_entry,
                                            server_args, wants_slots)
from lasa_steer.engines.vllm.params import Defaults, parse, resolve, resolve_names
from lasa_steer.steering.openers import Openers
from lasa_steer.vector.shipped import SHIPPED_DIR

VECTOR = SHIPPED_DIR / "smollm2-135m-instruct.safetensors"


@pytest.fixture(scope="module")
def vectors():
    return {"smollm2": SteeringVector.load(VECTOR)}


def test_xargs_round_trip_and_defaults(vectors):
    args = xargs(vector="smollm2", mode="gate", action="add", strength=2)
    assert args == {"lasa_vector": "smollm2", "lasa_mode": "gate", "lasa_action": "add",
                    "lasa_strength": 2}
    row = resolve(parse(args), vectors, Defaults())
    assert (row.mode, row.action, row.strength) == ("gate", "add", 2.0)
    assert row.gate_point() == ("resid_post", 17)
    # no lasa_* keys: the install's defaults (off without a default vector)
    assert resolve(parse({"other_plugin": 1}), vectors, Defaults()).mode == "off"
    row = resolve(parse(None), vectors, Defaults(vector="smollm2", action="project"))
    assert (row.mode, row.action, row.strength) == ("gate", "project", 1.0)
    # mode off names a vector without using it
    assert resolve(parse(xargs(vector="smollm2", mode="off")), vectors, Defaults()).mode == "off"


@pytest.mark.parametrize("bad, needle", [
    ({"lasa_mode": "sometimes"}, "lasa_mode"),
    ({"lasa_action": "shout"}, "lasa_action"),
    ({"lasa_strength": float("nan")}, "lasa_strength"),
    ({"lasa_strength": True}, "lasa_strength"),
    ({"lasa_strength": 1e6}, "lasa_strength"),
    ({"lasa_vector": "../etc/passwd"}, "lasa_vector"),
    ({"lasa_direction": ""}, "lasa_direction"),
    ({"lasa_stength": 1}, "unknown steering key"),
])
def test_bad_settings_name_the_key(bad, needle):
    with pytest.raises(SteeringConfigError, match=needle) as err:
        parse(bad)
    # the key as a field (vLLM's 400 says param vllm_xargs.<field>); none for unknown keys
    assert err.value.field == (needle if needle.startswith("lasa_") else None)


def test_resolution_errors_name_the_setting(vectors):
    with pytest.raises(SteeringConfigError, match="no such vector"):
        resolve(parse(xargs(vector="nope")), vectors, Defaults())
    with pytest.raises(SteeringConfigError, match="no such vector") as err:
        resolve_names(parse(xargs(vector="nope")), frozenset(vectors), Defaults())
    assert err.value.field == "lasa_vector"
    # the shipped file's own action is 'refuse': it needs the served tokenizer's openers
    with pytest.raises(SteeringConfigError, match="tokenizer"):
        resolve(parse(xargs(vector="smollm2")), vectors, Defaults())
    row = resolve(parse(xargs(vector="smollm2")), vectors, Defaults(),
                  Openers({"en": (5, 6)}, end_of_turn=2))
    assert (row.action, row.strength, row.forces_opener) == ("refuse", 0.0, True)
    with pytest.raises(SteeringConfigError, match="direction"):
        resolve(parse(xargs(vector="smollm2", action="add", direction="nope")), vectors,
                Defaults())


def _config(**changes):
    base = dict(compilation_config=NS(mode=0, cudagraph_mode="NONE"),
                scheduler_config=NS(enable_chunked_prefill=False),
                cache_config=NS(enable_prefix_caching=False),
                parallel_config=NS(pipeline_parallel_size=1, tensor_parallel_size=2),
                speculative_config=None, use_v2_model_runner=False,
                additional_config={"lasa_steer": 1},
                model_config=NS(logits_processors=[LOGITS_PROCESSOR]))
    return NS(**{**base, **changes})


def test_engine_configs_that_cannot_be_exact_are_refused():
    assert problems(_config(), "0.32.0") == []  # tensor parallel is allowed
    # torch.compile without CUDA graphs (vLLM's CPU default) is fine: the slots are in
    # the graph
    assert problems(_config(compilation_config=NS(mode=2, cudagraph_mode="NONE")),
                    "0.32.0") == []
    cases = {
        "CUDA graphs": _config(compilation_config=NS(mode=3, cudagraph_mode="PIECEWISE")),
        "steering slots": _config(additional_config=None),
        "host steering": _config(scheduler_config=NS(enable_chunked_prefill=True),
                                 additional_config={"lasa_steer": {"steering": "host"}}),
        "2 workers": _config(scheduler_config=NS(enable_chunked_prefill=True),
                             parallel_config=NS(pipeline_parallel_size=1, world_size=2,
                                                distributed_executor_backend="mp")),
        "pipeline_parallel_size=2": _config(parallel_config=NS(pipeline_parallel_size=2)),
        "speculative": _config(speculative_config=NS()),
        "V2 model runner": _config(use_v2_model_runner=True),
        "logits processor": _config(model_config=NS(logits_processors=None)),
    }
    for needle, cfg in cases.items():
        found = problems(cfg, "0.32.0")
        assert len(found) == 1 and needle in found[0], (needle, found)
    assert "not a tested release" in problems(_config(), "0.33.1")[0]
    # chunked prefill (graph steering, one in-process worker) and prefix caching are exact
    for backend in ("uni", "mp"):  # in the engine core's process, or a worker process
        one = NS(pipeline_parallel_size=1, world_size=1, distributed_executor_backend=backend)
        assert problems(_config(scheduler_config=NS(enable_chunked_prefill=True),
                                cache_config=NS(enable_prefix_caching=True),
                                parallel_config=one), "0.32.0") == []


def test_cuda_graphs_need_the_graph_steering_and_its_switch():
    """CUDA graphs replay only the graph steering, and only behind the cuda_graphs switch
    (untested on GPU); a launcher asks cuda_graphs_allowed whether to turn them off."""
    graphs = NS(mode=3, cudagraph_mode=NS(name="FULL_AND_PIECEWISE"))
    on = {"lasa_steer": {"slots": SLOTS_VERSION, "cuda_graphs": True}}
    assert cudagraph_mode(_config(compilation_config=graphs)) == "FULL_AND_PIECEWISE"
    assert cudagraph_mode(_config()) == "NONE"
    assert not cuda_graphs_allowed(_config())
    assert cuda_graphs_allowed(_config(additional_config=on))
    assert problems(_config(compilation_config=graphs, additional_config=on), "0.32.0") == []
    found = problems(_config(compilation_config=graphs), "0.32.0")
    assert len(found) == 1 and "cuda_graphs" in found[0] and "untested on GPU" in found[0]
    host = {"lasa_steer": {"slots": SLOTS_VERSION, "cuda_graphs": True, "steering": "host"}}
    found = problems(_config(compilation_config=graphs, additional_config=host), "0.32.0")
    assert any("needs steering 'graph'" in f for f in found)
    bad = {"lasa_steer": {"steering": "sometimes"}}
    assert any("'steering'" in f for f in problems(_config(additional_config=bad), "0.32.0"))
    assert slot_options(_config()) == SlotOptions("graph", False)
    assert config_entry(options=SlotOptions("host")) == {"slots": SLOTS_VERSION,
                                                         "steering": "host"}


def test_the_logits_processor_is_found_by_name_or_class():
    class Mine:  # the class vLLM was given, or a subclass of it: matched by qualified name
        pass

    Mine.__module__, Mine.__qualname__ = LOGITS_PROCESSOR.split(":")

    class Sub(Mine):
        pass

    found = [has_logits_processor(NS(model_config=NS(logits_processors=procs)))
             for procs in ([LOGITS_PROCESSOR], [Mine], [Sub], ["x.y:Z"], [], None,
                           ["lasa_steer.engines.vllm.logits.LasaLogitsProcessor"])]
    assert found == [True, True, True, False, False, False, False]


def test_additional_config_entry(tmp_path):
    vec = tmp_path / "v.safetensors"
    assert config_entry() == SLOTS_VERSION  # slots only; vectors come from install()
    entry = config_entry({"a": vec}, default_vector="a", default_strength=2)
    assert entry == {"vectors": {"a": str(vec.resolve())}, "default_vector": "a",
                     "default_mode": "gate", "default_strength": 2, "slots": SLOTS_VERSION}
    got = load_install(NS(additional_config={CONFIG_KEY: entry}))
    assert got == LoadInstall({"a": str(vec.resolve())}, Defaults("a", "gate", None, 2.0))
    assert load_install(NS(additional_config={CONFIG_KEY: 1})) is None
    assert load_install(NS(additional_config=None)) is None
    assert wants_slots(NS(additional_config={CONFIG_KEY: entry}))
    assert not wants_slots(NS(additional_config={}))
    bad = {
        "unknown key": {"vectors": {"a": "p"}, "colour": 1},
        "non-empty object": {"vectors": []},
        "must match": {"vectors": {"a b": "p"}},
        "a file path": {"vectors": {"a": 3}},
        "default_vector='b'": {"vectors": {"a": "p"}, "default_vector": "b"},
        "default_mode": {"vectors": {"a": "p"}, "default_mode": "sometimes"},
        "default_action": {"vectors": {"a": "p"}, "default_action": "shout"},
        "finite number": {"vectors": {"a": "p"}, "default_strength": float("nan")},
        "true or false": {"vectors": {"a": "p"}, "allow_mismatch": "yes"},
    }
    for needle, value in bad.items():
        with pytest.raises(SteeringConfigError, match=needle):
            parse_entry(value)
    with pytest.raises(SteeringConfigError, match="default_vector needs vectors"):
        config_entry(default_vector="a")


def test_server_args(tmp_path):
    vec = tmp_path / "v.safetensors"
    args = server_args({"smollm2": vec}, default_vector="smollm2", max_model_len=2048)
    flag = dict(zip(args[::2], args[1::2]))  # the --no-enable-* flag takes no value
    assert json.loads(args[1]) == {CONFIG_KEY: config_entry({"smollm2": vec},
                                                            default_vector="smollm2")}
    assert " " not in args[1]  # one shell word even unquoted
    assert flag["--logits-processors"] == LOGITS_PROCESSOR
    assert flag["--worker-extension-cls"] == WORKER_EXTENSION
    assert "--no-enable-chunked-prefill" in args  # exact with one in-process worker only
    assert "--no-enable-prefix-caching" not in args  # exact: cache terms per request
    # no CUDA graphs (vLLM's CUDA default would replay graphs without the steering slots)
    assert json.loads(args[args.index("--compilation-config") + 1]) == {"cudagraph_mode": "NONE"}
    assert args[-4:] == ["--max-model-len", "2048", "--max-num-batched-tokens", "2048"]


def test_external_request_ids():
    assert external_id("7-b4bdf455") == "7"
    assert external_id("chat-1-b4bdf455") == "chat-1"
    assert external_id("plain") == "plain"
