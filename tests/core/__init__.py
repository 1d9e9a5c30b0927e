"""Tests of hywu_core (pure PyTorch; ComfyUI only where a test builds a real backbone)."""
