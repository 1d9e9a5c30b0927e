"""HunyuanImage-3.0(-Instruct) in plain PyTorch: the model folder, tokenizer and prompt layout, decoder trunk, image
side (VAE, vision tower, patch embedding) and sampling, written to load the official checkpoint's keys unchanged and
to run inside ComfyUI without importing it."""
