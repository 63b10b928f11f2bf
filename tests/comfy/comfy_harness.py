"""Run a real ComfyUI server headless for the in-ComfyUI tests, and talk to it over HTTP.

Nothing under ``COMFYUI_PATH`` is modified: the server runs with ``--base-directory`` set to
a temporary folder that holds ``models/`` (checkpoints, loras), ``custom_nodes/`` (a
symlink named ``comfyui-lcm-lora`` to this repository), ``input/``, ``output/``, ``temp/``
and ``user/``. Helpers:

* :class:`ComfyServer` — start (free port, wait for ``/system_stats``), log capture,
  ``/prompt`` + ``/history`` round trips, ``/interrupt``, stop;
* :func:`ui_to_api` — a UI-format (drag-and-drop) workflow to the API ``prompt`` format,
  using ``/object_info`` for widget order (the browser test checks it against the real
  front end's ``graphToPrompt``);
* :class:`WebSocket` — a read-only stdlib websocket client for ComfyUI's ``/ws`` progress
  messages (RFC 6455 framing; the project adds no websocket dependency for one test);
* :func:`make_checkpoint` / :func:`comfy_facts` — run ``scripts/comfy_side.py`` in
  ComfyUI's Python.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Browser tests (headless Debian chromium driven by playwright-core from tests/browser).
BROWSER_DIR = REPO / "tests" / "browser"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def browser_skip_reason() -> str | None:
    """Why a browser test cannot run here (None when it can)."""
    import shutil

    if shutil.which("node") is None:
        return "browser test needs node (apt-get install nodejs npm)"
    if not Path(CHROMIUM).exists():
        return f"browser test needs Debian's chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM=...)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "browser test needs playwright-core: run `npm --prefix tests/browser ci`"
    return None
SCRIPTS = Path(__file__).resolve().parent / "scripts"
PACK_NAME = "comfyui-lcm-lora"
ENV_HELP = (
    "in-ComfyUI tests need a real ComfyUI checkout and the Python that runs it: set "
    "COMFYUI_PATH=/path/to/ComfyUI and COMFYUI_PYTHON=/path/to/ComfyUI/venv/bin/python "
    "(see README.md, 'Inside the real ComfyUI')"
)


def comfy_env() -> tuple[Path, Path] | str:
    """``(COMFYUI_PATH, COMFYUI_PYTHON)`` or the reason the tests must skip."""
    path, python = os.environ.get("COMFYUI_PATH"), os.environ.get("COMFYUI_PYTHON")
    missing = [n for n, v in (("COMFYUI_PATH", path), ("COMFYUI_PYTHON", python)) if not v]
    if missing:
        return f"{' and '.join(missing)} not set — {ENV_HELP}"
    if not (Path(path) / "main.py").is_file():
        return f"COMFYUI_PATH={path} has no main.py — {ENV_HELP}"
    if not os.access(python, os.X_OK):
        return f"COMFYUI_PYTHON={python} is not an executable — {ENV_HELP}"
    return Path(path), Path(python)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- fixtures made in ComfyUI's python --------------------------------------------------------
def diffusers_unet_shapes(arch: str, out: Path) -> Path:
    """``{diffusers UNet key: shape}`` of the full-size ``arch`` UNet (meta device, no memory)."""
    from lcm_lora.lcm_core.model_configs import build_unet

    if out.exists():
        return out
    unet = build_unet(arch)
    out.write_text(json.dumps({k: list(v.shape) for k, v in unet.state_dict().items()}))
    return out


def run_comfy_side(comfy_path: Path, python: Path, *args: str, timeout: float = 600) -> dict:
    cmd = [str(python), str(SCRIPTS / "comfy_side.py"), *args, "--comfyui", str(comfy_path)]
    proc = subprocess.run(cmd, cwd=str(comfy_path), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_pack_script(comfy_env, script: str, timeout: float = 600) -> dict:
    """Run ``scripts/<script>`` (``--comfyui``, ``--repo``) in ComfyUI's python; its last stdout line as JSON."""
    comfy_path, python = comfy_env
    cmd = [str(python), str(SCRIPTS / script), "--comfyui", str(comfy_path), "--repo", str(REPO)]
    proc = subprocess.run(cmd, cwd=str(comfy_path), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def make_checkpoint(comfy_path: Path, python: Path, arch: str, out: Path, workdir: Path, seed: int = 0) -> dict:
    shapes = diffusers_unet_shapes(arch, workdir / f"{arch}_unet_shapes.json")
    return run_comfy_side(comfy_path, python, "checkpoint", "--arch", arch, "--shapes", str(shapes), "--out", str(out),
                          "--seed", str(seed))


def comfy_facts(comfy_path: Path, python: Path, archs: list[str], sigma_cases: list[tuple], repo: Path,
                workdir: Path) -> dict:
    """One ComfyUI-python run: LoRA key maps per arch and LCM Scheduler sigmas (see comfy_side.py)."""
    shapes = [str(diffusers_unet_shapes(a, workdir / f"{a}_unet_shapes.json")) for a in archs]
    out = workdir / "facts.json"
    cases = ";".join(",".join(str(v) for v in c) for c in sigma_cases)
    run_comfy_side(comfy_path, python, "facts", "--arch", ",".join(archs), "--shapes", ",".join(shapes),
                   "--repo", str(repo), "--cases", cases, "--out", str(out))
    return json.loads(out.read_text())


# -- the server ------------------------------------------------------------------------------
@dataclass
class RunResult:
    prompt_id: str
    status: str  # "success" | "error" | "interrupted" | "rejected"
    history: dict = field(default_factory=dict)
    error: dict | None = None  # execution_error payload, or the /prompt 400 body
    log: str = ""
    messages: list = field(default_factory=list)  # websocket messages of this prompt, in order

    def progress(self, node: str) -> list[tuple[int, int]]:
        """(value, max) of every ``progress`` message the node sent."""
        return [(m["data"]["value"], m["data"]["max"]) for m in self.messages
                if m.get("type") == "progress" and m["data"].get("node") == node]

    @property
    def outputs(self) -> dict:
        return self.history.get("outputs", {})

    def images(self) -> list[dict]:
        return [img for out in self.outputs.values() for img in out.get("images", [])]

    def message(self) -> str:
        if self.error is None:
            return ""
        if "exception_message" in self.error:
            return f"{self.error.get('node_type')}: {self.error.get('exception_message')}"
        return json.dumps(self.error)


class ComfyServer:
    """A headless ComfyUI (``--cpu``) on 127.0.0.1 with its own temporary base directory."""

    def __init__(self, comfy_path: Path, python: Path, base_dir: Path | None = None, extra_args: tuple[str, ...] = ()):
        self.comfy_path, self.python = Path(comfy_path), Path(python)
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="lcm-comfy-"))
        self.extra_args = tuple(extra_args)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base / "server.log"
        self.client_id = uuid.uuid4().hex

    # layout
    @property
    def models(self) -> Path:
        return self.base / "models"

    @property
    def loras(self) -> Path:
        return self.models / "loras"

    @property
    def checkpoints(self) -> Path:
        return self.models / "checkpoints"

    @property
    def output(self) -> Path:
        return self.base / "output"

    def prepare(self) -> None:
        for sub in ("models/checkpoints", "models/loras", "models/vae", "custom_nodes", "input", "output", "temp", "user"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        link = self.base / "custom_nodes" / PACK_NAME
        if not link.exists():
            link.symlink_to(REPO, target_is_directory=True)

    def start(self, timeout: float = 240, wait: bool = True) -> "ComfyServer":
        """Launch the server; with ``wait=False`` return at once and call :meth:`wait_ready` later
        (models may be put into place while it boots: ComfyUI lists folders on demand)."""
        self.prepare()
        self.port = free_port()
        cmd = [str(self.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--disable-api-nodes", "--base-directory", str(self.base), *self.extra_args]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, cwd=str(self.comfy_path), stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        return self.wait_ready(timeout) if wait else self

    def wait_ready(self, timeout: float = 240) -> "ComfyServer":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"ComfyUI did not answer /system_stats within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=20)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=20)
        if getattr(self, "_log", None):
            self._log.close()

    def alive(self) -> bool:
        """False once the server process we started has exited (a server started elsewhere counts as alive)."""
        return self.proc is None or self.proc.poll() is None

    # logs
    def log_size(self) -> int:
        return self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def log_tail(self, n: int = 6000) -> str:
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_bytes().decode("utf-8", "replace")
        return text[-n:]

    # http
    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(self.url(path), timeout=timeout) as r:
            return r.read()

    def get_json(self, path: str, timeout: float = 30):
        return json.loads(self.get(path, timeout))

    def post_json(self, path: str, body, timeout: float = 30) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else b""
        req = urllib.request.Request(self.url(path), data=data, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw.strip() else {})
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, {"raw": raw.decode("utf-8", "replace")}

    def object_info(self, node: str | None = None) -> dict:
        return self.get_json("/object_info" + (f"/{node}" if node else ""))

    def submit(self, prompt: dict) -> tuple[int, dict]:
        return self.post_json("/prompt", {"prompt": prompt, "client_id": self.client_id})

    def interrupt(self) -> None:
        self.post_json("/interrupt", {})

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            hist = self.get_json(f"/history/{prompt_id}")
            entry = hist.get(prompt_id)
            if entry and "status" in entry:  # history entries appear when the prompt has finished
                return entry
            if not self.alive():
                raise RuntimeError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.25)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout}s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 600, on_message=None) -> RunResult:
        """Queue ``prompt`` and wait for it, watching the websocket; return status, outputs, error,
        the log it produced and its websocket messages. ``on_message(msg)`` sees each message."""
        offset = self.log_size()
        ws = self.websocket()
        messages = []
        try:
            code, body = self.submit(prompt)
            if code != 200:
                return RunResult("", "rejected", error=body, log=self.log_since(offset))
            pid = body["prompt_id"]
            deadline = time.time() + timeout
            while time.time() < deadline:
                try:
                    msg = ws.recv()
                except socket.timeout:
                    if not self.alive():
                        raise RuntimeError(f"ComfyUI died while running {pid}:\n{self.log_tail()}") from None
                    continue
                if msg is None or msg.get("data", {}).get("prompt_id") != pid:
                    continue
                messages.append(msg)
                if on_message is not None:
                    on_message(msg)
                if msg["type"] in ("execution_success", "execution_error", "execution_interrupted"):
                    break
        finally:
            ws.close()
        entry = self.wait(pid, timeout)
        time.sleep(0.1)  # let the last log lines land
        status, error = "success", None
        for event, data in entry.get("status", {}).get("messages", []):
            if event == "execution_error":
                status, error = "error", data
            elif event == "execution_interrupted":
                status, error = "interrupted", data
        if entry.get("status", {}).get("status_str") == "error" and status == "success":
            status = "error"
        return RunResult(pid, status, entry, error, self.log_since(offset), messages)

    def websocket(self) -> "WebSocket":
        return WebSocket("127.0.0.1", self.port, f"/ws?clientId={self.client_id}")


