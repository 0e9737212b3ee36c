"""Drive a real ComfyUI with this pack installed: start it, convert UI workflows to API prompts, run them.

    COMFYUI_DIR=/path/to/ComfyUI COMFYUI_PYTHON=/path/to/its/python -m pytest tests/test_comfyui_live.py
    python tests/comfyui_live.py capture-core-nodes   # refresh tests/data/comfy_core_nodes.json (same env vars)

`ComfyServer` starts `main.py --cpu` on 127.0.0.1 at a free port with a base directory of its own (a temporary
folder whose `custom_nodes/ComfyUI-MuseTalk` links to this checkout, and an in-memory database), so several checkouts
can be tested against one ComfyUI at once and the install itself is never written to; it waits (bounded) until the
server answers, and posts prompts. `workflow_to_prompt` does what the frontend's
`graphToPrompt()` does for a saved UI workflow (contract §6): widget values are positional, in /object_info input
order, with the extra slots the frontend adds (control_after_generate, upload buttons, audio players) skipped;
links are resolved through Reroute, PrimitiveNode and bypassed nodes; muted and frontend-only nodes are dropped.
Standard library only, so it runs under any interpreter that runs the tests.
"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_FOLDER = "ComfyUI-MuseTalk"
CORE_NODES_PATH = os.path.join(REPO, "tests", "data", "comfy_core_nodes.json")
CORE_NODES = ("LoadVideo", "GetVideoComponents", "CreateVideo", "SaveVideo", "LoadAudio", "SaveAudio", "PreviewAudio",
              "PreviewAny", "LoadImage", "PreviewImage", "SaveImage", "VAELoader", "VAEDecode", "UpscaleModelLoader",
              "ImageUpscaleWithModel")

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
MUTED, BYPASSED = 2, 4
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload", "audio_upload")
# nodes the frontend gives an audio player widget, which takes a (null) slot in widgets_values
AUDIO_PLAYER_NODES = {"LoadAudio", "SaveAudio", "PreviewAudio", "SaveAudioMP3", "SaveAudioOpus"}


class ComfyError(RuntimeError):
    """ComfyUI rejected a prompt or a node failed; `details` holds the server's JSON answer."""

    def __init__(self, message, details=None):
        super().__init__(message)
        self.details = details


# --------------------------------------------------------------------------------------------- UI workflow -> prompt

def _input_specs(definition):
    """[(name, spec, required)] of a node's inputs in the frontend's widget order."""
    inputs, order = definition["input"], definition.get("input_order", {})
    specs = []
    for section in ("required", "optional"):
        names = order.get(section) or list(inputs.get(section, {}))
        specs += [(name, inputs[section][name], section == "required") for name in names]
    return specs


def _options(spec):
    return (spec[1] if len(spec) > 1 else None) or {}


def _is_widget(spec):
    return (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES) and not _options(spec).get("forceInput")


def _has_control_slot(name, spec):
    return bool(_options(spec).get("control_after_generate")) or (spec[0] == "INT" and name in ("seed", "noise_seed"))


def _widget_slots(class_type, definition):
    """Input name per widgets_values position (None for slots that hold no input value)."""
    slots, extra = [], 0
    for name, spec, required in _input_specs(definition):
        if not required and extra:
            slots += [None] * extra  # the frontend appends its own widgets after the required inputs
            extra = 0
        if _is_widget(spec):
            slots += [name, None] if _has_control_slot(name, spec) else [name]
        if required and any(_options(spec).get(flag) for flag in UPLOAD_FLAGS):
            extra = 1
    if class_type in AUDIO_PLAYER_NODES:
        extra += 1
    return slots + [None] * extra


def _without_legacy_values(definition, values):
    """Workflows saved before widgets became sockets hold a value for each forceInput input too; drop those."""
    legacy = [(name, spec) for name, spec, _ in _input_specs(definition)
              if _is_widget(spec) or _options(spec).get("forceInput")]
    forced = [_options(spec).get("forceInput", False) for _, spec in legacy]
    if not any(forced) or sum(2 if _has_control_slot(n, s) else 1 for n, s in legacy) != len(values):
        return values
    kept, position = [], 0
    for (name, spec), is_forced in zip(legacy, forced):
        width = 2 if _has_control_slot(name, spec) else 1
        if not is_forced:
            kept += values[position:position + width]
        position += width
    return kept


def _links_by_id(workflow):
    links = {}
    for link in workflow.get("links", []):
        if isinstance(link, dict):
            link = [link["id"], link["origin_id"], link["origin_slot"], link["target_id"], link["target_slot"],
                    link.get("type")]
        links[link[0]] = link
    return links


