"""The network: GPT-2 and what is built from it, with no Lightning, data or files of a run.

`gpt` (GPTConfig, the size presets, GPTModel: one readable GPT-2), `lora` (LoRA layers and merging them back),
`weights` (OpenAI's pretrained weights in the Hugging Face Hub layout: pinned download, key mapping, loading into
GPTModel, the fingerprint of frozen tensors) and `net` (SpamNet: the GPT trunk, the pooling and the classification
head, as a plain nn.Module). One SpamNet serves training, prediction, export and the benchmarks; it is rebuilt from
its own arguments (`SpamNet.args()` / `SpamNet.from_args`), as nanoGPT rebuilds its GPT from `model_args`.
"""
