"""Load test of `python serve.py`: N concurrent clients for T seconds against 127.0.0.1, batching on and off.

For each mode the server is started (a subprocess in its own process group), warmed up, loaded by --clients
threads that each send one-text requests ({"text": ...}, texts from the SMS data or a built-in set) back to back on a
kept-alive connection until --seconds have passed or --max-requests were sent, then asked for /health and stopped.
Printed per mode: requests/s, messages/s, p50/p95/p99 latency, errors (an answer other than 200, or 200 with another
text than the one sent), lost requests (no answer at all: a closed connection or a timeout), and the server's peak
RSS and PSS (the largest sum over its processes, sampled every 0.1 s; see group_memory).

    python benchmarks/bench_serve.py --smoke          # trains a smoke model first (< 1 min), then serves it
    python benchmarks/bench_serve.py --random-124m    # GPT-2 124M's shapes with random weights (exported first)
    python benchmarks/bench_serve.py --model-dir runs/NAME/export --clients 16 --seconds 20

Only 127.0.0.1; bounded by --seconds (at most 300) and --max-requests; stops by itself.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SMS_ZIP = SHARED / "data" / "sms_spam_collection" / "sms+spam+collection.zip"
SMS_TSV = SHARED / "data" / "sms_spam_collection" / "SMSSpamCollection"
TOKENIZER = SHARED / "assets" / "gpt2.tiktoken"
BUILT_IN = [
    "Are we still meeting for lunch tomorrow?",
    "WINNER!! You have been selected to receive a £900 prize reward! To claim call 09061701461. Valid 12 hours only.",
    "Ok lar... Joking wif u oni...",
    "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005. Text FA to 87121 to receive entry question",
    "I'll call you when I get home, the train is late again",
    "URGENT! Your mobile number has been awarded a £2000 bonus. Call 09066350750 from a landline. Box 97N7QP",
]


def texts_from(tsv: Path | None) -> list[str]:
    if tsv is not None and tsv.is_file():
        return [line.split("\t", 1)[1] for line in tsv.read_text(encoding="utf-8").splitlines()[:2000]]
    return BUILT_IN


def smoke_model(tmp: Path, sms_zip: Path, tokenizer: Path) -> Path:
    """`python train.py experiment=smoke` then `python export.py`: the exported folder."""
    common = [f"data.tokenizer_file={tokenizer}"]
    subprocess.run(
        [sys.executable, "train.py", "experiment=smoke", f"runs_dir={tmp}", "run_name=smoke", f"data.source={sms_zip}",
         f"data.data_dir={tmp / 'data'}", "trainer.enable_progress_bar=false", *common],
        cwd=REPO, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    metrics = json.loads((tmp / "smoke" / "metrics.json").read_text())
    subprocess.run(
        [sys.executable, "export.py", f"ckpt_path={metrics['best_checkpoint']}", f"out_dir={tmp / 'export'}"],
        cwd=REPO, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return tmp / "export"


def random_124m_model(tmp: Path, tokenizer: Path) -> Path:
    """GPT-2 124M's shapes, random weights (seed 0), pool last_token, texts truncated to 120 tokens: exported."""
    import torch

    from spam_lightning.data.preprocess import Preprocessing, get_tokenizer
    from spam_lightning.inference.checkpoint import TrainedModel
    from spam_lightning.inference.export import write_export
    from spam_lightning.model.gpt import PRESETS, GPTModel
    from spam_lightning.model.net import SpamNet

    torch.manual_seed(0)
    net = SpamNet(GPTModel(PRESETS["gpt2"]), 2, "last_token").eval()
    pre = Preprocessing(labels=("ham", "spam"), max_length=120, pad_length=None, padding="batch", pool="last_token")
    write_export(TrainedModel(net, pre, {}), tmp / "gpt2-124m-random", get_tokenizer(str(tokenizer)), format="hf")
    return tmp / "gpt2-124m-random"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group_memory(pgid: int) -> tuple[int, int]:
    """(RSS, PSS) in bytes summed over the processes of a process group (Linux /proc). RSS counts the pages the
    processes share (torch's libraries, forked memory) once per process; PSS splits them among the sharers."""
    rss = pss = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with suppress(OSError, ValueError, IndexError):
            stat = Path(entry.path, "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) != pgid:  # field 5: the process group
                continue
            for line in Path(entry.path, "smaps_rollup").read_text().splitlines():
                if line.startswith(("Rss:", "Pss:")):
                    kib = int(line.split()[1]) * 1024
                    rss, pss = (rss + kib, pss) if line.startswith("Rss:") else (rss, pss + kib)
    return rss, pss


def call(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    response = conn.getresponse()
    return response.status, response.read()


def healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        return call(conn, "GET", "/health") == (200, b"ok")
    except OSError:
        return False
    finally:
        conn.close()


def run_mode(model_dir: Path, args: argparse.Namespace, texts: list[str], batching: bool) -> dict[str, Any]:
    port = free_port()
    batch = [f"max_batch_size={args.max_batch_size}", f"batch_timeout={args.batch_timeout}"] if batching else []
    command = [sys.executable, "serve.py", f"model_dir={model_dir}", f"port={port}", f"threads={args.threads}"]
    command += [*batch] if batching else ["max_batch_size=1"]
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while not healthy(port):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"serve.py did not start: {server.stderr.read() if server.stderr else ''}")
            time.sleep(0.3)
        return load(port, server.pid, args, texts) | {"batching": batching}
    finally:
        server.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            server.wait(timeout=30)
        with suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def load(port: int, pgid: int, args: argparse.Namespace, texts: list[str]) -> dict[str, Any]:
    warm = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for text in texts[:8]:
        call(warm, "POST", "/predict", json.dumps({"text": text}).encode())
    warm.close()
    latencies: list[float] = []
    counts = {"sent": 0, "ok": 0, "errors": 0, "lost": 0}
    lock = threading.Lock()
    stop = time.monotonic() + args.seconds
    peak = list(group_memory(pgid))
    done = threading.Event()

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = index
        while time.monotonic() < stop:
            with lock:
                if counts["sent"] >= args.max_requests:
                    break
                counts["sent"] += 1
            text = texts[i % len(texts)]
            i += args.clients
            start = time.perf_counter()
            try:
                status, body = call(conn, "POST", "/predict", json.dumps({"text": text}).encode())
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                with lock:
                    counts["lost"] += 1
                continue
            elapsed = time.perf_counter() - start
            good = status == 200 and json.loads(body).get("text") == text
            with lock:
                counts["ok" if good else "errors"] += 1
                if good:
                    latencies.append(elapsed)
        conn.close()

    def sample() -> None:
        while not done.wait(0.1):
            peak[:] = map(max, peak, group_memory(pgid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [float("nan")] * 99
    return {
        **counts,
        "seconds": wall,
        "requests_per_s": counts["ok"] / wall,
        "messages_per_s": counts["ok"] / wall,  # one message per request
        "p50_ms": 1000 * q[49],
        "p95_ms": 1000 * q[94],
        "p99_ms": 1000 * q[98],
        "peak_rss_mib": peak[0] / 2**20,
        "peak_pss_mib": peak[1] / 2**20,
        "healthy_after": healthy(port),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model-dir", type=Path, help="a folder written by export.py")
    model.add_argument("--smoke", action="store_true", help="train and export a smoke model first")
    model.add_argument("--random-124m", action="store_true", help="GPT-2 124M's shapes, random weights")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8, at most 256)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per mode (default 10, at most 300)")
    parser.add_argument("--max-requests", type=int, default=100_000, help="per mode, at most")
    parser.add_argument("--max-batch-size", type=int, default=8, help="batching on: max_batch_size (default 8)")
    parser.add_argument("--batch-timeout", type=float, default=0.01, help="batching on: batch_timeout (0.01 s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the model process (default 1)")
    parser.add_argument("--modes", default="on,off", help="batching on, off or both (default on,off)")
    parser.add_argument("--sms-zip", type=Path, default=SMS_ZIP)
    parser.add_argument("--texts", type=Path, default=SMS_TSV, help="the SMS TSV to take texts from (if present)")
    parser.add_argument("--tokenizer-file", type=Path, default=TOKENIZER)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if not (1 <= args.clients <= 256 and 0 < args.seconds <= 300 and args.max_requests >= 1):
        parser.error("--clients must be in 1..256, --seconds in (0, 300], --max-requests >= 1")
    modes = [m.strip() for m in args.modes.split(",")]
    if not modes or set(modes) - {"on", "off"}:
        parser.error("--modes: on, off or on,off")
    texts = texts_from(args.texts)
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        if args.smoke:
            model_dir, name = smoke_model(Path(tmp), args.sms_zip, args.tokenizer_file), "smoke"
        elif args.random_124m:
            model_dir, name = random_124m_model(Path(tmp), args.tokenizer_file), "124M (random)"
        else:
            model_dir, name = args.model_dir.absolute(), args.model_dir.name
        results = [run_mode(model_dir, args, texts, mode == "on") | {"model": name} for mode in modes]
    print(f"\n{args.clients} clients, {args.seconds:g} s per mode, one text per request, {os.cpu_count()} CPU cores, "
          f"threads={args.threads}; batching on: max_batch_size={args.max_batch_size}, "
          f"batch_timeout={args.batch_timeout}")  # fmt: skip
    print("| model | batching | requests | req/s | msg/s | p50 ms | p95 ms | p99 ms | errors | lost | peak RSS MiB "
          "| peak PSS MiB | /health after |")  # fmt: skip
    print("|---" * 13 + "|")
    for r in results:
        cells = [r["model"], "on" if r["batching"] else "off", r["ok"] + r["errors"], f"{r['requests_per_s']:.1f}"]
        cells += [f"{r['messages_per_s']:.1f}", *(f"{r[k]:.0f}" for k in ("p50_ms", "p95_ms", "p99_ms"))]
        cells += [
            r["errors"],
            r["lost"],
            f"{r['peak_rss_mib']:.0f}",
            f"{r['peak_pss_mib']:.0f}",
            "ok" if r["healthy_after"] else "NOT OK",
        ]
        print("| " + " | ".join(map(str, cells)) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if any(r["errors"] or r["lost"] or not r["healthy_after"] for r in results):
        raise SystemExit("errors, lost requests or an unhealthy server: see the table")


if __name__ == "__main__":
    main()
