"""GPU check (minutes; tiny random models; torch + transformers only): run it whenever a
CUDA machine is available. CI never runs it; without CUDA it prints "no CUDA: skipped" and
exits 0.

    PYTHONPATH=src python benchmarks/gpu_check.py [--hidden 256] [--layers 6]

Checks, on a randomly initialised Llama of the given shape on ``cuda:0``:

1. ``steer()`` (the HF engine, gate + add, always + project, off) in bfloat16 against the
   same model in float32: prompt logits within ``--tol`` of the float32 logits' scale
   (max |bf16 - f32| / max |f32|), gate scores within ``--tol`` relative, and the same
   decisions for rows whose float32 score is further than that from the threshold.
2. The graph-safe steering step (:mod:`lasa_steer.steering.graph`) inside a
   ``torch.cuda.CUDAGraph``: a forward pass of a flattened padded batch is captured once,
   then replayed with other prompts and other per-request settings written into the
   persistent buffers; logits and gate decisions equal an eager pass with the same buffers
   (float32, 1e-4) and the HF engine's ``steer()`` on each row alone (float32, 1e-4).

Exit status 0 when every check passes, 1 otherwise; one line per check.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

DEVICE = "cuda"
PROMPTS = [[5, 9, 11, 40, 7, 3], [3, 4, 5], [60, 61, 62, 63, 64, 65, 66], [8, 9, 10, 11]]
SETTINGS_A = [dict(mode="gate", action="add", strength=4.0), dict(mode="always", action="project"),
              dict(mode="off"), dict(mode="gate", action="add", strength=4.0)]
SETTINGS_B = [dict(mode="always", action="add", strength=2.0), dict(mode="gate", action="add"),
              dict(mode="gate", action="project"), dict(mode="off")]


def tiny_llama(hidden: int, layers: int, dtype: torch.dtype) -> torch.nn.Module:
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=128, hidden_size=hidden, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=2 * hidden, max_position_embeddings=128,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model = tf.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
    return model.to(DEVICE, dtype)


def vector(model: torch.nn.Module):
    from lasa_steer import Gate, ModelIdentity, SteeringVector, find_layers

    lm = find_layers(model)
    g = torch.Generator().manual_seed(1)
    h, n = lm.hidden_size, lm.num_layers
    d = torch.randn(h, generator=g)
    gate = torch.randn(h, generator=g)
    layers = list(range(n // 2 + 1, n))
    return SteeringVector(model=ModelIdentity.of(model, lm),
                          directions={"refusal": {x: d / d.norm() * 4.0 for x in layers}},
                          gate=Gate(layer=n // 2, direction=gate / gate.norm(), threshold=0.0),
                          site="resid_post", default_strength=4.0, provenance={"method": "gpu"})


def run_rows(model, vec, prompts, settings):
    """The HF engine on each row alone: float32 logits and (score, fired) of gate rows."""
    from lasa_steer import steer

    out = []
    for p, s in zip(prompts, settings):
        with torch.no_grad(), steer(model, vec, **s) as h:
            logits = model(torch.tensor([p], device=DEVICE)).logits[0].float().cpu()
            gate = (float(h.scores[0]), bool(h.fired[0])) if s["mode"] == "gate" else None
        out.append((logits, gate))
    return out


def check_bf16(args) -> bool:
    f32 = tiny_llama(args.hidden, args.layers, torch.float32)
    vec = vector(f32)
    ref = run_rows(f32, vec, PROMPTS, SETTINGS_A)
    got = run_rows(tiny_llama(args.hidden, args.layers, torch.bfloat16), vec, PROMPTS,
                   SETTINGS_A)
    ok = True
    worst = 0.0
    for (lr, gr), (lg, gg) in zip(ref, got):
        worst = max(worst, float((lg - lr).abs().max() / lr.abs().max()))
        if gr is not None:
            if abs(gg[0] - gr[0]) > args.tol * max(1.0, abs(gr[0])):
                ok = False
            if abs(gr[0] - vec.gate.threshold) > args.tol * max(1.0, abs(gr[0])) and gg[1] != gr[1]:
                ok = False
    ok = ok and worst <= args.tol
    print(f"{'PASS' if ok else 'FAIL'} steer() bf16 vs float32: max logit error {worst:.4f} of "
          f"the logits' scale (tolerance {args.tol}); gate scores and decisions "
          f"{[g for _, g in got if g]} vs {[g for _, g in ref if g]}")
    return ok


def check_cuda_graph(args) -> bool:
    from lasa_steer import find_layers
    from lasa_steer.steering.graph import GraphSteering, Segment, attach
    from lasa_steer.steering.rows import RowSteering

    model = tiny_llama(args.hidden, args.layers, torch.float32)
    vec = vector(model)
    ref_b = run_rows(model, vec, PROMPTS[::-1], SETTINGS_B)
    width = max(len(p) for p in PROMPTS)
    graph = GraphSteering([vec], slots=8, max_tokens=len(PROMPTS) * width,
                          hidden=find_layers(model).hidden_size, device=DEVICE)
    handles = attach(model, graph)

    def load(prompts, settings):
        ids = torch.zeros(len(prompts), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        segments = []
        for b, (p, s) in enumerate(zip(prompts, settings)):  # right padding
            ids[b, :len(p)], mask[b, :len(p)] = torch.tensor(p), 1
            row = RowSteering(vector=vec, **s).resolved()
            if row.mode != "off":
                graph.assign(b, row)
                segments.append(Segment(b, b * width, len(p), 0, len(p),
                                        row.gate_point() is not None))
        return ids.to(DEVICE), mask.to(DEVICE), graph.plan(segments)

    ids, mask, _ = load(PROMPTS, SETTINGS_A)
    s_ids, s_mask = ids.clone(), mask.clone()
    with torch.no_grad():
        if DEVICE == "cuda":
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                model(s_ids, attention_mask=s_mask, use_cache=False)
            torch.cuda.current_stream().wait_stream(side)
            cg = torch.cuda.CUDAGraph()
            with torch.cuda.graph(cg):
                s_out = model(s_ids, attention_mask=s_mask, use_cache=False).logits
        ids_b, mask_b, deciding = load(PROMPTS[::-1], SETTINGS_B)
        s_ids.copy_(ids_b)
        s_mask.copy_(mask_b)
        if DEVICE == "cuda":
            cg.replay()
            torch.cuda.synchronize()
        else:  # --cpu-dry-run: no capture, the rest of the check as on a GPU
            s_out = model(s_ids, attention_mask=s_mask, use_cache=False).logits
        replayed = s_out.float().cpu()
        decided = graph.decisions(deciding)
        _, _, deciding2 = load(PROMPTS[::-1], SETTINGS_B)
        eager = model(ids_b, attention_mask=mask_b, use_cache=False).logits.float().cpu()
        decided_eager = graph.decisions(deciding2)
    for h in handles:
        h.remove()
    ok = bool(torch.allclose(replayed, eager, atol=1e-4, rtol=0)) and [
        d[1] for d in decided] == [d[1] for d in decided_eager]
    worst = 0.0
    rows = dict(zip(deciding, decided))
    for b, (logits, gate) in enumerate(ref_b):
        n = len(PROMPTS[::-1][b])
        worst = max(worst, float((replayed[b, :n] - logits).abs().max()))
        if gate is not None and (rows[b][1] != gate[1] or abs(rows[b][0] - gate[0]) > 1e-4):
            ok = False
    ok = ok and worst <= 1e-4
    print(f"{'PASS' if ok else 'FAIL'} CUDA graph replay with changed buffers: vs eager max "
          f"{float((replayed - eager).abs().max()):.2e}, vs steer() per row max {worst:.2e} "
          f"(tolerance 1e-4); decisions {decided} (eager {decided_eager})")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--tol", type=float, default=0.05,
                    help="bf16 vs float32 tolerance (relative to the logits' scale)")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run both checks on the CPU, without capture (to try the script; not a GPU "
                    "check)")
    args = ap.parse_args()
    global DEVICE
    if args.cpu_dry_run:
        DEVICE = "cpu"
        return 0 if all([check_bf16(args), check_cuda_graph(args)]) else 1
    if not torch.cuda.is_available():
        print("no CUDA: skipped (this script checks the GPU paths; run it on a CUDA machine)")
        return 0
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    results = [check_bf16(args), check_cuda_graph(args)]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
