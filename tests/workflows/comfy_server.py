"""One headless real ComfyUI server for several checks in a row: prompts, /object_info, /free, its log.

``../shared/comfy/run_comfy_e2e.sh`` runs one workflow per server start; the model-manager checks need more than
one request against the same server (run, then ``POST /free``, then run again), and starting ComfyUI on a 2-core
CPU takes about a minute, so the checks that do not test a shipped UI workflow share one server from here. It uses
the harness's environment (``setup_comfy_env.sh``: ComfyUI's venv and work tree), links this pack (and any other
pack given) into ``custom_nodes`` as the harness does, and listens on 127.0.0.1 only. Standard library only, so the
tests' own Python drives it.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def comfy_environment(setup_script: Path) -> tuple[Path, Path]:
    """(ComfyUI work tree, its venv's python), built once by the harness's setup script."""
    lines = subprocess.run(["bash", str(setup_script)], capture_output=True, text=True, check=True).stdout
    found = dict(line.split("=", 1) for line in lines.splitlines() if line.startswith("COMFY_"))
    return Path(found["COMFY_DIR"]), Path(found["COMFY_VENV"]) / "bin" / "python"


class ComfyServer:
    def __init__(self, setup_script: Path, packs: list[Path], workdir: Path, *, model_paths: Path | None = None,
                 port: int = 8190, extra_args: tuple[str, ...] = ("--verbose", "DEBUG")):
        self.comfy_dir, self.python = comfy_environment(setup_script)
        self.packs, self.workdir, self.port = packs, workdir, port
        self.base = f"http://127.0.0.1:{port}"
        self.dirs = {name: workdir / name for name in ("input", "output", "temp", "user")}
        self.log_path = workdir / "server.log"
        self.args = [str(self.python), "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
                     "--disable-auto-launch", "--database-url", "sqlite:///:memory:", *extra_args]
        for name, path in self.dirs.items():
            self.args += [f"--{name}-directory", str(path)]
        if model_paths is not None:
            self.args += ["--extra-model-paths-config", str(model_paths)]
        self.links = [self.comfy_dir / "custom_nodes" / pack.name for pack in packs]
        self.process: subprocess.Popen | None = None
        self.startup_s = 0.0

    # ---------------------------------------------------------------- lifetime

    def __enter__(self) -> ComfyServer:
        try:  # another server on the port would answer for this one
            self.get("/system_stats")
            raise RuntimeError(f"port {self.port} is in use: stop what listens there")
        except (urllib.error.URLError, ConnectionError):
            pass
        for path in self.dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        for pack, link in zip(self.packs, self.links, strict=True):
            if link.is_symlink():
                link.unlink()  # a link left by an earlier run
            if link.exists():
                raise RuntimeError(f"{link} exists and is not a link")
            link.symlink_to(pack)
        start = time.monotonic()
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(self.args, cwd=self.comfy_dir, stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(f"ComfyUI exited during startup:\n{self.log()[-4000:]}")
                if time.monotonic() - start > 600:
                    raise TimeoutError(f"ComfyUI did not answer within 600 s:\n{self.log()[-4000:]}")
                try:
                    self.get("/system_stats")
                    break
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.5)
        except BaseException:
            self.__exit__()
            raise
        self.startup_s = time.monotonic() - start
        return self

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT first: ComfyUI exits cleanly on KeyboardInterrupt and flushes its log.
            for sig, wait in ((signal.SIGINT, 10), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                self.process.send_signal(sig)
                try:
                    self.process.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        for link in self.links:
            if link.is_symlink():
                link.unlink()

    # ---------------------------------------------------------------- requests

    def get(self, path: str):
        with urllib.request.urlopen(self.base + path, timeout=60) as response:
            return json.loads(response.read() or b"null")

    def post(self, path: str, body: dict):
        request = urllib.request.Request(self.base + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read()
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"POST {path}: HTTP {err.code}: {err.read().decode()[:4000]}") from None
        return json.loads(text) if text else None

    def run(self, prompt: dict, timeout: float = 1800) -> dict:
        """Queues an API-format prompt, waits for it; returns {"outputs", "seconds", "peak_rss_mb"}. Raises with
        the node's error when it failed."""
        start = time.monotonic()
        prompt_id = self.post("/prompt", {"prompt": prompt})["prompt_id"]
        while time.monotonic() - start < timeout:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            status = (entry or {}).get("status") or {}
            if status.get("completed") or status.get("status_str") in ("success", "error"):
                if status.get("status_str") != "success":
                    errors = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                    raise RuntimeError(f"prompt failed: {json.dumps(errors)[:4000]}")
                return {"outputs": entry["outputs"], "seconds": round(time.monotonic() - start, 1),
                        "peak_rss_mb": self.peak_rss_mb()}
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s")

    def output_files(self, outputs: dict, node_id: str) -> list[Path]:
        """The files a saving node wrote (its UI result lists them by name, subfolder and folder type)."""
        return [self.dirs[item.get("type", "output")] / item.get("subfolder", "") / item["filename"]
                for items in outputs[node_id].values() if isinstance(items, list)
                for item in items if isinstance(item, dict) and "filename" in item]

    def free(self, unload_models: bool = True, free_memory: bool = True) -> None:
        self.post("/free", {"unload_models": unload_models, "free_memory": free_memory})

    # ---------------------------------------------------------------- observation

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, count: int = 1, timeout: float = 60) -> bool:
        """Whether ``text`` appears ``count`` times in the log within ``timeout`` seconds."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.log().count(text) >= count:
                return True
            time.sleep(0.5)
        return False

    def peak_rss_mb(self) -> float | None:
        """The server's peak resident memory so far (Linux /proc), in MiB."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
        return None if kib is None else round(kib / 1024, 1)