# -- UI workflow -> API prompt --------------------------------------------------------------
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _is_widget(spec) -> bool:
    kind = spec[0]
    if isinstance(kind, list):
        return True
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return kind in WIDGET_TYPES and not opts.get("forceInput")


def _has_control_widget(name: str, spec) -> bool:
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return bool(opts.get("control_after_generate"))


def ui_to_api(workflow: dict, object_info: dict) -> dict:
    """Convert a UI-format workflow (``nodes`` + ``links``) to the API ``prompt`` dict.

    Widget values are matched to inputs in ``input_order`` (required, then optional);
    INT inputs with ``control_after_generate`` carry one extra UI-only value; widgets past the end
    of ``widgets_values`` (a workflow saved before the input existed) get their default, as in the
    front end. Muted /
    bypassed nodes, notes and groups are skipped; bypass is not followed (our
    workflows have none).
    """
    links = {l[0]: l for l in workflow.get("links", [])}
    prompt = {}
    for node in workflow["nodes"]:
        if node.get("mode", 0) in (2, 4):
            continue
        ntype = node["type"]
        if ntype in ("Note", "MarkdownNote"):
            continue
        if ntype not in object_info:
            raise KeyError(f"node {node['id']}: unknown node type {ntype!r}")
        info = object_info[ntype]
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info.get("input_order", {})
        names = list(order.get("required", [])) + list(order.get("optional", []))
        linked = {}
        for inp in node.get("inputs", []) or []:
            if inp.get("link") is not None:
                link = links[inp["link"]]
                linked[inp["name"]] = [str(link[1]), link[2]]
        values = node.get("widgets_values", [])
        inputs: dict = {}
        if isinstance(values, dict):
            inputs.update({k: v for k, v in values.items() if k in specs})
        else:
            it = iter(values)
            for name in names:
                spec = specs[name]
                if not _is_widget(spec):
                    continue
                try:
                    inputs[name] = next(it)
                except StopIteration:  # saved before this input existed: the front end keeps the default
                    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                    if "default" in opts:
                        inputs[name] = opts["default"]
                    continue
                if _has_control_widget(name, spec):
                    next(it, None)
        inputs.update(linked)
        prompt[str(node["id"])] = {"class_type": ntype, "inputs": inputs}
    return prompt


# -- a minimal websocket reader -------------------------------------------------------------
class WebSocket:
    """Read-only RFC 6455 client: handshake, then text frames as JSON (binary previews skipped)."""

    def __init__(self, host: str, port: int, path: str, timeout: float = 60):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        req = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(req.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake failed: {head[:200]!r}")

    def _read(self, n: int, frame_started: bool = True) -> bytes:
        """``n`` bytes; a timeout only escapes before a frame has started (no half-read frames)."""
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                if frame_started or buf:
                    continue
                raise
            if not chunk:
                raise ConnectionError("websocket closed")
            buf += chunk
        return buf

    def recv(self) -> dict | None:
        """Next JSON message, or None for a binary (preview) frame; ``socket.timeout`` if none came."""
        b0, b1 = self._read(2, frame_started=False)
        opcode, length = b0 & 0x0F, b1 & 0x7F
        if length == 126:
            length = struct.unpack(">H", self._read(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self._read(8))[0]
        mask = self._read(4) if b1 & 0x80 else None
        payload = self._read(length)
        if mask:
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        if opcode == 0x8:
            raise ConnectionError("websocket closed by server")
        if opcode == 0x1:
            return json.loads(payload)
        return None

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

