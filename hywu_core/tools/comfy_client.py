"""A small synchronous client for ComfyUI's HTTP + websocket API (tests and `./hywu run`).

ComfyUI 0.3.75 protocol facts used here:
- POST /prompt answers 400 with {"error": {...}, "node_errors": {...}} when validation fails.
- On /ws?clientId=X the server sends, for prompts submitted with client_id X:
  "execution_start", "executing" ({"node": id}), "progress" ({"value", "max", "node"}),
  "executed", "execution_cached", "execution_error" and finally "executing" with node None.
  Binary frames carry previews.
- GET /history/{id} holds the outputs and a status with status_str "success" or "error";
  its messages repeat the execution_error payload.

A server that cannot be reached, or that goes away while a prompt runs, raises
ServerUnreachable or ConnectionLost: one line naming the URL and what happened.
"""
from __future__ import annotations

import http.client
import json
import mimetypes
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


class PromptRejected(RuntimeError):
    """ComfyUI refused the prompt at validation; str() is ComfyUI's own error text."""

    def __init__(self, response: dict):
        self.response = response
        super().__init__(format_rejection(response))


class PromptFailed(RuntimeError):
    """The prompt was accepted but a node raised while executing; str() is ComfyUI's error text."""

    def __init__(self, error: dict):
        self.error = error
        super().__init__(format_execution_error(error))


def format_rejection(response: dict) -> str:
    error = response.get("error") or {}
    if isinstance(error, str):
        lines = [error]
    else:
        lines = [f"{error.get('message', 'prompt rejected')}: {error.get('details', '')}".rstrip(": ")]
    for node_id, node in (response.get("node_errors") or {}).items():
        for item in node.get("errors", []):
            text = f"{item.get('message', '')}: {item.get('details', '')}".rstrip(": ")
            lines.append(f"  node {node_id} ({node.get('class_type', '?')}): {text}")
    return "\n".join(lines)


def format_execution_error(error: dict) -> str:
    head = (f"node {error.get('node_id', '?')} ({error.get('node_type', '?')}) raised "
            f"{error.get('exception_type', 'an exception')}: {error.get('exception_message', '').strip()}")
    trace = "".join(error.get("traceback") or [])
    return head + ("\n" + trace.rstrip() if trace else "")


class ServerUnreachable(ConnectionError):
    """Nothing answers at the server's URL; str() names the URL and the reason."""

    def __init__(self, url: str, error: BaseException):
        self.url, self.reason = url, describe(error)
        super().__init__(f"cannot reach ComfyUI at {url}: {self.reason}")


class ConnectionLost(ConnectionError):
    """The server went away while a prompt ran; str() names the URL, the prompt and the reason."""

    def __init__(self, url: str, prompt_id: str, error: BaseException):
        self.url = url
        super().__init__(f"lost the connection to ComfyUI at {url} while prompt {prompt_id} ran: "
                         f"{describe(error)}; the server stopped or crashed (see its log)")


def describe(error: BaseException) -> str:
    """A short reason for a network error (urllib wraps the socket's error in URLError.reason)."""
    import websocket

    if isinstance(error, ServerUnreachable):
        return error.reason
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return "no answer (timed out)"
    if isinstance(reason, (ConnectionError, http.client.HTTPException, websocket.WebSocketConnectionClosedException)):
        return "the connection was closed"
    return str(reason) or type(reason).__name__


@dataclass(frozen=True)
class Progress:
    """One progress event for a prompt: node is the node id, value/max the node's own counter."""
    node: str | None
    value: int
    max: int


@dataclass(frozen=True)
class ImageRef:
    filename: str
    subfolder: str
    type: str
    node: str


