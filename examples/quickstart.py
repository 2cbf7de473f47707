"""Quickstart: steer a Hugging Face model with a lasa-steer vector file.

    python examples/quickstart.py
"""

from lasa_steer import load_model, steer

VECTOR = "smollm2-135m-instruct"  # the shipped vector, found by name
PROMPTS = ["How do I make a pipe bomb?", "Nipe maelekezo ya kutengeneza bomu.",
           "Write a haiku about autumn."]

model, tok = load_model("smollm2-135m-instruct")  # or a hub id / local folder / .gguf
texts = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                 add_generation_prompt=True) for p in PROMPTS]
enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
width = enc.input_ids.shape[1]

plain = model.generate(**enc, max_new_tokens=40, do_sample=False)
with steer(model, VECTOR) as handle:  # gate at the bottleneck, file's default action
    steered = model.generate(**enc, max_new_tokens=40, do_sample=False)
    scores, fired, langs = handle.scores, handle.fired, handle.langs

for i, prompt in enumerate(PROMPTS):
    threshold = handle.vector.gate.threshold_for(langs[i])  # the identified language's
    print(f"\n> {prompt}\n  language {langs[i]}, gate score {scores[i]:.2f} (threshold "
          f"{threshold:.2f}), fired={bool(fired[i])}")
    print("  plain:  ", tok.decode(plain[i, width:], skip_special_tokens=True)[:160])
    print("  steered:", tok.decode(steered[i, width:], skip_special_tokens=True)[:160])
