"""The embedded demo: `./hywu demo`, `./hywu demo-family` and the edit suite they run on.

    images   source crops (scikit-image samples, procedural images) and the held-out split
    edits    the directional edits, their scores and the dataset writer
    run      `./hywu demo`: the shipped family editing the bundled held-out inputs in a ComfyUI server
    retrain  `./hywu demo-family`: the whole family retrained from seed 0 into demo_models/
"""