def _passed_through(node, link):
    """The input link a Reroute or a bypassed node hands on to `link`: the same slot when its type fits, else the
    first connected input of the link's type."""
    inputs = node.get("inputs") or []
    fitting = [i for i in inputs if i.get("link") is not None and
               (node["type"] == "Reroute" or link[5] in (None, "*") or i.get("type") in (link[5], "*"))]
    slot = link[2]
    if slot < len(inputs) and inputs[slot] in fitting:
        return inputs[slot]["link"]
    return fitting[0]["link"] if fitting else None


def workflow_to_prompt(workflow, object_info):
    """The API prompt {node_id: {class_type, inputs, _meta}} for a UI-format workflow, as the frontend would send it."""
    if workflow.get("definitions", {}).get("subgraphs"):
        raise ComfyError("workflow uses subgraphs, which this converter does not expand; export it as API format")
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = _links_by_id(workflow)

    def source(link_id, seen=()):
        """(node, slot) that really feeds a link, or ("value", v) for a PrimitiveNode, or None when cut."""
        link = links.get(link_id)
        if link is None or link_id in seen:
            return None
        node = nodes.get(link[1])
        if node is None or node.get("mode") == MUTED:
            return None
        if node["type"] == "Reroute" or node.get("mode") == BYPASSED:
            return source(_passed_through(node, link), seen + (link_id,))
        if node["type"] == "PrimitiveNode":
            return ("value", (node.get("widgets_values") or [None])[0])
        return (node, link[2])

    prompt = {}
    for node_id, node in nodes.items():
        class_type = node["type"]
        if node.get("mode") in (MUTED, BYPASSED) or class_type in FRONTEND_ONLY:
            continue
        if class_type not in object_info:
            raise ComfyError(f"node {node_id}: unknown node type {class_type!r} "
                             "(is the pack that provides it installed?)")
        definition = object_info[class_type]
        values = node.get("widgets_values") or []
        if isinstance(values, dict):  # some packs' nodes (e.g. VHS) save their widgets by name
            names = {name for name, _, _ in _input_specs(definition)}
            inputs = {name: value for name, value in values.items() if name in names}
        else:
            slots = _widget_slots(class_type, definition)
            inputs = {name: value for name, value in zip(slots, _without_legacy_values(definition, values)) if name}
        for slot in node.get("inputs") or []:
            fed_by = source(slot["link"]) if slot.get("link") is not None else None
            name = (slot.get("widget") or {}).get("name") or slot["name"]
            if fed_by is None:
                continue  # unconnected, or fed by a muted node: a widget keeps its own value
            if fed_by[0] == "value":
                inputs[name] = fed_by[1]
            else:
                inputs[name] = [str(fed_by[0]["id"]), fed_by[1]]
        prompt[str(node_id)] = {"class_type": class_type, "inputs": inputs,
                                "_meta": {"title": node.get("title") or definition.get("display_name", class_type)}}
    return prompt


