"""HTTP routes of the trainer panel, on ComfyUI's own server (``PromptServer.instance.routes``).

    GET  /lcm_lora/train/options                   configs, teachers, data folders, allowed overrides
    GET  /lcm_lora/train/jobs                      every job (newest first)
    POST /lcm_lora/train/jobs                      start a job (JSON body, see trainer_requests.parse_start_request)
    GET  /lcm_lora/train/jobs/{job_id}             one job, with the tail of its log
    GET  /lcm_lora/train/jobs/{job_id}/events      events.jsonl entries (?since=N for the new ones)
    GET  /lcm_lora/train/jobs/{job_id}/images/{name}   a validation grid (step-XXXXXXXX.png)
    POST /lcm_lora/train/jobs/{job_id}/cancel      SIGTERM (checkpoint), SIGKILL after a timeout

Every error is ``{"error": "<what>: <problem>"}`` with a 4xx/5xx status. Hardening: POST bodies
must be ``application/json`` (a cross-site form cannot send that without a CORS preflight) and at
most :data:`MAX_BODY` bytes (413, counted while reading, also for chunked bodies); invalid JSON,
non-finite numbers, wrong types and unknown fields are 400; every name is confined by
:mod:`lcm_core.safe_names` (no ``..``, absolute paths, NUL, or symlinks out of ComfyUI's folders).
The routes are added by ``LCMLoraExtension.on_load`` (:mod:`lcm_lora.nodes`), never at import.
Slow work (walking model folders, starting a process) runs in a worker thread.
"""
from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web

from .trainer_jobs import ComfyFolders, JobManager
from .trainer_requests import RequestError

PREFIX = "/lcm_lora/train"
MAX_BODY = 64 * 1024
_MANAGER: JobManager | None = None
_REGISTERED = False


def manager() -> JobManager:
    global _MANAGER
    if _MANAGER is None:
        _MANAGER = JobManager(ComfyFolders.from_folder_paths())
    return _MANAGER


def _error(e: RequestError) -> web.Response:
    return web.json_response({"error": str(e)}, status=e.status)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


async def read_json_body(request: web.Request, limit: int = MAX_BODY):
    """The decoded JSON body; :class:`RequestError` 415 / 413 / 400."""
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise RequestError("request body", f"Content-Type must be application/json, got {ctype or 'none'!r}", status=415)
    if request.content_length is not None and request.content_length > limit:
        raise RequestError("request body", f"is {request.content_length} bytes; the limit is {limit}", status=413)
    data = bytearray()
    while True:
        chunk = await request.content.read(16384)
        if not chunk:
            break
        data += chunk
        if len(data) > limit:
            raise RequestError("request body", f"is larger than the {limit}-byte limit", status=413)
    if not data.strip():
        return {}
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as e:
        raise RequestError("request body", f"is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise RequestError("request body", "JSON is nested too deeply") from None
    except ValueError as e:
        raise RequestError("request body", f"is not valid JSON: {e}") from None


def _guard(handler):
    async def wrapped(request: web.Request) -> web.Response:
        try:
            return await handler(request)
        except RequestError as e:
            return _error(e)
        except Exception as e:  # noqa: BLE001 — a route must answer, and say what happened
            logging.exception("LCM-LoRA trainer route %s failed", request.path)
            return web.json_response({"error": f"{request.path}: internal error: {type(e).__name__}: {e}"}, status=500)

    wrapped.__name__ = handler.__name__
    return wrapped


async def _in_thread(fn, *args):
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@_guard
async def get_options(request: web.Request) -> web.Response:
    return web.json_response(await _in_thread(manager().options))


@_guard
async def list_jobs(request: web.Request) -> web.Response:
    return web.json_response({"jobs": await _in_thread(manager().list_jobs)})


@_guard
async def start_job(request: web.Request) -> web.Response:
    body = await read_json_body(request)
    return web.json_response(await _in_thread(manager().start, body), status=201)


@_guard
async def get_job(request: web.Request) -> web.Response:
    job = manager().get(request.match_info["job_id"])
    return web.json_response(await _in_thread(job.summary, True))


@_guard
async def get_events(request: web.Request) -> web.Response:
    raw = request.query.get("since", "0")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:  # isdigit alone takes "²", which int() refuses
        raise RequestError("since", f"must be a non-negative integer, got {raw[:20]!r}")
    return web.json_response(await _in_thread(manager().events, request.match_info["job_id"], int(raw)))


@_guard
async def get_image(request: web.Request) -> web.StreamResponse:
    path = manager().image_path(request.match_info["job_id"], request.match_info["name"])
    return web.FileResponse(path, headers={"Content-Type": "image/png", "Cache-Control": "private, max-age=86400"})  # written once per step


@_guard
async def cancel_job(request: web.Request) -> web.Response:
    await read_json_body(request)  # same rules as every POST (type, size); the body is not used
    return web.json_response(await _in_thread(manager().cancel, request.match_info["job_id"]))


def register(routes) -> None:
    """Add the routes to an aiohttp ``RouteTableDef`` (ComfyUI's ``PromptServer.instance.routes``)."""
    routes.get(f"{PREFIX}/options")(get_options)
    routes.get(f"{PREFIX}/jobs")(list_jobs)
    routes.post(f"{PREFIX}/jobs")(start_job)
    routes.get(f"{PREFIX}/jobs/{{job_id}}")(get_job)
    routes.get(f"{PREFIX}/jobs/{{job_id}}/events")(get_events)
    routes.get(f"{PREFIX}/jobs/{{job_id}}/images/{{name}}")(get_image)
    routes.post(f"{PREFIX}/jobs/{{job_id}}/cancel")(cancel_job)


def register_with_comfyui() -> bool:
    """Register on the running ComfyUI server (called from ``LCMLoraExtension.on_load``); False (and
    nothing done) when there is none or when already registered."""
    import sys

    server = sys.modules.get("server")  # ComfyUI's main.py imports it before loading custom nodes
    instance = getattr(getattr(server, "PromptServer", None), "instance", None)
    global _REGISTERED
    if instance is None or _REGISTERED:
        return False
    register(instance.routes)
    _REGISTERED = True
    import atexit

    atexit.register(lambda: _MANAGER.shutdown() if _MANAGER is not None else None)
    return True
