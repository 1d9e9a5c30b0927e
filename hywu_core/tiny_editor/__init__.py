"""The tiny editor: a small backbone, encoder and generator that run anywhere, on a CPU in seconds.

    backbone  a pixel-space instruct-pix2pix MMDiT built from ComfyUI's own classes, and its file
    encoders  tiny random SigLIP2 / SigLIP / CLIP folders with an offline vocabulary
    family    backbone + encoder + generator written as ComfyUI model folders

The demo, training, the benches and the tests all build on it (docs/design.md, "The tiny editor").
"""