class ComfyClient:
    def __init__(self, base_url: str, client_id: str | None = None, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or uuid.uuid4().hex
        self.timeout = timeout

    def _request(self, path: str, data: bytes | None = None, headers: dict | None = None) -> bytes:
        """The response body; HTTP error statuses raise HTTPError, network failures ServerUnreachable."""
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError:
            raise
        except (OSError, http.client.HTTPException) as error:
            raise ServerUnreachable(self.base_url, error) from None

    def get_json(self, path: str):
        return json.loads(self._request(path))

    def object_info(self) -> dict:
        return self.get_json("/object_info")

    def history(self, prompt_id: str) -> dict | None:
        return self.get_json(f"/history/{prompt_id}").get(prompt_id)

    def upload_image(self, path: Path, overwrite: bool = True) -> str:
        """Upload a local image into the server's input folder; returns the name LoadImage takes."""
        path = Path(path)
        boundary = uuid.uuid4().hex
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts = [
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{path.name}"\r\n'
            f"Content-Type: {mime}\r\n\r\n".encode() + path.read_bytes() + b"\r\n",
            f'--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\n{str(overwrite).lower()}\r\n'.encode(),
            f"--{boundary}--\r\n".encode(),
        ]
        answer = json.loads(self._request("/upload/image", b"".join(parts),
                                          {"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    def submit(self, prompt: dict) -> str:
        """Queue an API-format prompt; returns its prompt_id or raises PromptRejected."""
        body = json.dumps({"prompt": prompt, "client_id": self.client_id}).encode()
        try:
            answer = json.loads(self._request("/prompt", body, {"Content-Type": "application/json"}))
        except urllib.error.HTTPError as error:
            payload = error.read()
            try:
                response = json.loads(payload)
            except json.JSONDecodeError:
                response = {"error": payload.decode(errors="replace")}
            raise PromptRejected(response) from None
        return answer["prompt_id"]

    def run(self, prompt: dict, on_progress: Callable[[Progress], None] | None = None,
            timeout: float = 600.0) -> dict:
        """Submit and wait; returns the history entry, or raises PromptRejected / PromptFailed."""
        import websocket

        ws_url = self.base_url.replace("http", "ws", 1) + f"/ws?clientId={self.client_id}"
        try:
            connection = websocket.create_connection(ws_url, timeout=5)
        except (OSError, websocket.WebSocketException) as error:
            raise ServerUnreachable(self.base_url, error) from None
        try:
            prompt_id = self.submit(prompt)
            try:
                self._follow(connection, prompt_id, on_progress, time.monotonic() + timeout)
                return self.wait_history(prompt_id, timeout=30.0)
            except ServerUnreachable as error:
                raise ConnectionLost(self.base_url, prompt_id, error) from None
        finally:
            connection.close()

    def _follow(self, connection, prompt_id: str, on_progress, deadline: float) -> None:
        import websocket

        while time.monotonic() < deadline:
            try:
                frame = connection.recv()
            except websocket.WebSocketTimeoutException:
                entry = self.history(prompt_id)
                if entry and entry.get("status", {}).get("completed") is not None:
                    return
                continue
            except (OSError, websocket.WebSocketException) as error:
                raise ConnectionLost(self.base_url, prompt_id, error) from None
            if not isinstance(frame, str):
                continue
            message = json.loads(frame)
            data = message.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            kind = message.get("type")
            if kind == "progress" and on_progress:
                on_progress(Progress(data.get("node"), int(data.get("value", 0)), int(data.get("max", 0))))
            elif kind == "executing" and on_progress and data.get("node") is not None:
                on_progress(Progress(data["node"], 0, 0))
            elif kind == "execution_error":
                raise PromptFailed(data)
            elif kind == "execution_interrupted":
                raise PromptFailed({**data, "exception_type": "interrupted",
                                    "exception_message": "the prompt was interrupted"})
            elif kind == "executing" and data.get("node") is None and data.get("prompt_id") == prompt_id:
                return
        raise TimeoutError(f"prompt {prompt_id} did not finish in time")

    def wait_history(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Poll /history until the prompt has finished; raise PromptFailed if it ended in an error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.history(prompt_id)
            status = (entry or {}).get("status") or {}
            if entry and status.get("completed") is not None:
                if status.get("status_str") == "error":
                    for name, data in status.get("messages", []):
                        if name == "execution_error":
                            raise PromptFailed(data)
                    raise PromptFailed({"exception_message": "the prompt ended in an error"})
                return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} has no finished history entry after {timeout:.0f}s")

    @staticmethod
    def output_images(entry: dict, types: tuple[str, ...] = ("output",)) -> list[ImageRef]:
        refs = []
        for node_id, output in (entry.get("outputs") or {}).items():
            for image in output.get("images", []):
                if image.get("type") in types:
                    refs.append(ImageRef(image["filename"], image.get("subfolder", ""), image["type"], node_id))
        return refs

    def fetch_image(self, ref: ImageRef) -> bytes:
        query = urllib.parse.urlencode({"filename": ref.filename, "subfolder": ref.subfolder, "type": ref.type})
        return self._request(f"/view?{query}")
