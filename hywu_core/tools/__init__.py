"""Tooling around ComfyUI (no model code): the environment, a server, a client, workflows, the CLI.

    devenv         `./hywu setup|env`: the venv and the provisioned ComfyUI (standard library only)
    comfy_server   a real ComfyUI server as a child process
    comfy_client   its HTTP + websocket API
    workflow_run   API-format workflows: inputs, uploads, outputs (`./hywu run`)
    workflow_ui    canvas workflows generated from their API twins
    generate_lora  `./hywu generate-lora`: condition file -> LoRA file
    cli            `python -m hywu_core COMMAND`, what `./hywu` runs
"""
