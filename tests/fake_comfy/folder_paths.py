"""Fake folder_paths with ComfyUI's lookup rules: a folder name maps to ([paths], extensions), first path wins."""
import os

calls = []
models_dir = None
folder_names_and_paths = {}


def reset(base):
    """Start over with `base`/models as models_dir and an empty models/vae, as a fresh ComfyUI would have."""
    global models_dir
    calls.clear()
    models_dir = os.path.join(base, "models")
    folder_names_and_paths.clear()
    folder_names_and_paths["vae"] = ([os.path.join(models_dir, "vae")], {".ckpt", ".pt", ".pth", ".safetensors"})


def add_model_folder_path(folder_name, full_folder_path, is_default=False):
    calls.append(("add_model_folder_path", folder_name, full_folder_path, is_default))
    if folder_name not in folder_names_and_paths:
        folder_names_and_paths[folder_name] = ([full_folder_path], set())
        return
    paths = folder_names_and_paths[folder_name][0]
    if full_folder_path in paths:
        if is_default:
            paths.remove(full_folder_path)
            paths.insert(0, full_folder_path)
    elif is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name):
    calls.append(("get_folder_paths", folder_name))
    return folder_names_and_paths[folder_name][0][:]


def get_filename_list(folder_name):
    calls.append(("get_filename_list", folder_name))
    paths, extensions = folder_names_and_paths[folder_name]
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(f for f in os.listdir(path) if not extensions or os.path.splitext(f)[1] in extensions)
    return found


def get_full_path(folder_name, filename):
    calls.append(("get_full_path", folder_name, filename))
    for path in folder_names_and_paths.get(folder_name, ([], None))[0]:
        full = os.path.join(path, filename)
        if os.path.isfile(full):
            return full
    return None


def get_full_path_or_raise(folder_name, filename):
    full = get_full_path(folder_name, filename)
    if full is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return full


def get_temp_directory():
    calls.append(("get_temp_directory",))
    return os.path.join(os.path.dirname(models_dir), "temp")


def get_output_directory():
    return os.path.join(os.path.dirname(models_dir), "output")
