"""Generator backends for the dataset builder, behind one interface.

- :class:`OpenAIChatGenerator` talks to any OpenAI-compatible ``/chat/completions`` server
  (vLLM, TGI, llama.cpp server, a hosted API) with the standard library only: a thread pool for
  concurrency, a shared client-side rate limit, a per-request timeout, and retries with
  exponential backoff (honouring ``Retry-After``) on 429, 5xx, timeouts and dropped connections.
  The API key is read from an environment variable and sent only in the Authorization header;
  it is never logged, printed or stored in outputs.
- :class:`LocalHFGenerator` runs a transformers causal LM with batched, left-padded generation.

``generate`` never raises for a single bad request: each conversation gets a
:class:`Completion`, whose ``error`` says what went wrong and whose ``fatal`` flag tells the
builder to stop (the server kept failing after every retry) rather than to skip the item (a
non-retryable 4xx for that one request).
"""
from __future__ import annotations

import http.client
import json
import logging
import os
import random
import socket
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import UserError
from ..scrub import register as register_secret
from ..scrub import scrub

log = logging.getLogger("srmir.data")


@dataclass
class Completion:
    """One generated reply: ``text``; ``truncated`` when it hit the token limit; ``error`` when
    no reply came back (``fatal``: the backend is failing, stop the build)."""

    text: str = ""
    truncated: bool = False
    error: str | None = None
    fatal: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class Generator(ABC):
    """Turns chat conversations (lists of ``{"role", "content"}``) into completions, in order."""

    @abstractmethod
    def generate(self, conversations: list[list[dict]], max_new_tokens: int, temperature: float = 0.0,
                 seed: int | None = None, draft_format=None) -> list[Completion]:
        """One :class:`Completion` per conversation, in the same order.

        ``draft_format`` (a :class:`~srmir.data.cod.DraftFormat`) asks a backend that
        can constrain decoding to enforce the CoD draft shape; others ignore it (their output is
        validated either way).
        """

    def close(self) -> None:
        """Release connections or memory (optional)."""


# ------------------------------------------------------------------------------------ HTTP


class RateLimiter:
    """At most ``rate`` acquisitions per second across threads (evenly spaced slots)."""

    def __init__(self, rate: float | None):
        self.interval = 1.0 / rate if rate else 0.0
        self._next = time.monotonic()
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


class _Retryable(Exception):
    """A failure worth retrying; ``delay`` overrides the backoff (from Retry-After)."""

    def __init__(self, message: str, delay: float | None = None):
        super().__init__(message)
        self.delay = delay


