"""Where the save nodes write: a numbered file under a ComfyUI folder, never outside it.

ComfyUI 0.3.75 fact: folder_paths.get_save_image_path raises when the prefix leaves the folder and names the
file after the prefix's last component with a counter after it (the same scheme as Save Image)."""
import os

import folder_paths

from hywu_core.lora_files import check_filename_prefix


def numbered_file(filename_prefix: str, base_dir: str, what: str, extension: str = ".safetensors") -> tuple[str, str]:
    """(absolute path, path relative to base_dir) of the next free `<prefix>_NNNNN_<extension>` under base_dir
    (`what` names that folder in errors, e.g. "LoRA folder")."""
    check_filename_prefix(filename_prefix)
    base_dir = os.path.abspath(base_dir)
    try:
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, base_dir)
    except Exception as error:
        raise ValueError(f"filename_prefix {filename_prefix!r} leaves the {what} {base_dir}: use a relative path "
                         "such as 'hywu/my_edit'") from error
    os.makedirs(folder, exist_ok=True)
    file_name = f"{name}_{counter:05}_{extension}"
    return os.path.join(folder, file_name), os.path.join(subfolder, file_name).replace(os.sep, "/")


def output_file_ref(relative: str) -> dict:
    """How a file in the output folder is named in a node's ui (what /view?filename=&subfolder=&type= serves)."""
    subfolder, _, filename = relative.rpartition("/")
    return {"filename": filename, "subfolder": subfolder, "type": "output"}
