"""The embedded demo: a tiny pixel-space editor built from ComfyUI's own model classes (DESIGN.md §3)."""