class OpenAIChatGenerator(Generator):
    """Client of an OpenAI-compatible chat-completions server (``api_base`` like ``http://host:8000/v1``)."""

    def __init__(self, api_base: str, model: str, api_key_env: str = "OPENAI_API_KEY", concurrency: int = 4,
                 timeout: float = 60.0, max_retries: int = 5, requests_per_second: float | None = None,
                 backoff: float = 0.5, max_backoff: float = 30.0):
        parts = urlsplit(api_base or "")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"expected an http(s) URL such as http://127.0.0.1:8000/v1, got {api_base!r}",
                            where="data.api_base")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._path = parts.path.rstrip("/") + "/chat/completions"
        self.model, self.concurrency, self.timeout = model, concurrency, timeout
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self._limiter = RateLimiter(requests_per_second)
        self._local = threading.local()  # one keep-alive connection per worker thread
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(api_key_env)
        if key:  # never logged: only this header dict holds it, and every write masks it
            self._headers["Authorization"] = f"Bearer {key}"
            register_secret(key)
        self._secret = key or None
        self._key_env = api_key_env

    def __repr__(self) -> str:
        return f"OpenAIChatGenerator({self._scheme}://{self._host}:{self._port}{self._path}, model={self.model!r})"

    def generate(self, conversations, max_new_tokens, temperature=0.0, seed=None, draft_format=None):
        def one(item):
            i, messages = item
            body = {"model": self.model, "messages": messages, "max_tokens": max_new_tokens,
                    "temperature": temperature}
            if seed is not None:
                body["seed"] = seed + i
            return self._complete(body)

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, enumerate(conversations)))

    def _complete(self, body: dict) -> Completion:
        """One request with retries: exponential backoff with jitter, capped at ``max_backoff``."""
        payload = json.dumps(body).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            self._limiter.wait()
            try:
                return self._post(payload)
            except _Retryable as e:
                last = self._scrub(str(e))
                if attempt == self.max_retries:
                    break
                delay = e.delay if e.delay is not None else min(self.max_backoff, self.backoff * 2 ** attempt)
                delay *= 1 + 0.1 * random.random()
                log.warning("request failed (%s); retry %d/%d in %.2fs", last, attempt + 1, self.max_retries, delay)
                time.sleep(delay)
            except _ClientError as e:
                return Completion(error=self._scrub(str(e)), fatal=e.fatal)
        return Completion(error=f"gave up after {self.max_retries + 1} attempts: {last}", fatal=True)

    def _post(self, payload: bytes) -> Completion:
        conn = self._connection()
        try:
            conn.request("POST", self._path, body=payload, headers=self._headers)
            resp = conn.getresponse()
            status, data = resp.status, resp.read()
            retry_after = resp.getheader("Retry-After")
        except (socket.timeout, TimeoutError) as e:
            self._drop_connection()
            raise _Retryable(f"timed out after {self.timeout:g}s") from e
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            self._drop_connection()
            raise _Retryable(f"connection error to {self._host}:{self._port or (443 if self._scheme == 'https' else 80)}: "
                             f"{type(e).__name__}: {e}") from e
        if status == 429 or status >= 500:
            self._drop_connection()
            raise _Retryable(f"HTTP {status}", delay=_retry_after(retry_after, self.max_backoff))
        if status in (401, 403):  # no retry or other prompt will help: stop with what to fix
            why = (f"the server refused the API key in ${self._key_env}; set a valid one" if self._secret else
                   f"the server wants an API key and ${self._key_env} is not set; set it")
            raise _ClientError(f"HTTP {status}: {why} (data.api_key_env / eval.judge_api_key_env name the variable)",
                               fatal=True)
        if status != 200:
            raise _ClientError(f"HTTP {status}: {data[:200].decode('utf-8', 'replace')}")
        try:
            choice = json.loads(data)["choices"][0]
            text = choice["message"]["content"] or ""
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise _Retryable(f"malformed response body ({type(e).__name__})") from e
        return Completion(text=self._scrub(text), truncated=choice.get("finish_reason") == "length")

    def _connection(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.timeout)
            self._local.conn = conn
        return conn

    def _drop_connection(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._local.conn = None

    def _scrub(self, text: str) -> str:
        """Remove the API key (and any other known secret) from a reply or message, in case a
        server echoed it back."""
        text = text.replace(self._secret, "***") if self._secret else text
        return scrub(text)


class _ClientError(Exception):
    """A non-retryable HTTP status (400, 401, 404, ...): this request will not succeed;
    ``fatal`` for 401/403, which no other request will get past either."""

    def __init__(self, message: str, fatal: bool = False):
        super().__init__(message)
        self.fatal = fatal


def _retry_after(value: str | None, cap: float) -> float | None:
    try:
        return min(cap, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None  # an HTTP-date: fall back to exponential backoff


# ---------------------------------------------------------------------------- transformers


class LocalHFGenerator(Generator):
    """A local causal LM (``embedded:smollm2``, a hub id or a folder) with batched generation.

    Prompts are rendered with the tokenizer's chat template and left-padded, so every row's new
    tokens start at the same column: ``new_BT = out_BL[:, prompt_len:]``. With ``constrain``,
    a ``draft_format`` request is decoded under :class:`~srmir.data.draft_decoding.DraftFormatProcessor`
    (the draft's shape is enforced; the answer is the model's own).
    """

    def __init__(self, model: str = "embedded:smollm2", device: str | None = None, batch_size: int = 8,
                 dtype: str = "auto", constrain: bool = True):
        import torch

        from ..models import resolve_model
        from ..runtime import load_for_inference

        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        # bf16 is fast only on CPUs with native bf16 (AVX512-BF16, AMX) and very slow elsewhere:
        # fp32 on CPU unless dtype="bf16" opts in (measured here: 2x faster prefill with AVX512-BF16)
        if dtype == "auto":
            dtype = "bf16" if self.device.startswith("cuda") else "fp32"
        # the runtime's loader: pad fallback and the EOS set exactly as in training and eval
        lm = load_for_inference(resolve_model(model), dtype, where="data.generator_model", device=self.device)
        self.tokenizer, self.model, self.eos_ids = lm.tokenizer, lm.model, lm.eos_ids
        self.tokenizer.padding_side = "left"
        self.batch_size, self.constrain = batch_size, constrain

    def generate(self, conversations, max_new_tokens, temperature=0.0, seed=None, draft_format=None):
        import torch

        if seed is not None:
            torch.manual_seed(seed)
        fmt = draft_format if self.constrain else None
        out: list[Completion] = []
        for start in range(0, len(conversations), self.batch_size):
            out += self._generate_batch(conversations[start:start + self.batch_size], max_new_tokens, temperature, fmt)
        return out

    def _generate_batch(self, conversations, max_new_tokens, temperature, fmt) -> list[Completion]:
        import torch
        from transformers import LogitsProcessorList

        from .draft_decoding import DraftFormatProcessor

        tok = self.tokenizer
        texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 0.95} if temperature > 0 else {"do_sample": False}
        eos = set(self.eos_ids)
        prompt_len = enc["input_ids"].shape[1]
        if fmt is not None:
            sampling["logits_processor"] = LogitsProcessorList([DraftFormatProcessor(tok, prompt_len, fmt, eos)])
        with torch.no_grad():
            out_BL = self.model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                                         eos_token_id=self.eos_ids, **sampling)
        new_BT = out_BL[:, prompt_len:]
        results = []
        for row in new_BT.tolist():
            finished = any(t in eos for t in row)
            results.append(Completion(text=tok.decode(row, skip_special_tokens=True).strip(), truncated=not finished))
        return results

    def close(self) -> None:
        self.model = None
