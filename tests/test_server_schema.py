"""The OpenAPI schema and the server agree (issue 10.5): schemathesis over every operation.

For each operation of the published schema, schemathesis generates requests from it (its
examples, coverage and fuzzing phases; bounded: ``max-examples`` below), valid ones
("positive") and ones the schema forbids ("negative"), sends them to the app in process
and checks each answer:

* ``not_a_server_error``: never a 5xx;
* ``positive_data_acceptance``: a request the schema allows is answered 2xx, so every limit
  the server enforces must be in the schema;
* ``negative_data_rejection``: a request the schema forbids is answered 400 (or 404 for a
  model id outside the schema's enum), so the server must enforce every limit the schema
  states.

Some schema-valid requests are refused for reasons no schema can state; they are listed in
``RUNTIME_REFUSALS`` by status *and* error code (a status alone would also let through a
400 that the schema should have prevented) and skip only the positive check. The server runs
a tiny random Llama with SmolLM2's tokenizer (so chat templates are real) and small limits
(``--max-n 2``, ``--max-batch 4``, ``--max-moderation-inputs 3``) that generated requests
reach; ``max_tokens`` is capped at 2 so that a generation costs milliseconds.

The run uses schemathesis' test builder per operation (its pytest ``from_fixture`` route
does not run under pytest 9, hence the pin ``schemathesis>=4.32,<4.33`` in pyproject).
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")

sys.path.insert(0, str(Path(__file__).parent))
from helpers import make_vector  # noqa: E402

MODEL = "tiny"
ADMIN = "admin-key"
VECTORS = ("tiny-last", "tiny-mean")
OPERATIONS = ["GET /health", "GET /metrics", "GET /v1/models", "GET /v1/models/{model_id}",
              "GET /v1/steering/vectors", "POST /v1/steering/vectors/{name}/load",
              "POST /v1/moderations", "POST /v1/chat/completions", "POST /v1/completions"]
BODIES = {"POST /v1/moderations", "POST /v1/chat/completions", "POST /v1/completions"}

CONFIG = """
seed = 1
suppress-health-check = ["all"]
[generation]
mode = "all"
max-examples = 40
no-shrink = true
database = "none"
[phases]
examples.enabled = true
coverage.enabled = true
fuzzing.enabled = true
stateful.enabled = false
[checks]
positive_data_acceptance.expected-statuses = ["2xx"]
negative_data_rejection.expected-statuses = ["400", "404"]
"""

# Schema-valid requests the server refuses for a reason no schema can state, by (status,
# error code); a positive case answered so skips positive_data_acceptance (the other checks
# still run):
RUNTIME_REFUSALS = {
    (404, "vector_not_found"),  # a vector name that is not loaded (names change at run time)
    (404, "direction_not_found"),  # a direction the chosen vector does not have
    (404, "operating_point_not_found"),  # a point the chosen vector's gate does not have
    (404, "model_not_found"),  # moderation `model`: a vector name that is not loaded
    (400, "context_length_exceeded"),  # a prompt's length in tokens (--max-prompt-tokens)
    (400, "batch_limit_exceeded"),  # len(prompt) * n past --max-batch: a product of fields
    (400, "invalid_text"),  # a lone UTF-16 surrogate (a JSON Schema string cannot exclude it)
}


@pytest.fixture(scope="module")
def served(smollm2, tmp_path_factory):
    import torch
    import transformers as tf

    from lasa_serve.routes import create_app
    from lasa_serve.runtime import Runtime, ServerConfig

    _, tok = smollm2
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
                         max_position_embeddings=4096, pad_token_id=tok.pad_token_id,
                         bos_token_id=1, eos_token_id=2)
    model = tf.LlamaForCausalLM(cfg).eval()
    folder = tmp_path_factory.mktemp("vectors")
    make_vector(model, gate_layer=0, clamp_target=1.0).save(folder / f"{VECTORS[0]}.safetensors")
    make_vector(model, gate_layer=0, pooling="mean", clamp_target=1.0, threshold=-1e9).save(
        folder / f"{VECTORS[1]}.safetensors")
    rt = Runtime(ServerConfig(model=MODEL, served_model_name=MODEL, vectors=folder,
                              default_vector=VECTORS[0], admin_key=ADMIN, max_n=2, max_batch=4,
                              max_moderation_inputs=3, default_max_tokens=2,
                              max_tokens_limit=2), model, tok)
    try:
        yield create_app(rt)
    finally:
        rt.close()


@pytest.fixture(scope="module")
def api_schema(served):
    from schemathesis.config import SchemathesisConfig

    return schemathesis.openapi.from_asgi("/openapi.json", served,
                                          config=SchemathesisConfig.from_str(CONFIG))


def _loaded_names(case) -> None:
    """Point a positive case's vector names at loaded vectors, so that the rest of the
    request is checked rather than answered 404 (unknown names are a runtime refusal, and
    covered by the hardening tests)."""
    if "name" in (case.path_parameters or {}):
        case.path_parameters["name"] = VECTORS[len(case.path_parameters["name"]) % 2]
    body = case.body if isinstance(case.body, dict) else None
    if body is None:
        return
    steering = body.get("steering")
    if isinstance(steering, dict) and isinstance(steering.get("vector"), str):
        steering["vector"] = VECTORS[len(steering["vector"]) % 2]
    if isinstance(steering, dict) and isinstance(steering.get("direction"), str):
        steering["direction"] = "refusal"
    if case.operation.path == "/v1/moderations" and isinstance(body.get("model"), str):
        body["model"] = VECTORS[len(body["model"]) % 2]


def _check(case, seen: collections.Counter) -> None:
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (negative_data_rejection,
                                                    positive_data_acceptance)

    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if positive:
        _loaded_names(case)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    response = case.call(headers=headers)
    refusal = None
    try:
        err = response.json().get("error")
        refusal = (response.status_code, err.get("code"))
    except Exception:  # not an error body
        pass
    checks = [not_a_server_error, negative_data_rejection]
    if refusal not in RUNTIME_REFUSALS:
        checks.append(positive_data_acceptance)
    mode = "positive" if positive else "negative"
    seen[(mode, response.status_code // 100 * 100)] += 1
    try:
        case.validate_response(response, checks=checks, headers=headers)
    except Exception as exc:  # name the server's answer: its error says which field
        raise AssertionError(f"{exc}\nserver answered {response.status_code}: "
                             f"{response.text[:600]}") from None


def test_schema_lists_every_operation(api_schema):
    """The operations below are all there is (a new one must be added here)."""
    assert sorted(r.ok().label for r in api_schema.get_all_operations()) == sorted(OPERATIONS)


@pytest.mark.parametrize("label", OPERATIONS)
def test_schema_and_server_agree(api_schema, label):
    from schemathesis.generation.feedback import FeedbackSources
    from schemathesis.pytest._test_builder import build_operation_test

    [op] = [r.ok() for r in api_schema.get_all_operations() if r.ok().label == label]
    seen: collections.Counter = collections.Counter()
    test = build_operation_test(config=api_schema.config, operation=op,
                                test_func=lambda case: _check(case, seen), given_kwargs={},
                                feedback=FeedbackSources())
    test()
    print(f"\n{label}: {dict(seen)}")
    assert seen[("positive", 200)] >= 1, seen  # the run reached the server's success path
    if label in BODIES:  # and generated forbidden bodies, that were refused
        assert seen[("positive", 200)] >= 10 and seen[("negative", 400)] >= 10, seen