# ------------------------------------------------------------------------------------------------------ the server

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI process serving this checkout as custom_nodes/ComfyUI-MuseTalk. Use as a context manager."""

    def __init__(self, comfy_dir, python, extra_args=(), startup_timeout=240, log_path=None):
        self.comfy_dir = os.path.abspath(comfy_dir)
        self.python = python
        self.extra_args = list(extra_args)
        self.startup_timeout = startup_timeout
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or os.path.join(tempfile.gettempdir(), f"musetalk_comfyui_{self.port}.log")
        self.process = None
        self._base = None
        self._object_info = None

    # lifecycle
    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        # models, custom_nodes, input, output, temp and user folders all live under the private base directory; the
        # database would still default to the install's user/ folder, shared by every server started from it
        self._base = tempfile.TemporaryDirectory(prefix="musetalk_comfyui_")
        custom_nodes = os.path.join(self._base.name, "custom_nodes")
        os.mkdir(custom_nodes)
        os.symlink(REPO, os.path.join(custom_nodes, PACK_FOLDER), target_is_directory=True)
        command = [self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                   "--disable-auto-launch", "--base-directory", self._base.name]
        with open(os.path.join(self.comfy_dir, "comfy", "cli_args.py")) as f:
            if "--database-url" in f.read():  # releases before 0.3.41 keep no database
                command += ["--database-url", "sqlite:///:memory:"]
        command += self.extra_args
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, cwd=self.comfy_dir, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ComfyError(f"ComfyUI exited with {self.process.returncode} while starting:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=5)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise ComfyError(f"ComfyUI did not answer within {self.startup_timeout} s:\n{self.log_tail()}")

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=20)
        self.process = None
        if self._base is not None:
            self._base.cleanup()
            self._base = None

    # http
    def get(self, path, timeout=30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, path, body, timeout=30):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            details = json.loads(error.read() or b"{}")
            raise ComfyError(f"POST {path} answered {error.code}: {_describe_rejection(details)}", details) from None

    def upload(self, path, timeout=60):
        """Copy a file into ComfyUI's input/ folder (as the UI's upload button does); returns its name there."""
        boundary = uuid.uuid4().hex
        with open(path, "rb") as f:
            content = f.read()
        part = f"--{boundary}\r\nContent-Disposition: form-data; name="
        body = (f"{part}\"image\"; filename=\"{os.path.basename(path)}\"\r\n"
                "Content-Type: application/octet-stream\r\n\r\n").encode() + content + \
            f"\r\n{part}\"overwrite\"\r\n\r\ntrue\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(self.url + "/upload/image", data=body,
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["name"]

    def output_file(self, item, timeout=60):
        """The bytes of a file a node reported in its ui outputs ({filename, subfolder, type}), as the UI fetches it."""
        query = urllib.parse.urlencode({k: item[k] for k in ("filename", "subfolder", "type") if k in item})
        with urllib.request.urlopen(f"{self.url}/view?{query}", timeout=timeout) as response:
            return response.read()

    def object_info(self):
        if self._object_info is None:
            self._object_info = self.get("/object_info", timeout=60)
        return self._object_info

    def log_tail(self, chars=6000):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-chars:]
        except OSError:
            return "(no log)"

    def import_failures(self):
        """Log lines in which ComfyUI reports that it could not import this pack."""
        with open(self.log_path, errors="replace") as f:
            return [line.rstrip() for line in f if PACK_FOLDER in line and
                    ("Cannot import" in line or "IMPORT FAILED" in line)]

    # running
    def run_prompt(self, prompt, timeout=300):
        """Queue an API prompt and wait for it; returns its outputs {node_id: ui dict}. Raises ComfyError on failure."""
        queued = self.post("/prompt", {"prompt": prompt, "client_id": uuid.uuid4().hex})
        if queued.get("node_errors"):
            raise ComfyError(f"prompt rejected: {_describe_rejection(queued)}", queued)
        prompt_id = queued["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ComfyError(f"ComfyUI died while running the prompt:\n{self.log_tail()}")
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)  # written once the prompt has finished
            if entry:
                if entry.get("status", {}).get("status_str") != "success":
                    raise ComfyError(_describe_failure(entry), entry)
                return entry["outputs"]
            time.sleep(0.25)
        self.post("/interrupt", {})
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout} s")

    def run_workflow(self, workflow, timeout=300):
        return self.run_prompt(workflow_to_prompt(workflow, self.object_info()), timeout)


def _describe_rejection(answer):
    parts = [str((answer.get("error") or {}).get("message", ""))]
    for node_id, node in (answer.get("node_errors") or {}).items():
        for error in node.get("errors", []):
            parts.append(f"node {node_id} ({node.get('class_type')}): {error.get('message')}: {error.get('details')}")
    return "; ".join(p for p in parts if p)


def _describe_failure(entry):
    for kind, message in entry["status"].get("messages", []):
        if kind in ("execution_error", "execution_interrupted"):
            trace = "".join(message.get("traceback") or [])
            return (f"{kind} in node {message.get('node_id')} ({message.get('node_type')}): "
                    f"{message.get('exception_type', '')}: {message.get('exception_message', '')}\n{trace}")
    return f"prompt failed: {entry['status']}"


def capture_core_nodes(server, path=CORE_NODES_PATH):
    """Write the /object_info definitions of the core nodes our workflows use, for offline workflow checks."""
    info = server.object_info()
    version = server.get("/system_stats")["system"].get("comfyui_version")
    data = {"about": "GET /object_info of a stock ComfyUI for the core nodes the pack's workflows use; file combos "
                     "list that install's input/ folder. Refresh: python tests/comfyui_live.py capture-core-nodes",
            "comfyui_version": version, "nodes": {name: info[name] for name in CORE_NODES}}
    with open(path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    return path


def server_from_env(**kwargs):
    """A ComfyServer for $COMFYUI_DIR run by $COMFYUI_PYTHON; None when either is unset."""
    comfy_dir, python = os.environ.get("COMFYUI_DIR"), os.environ.get("COMFYUI_PYTHON")
    if not comfy_dir or not python:
        return None
    return ComfyServer(comfy_dir, python, **kwargs)


if __name__ == "__main__":
    if sys.argv[1:] != ["capture-core-nodes"]:
        sys.exit(__doc__)
    live = server_from_env()
    if live is None:
        sys.exit("set COMFYUI_DIR and COMFYUI_PYTHON")
    with live:
        print(capture_core_nodes(live))
