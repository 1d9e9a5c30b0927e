"""hywu_core: HY-WU "Weight Unleashing" in pure PyTorch, importable without ComfyUI.

The top-level modules follow the paper's pipeline (condition §3.3, tokenizer §3.4, NNT and
generator §3.5, LoRA injection §3.2, kernels §3.7); the subpackages hold the ComfyUI adapter,
the tiny editor, training, the demo, the experiments, the benches and the tools. docs/design.md
maps each to its role. This file imports nothing: the stdlib-only `./hywu` bootstrap imports the
package before any environment with torch exists.
"""

__version__ = "0.1.0"
