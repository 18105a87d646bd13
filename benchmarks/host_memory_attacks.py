"""Peak memory of the *host* process under each memory attack of the red-team pass (issue 13).

Each attack runs in a child Python process through ctxfold's public API (a sandbox whose cell
attacks the host, or an RLM whose scripted root model writes the attacking code). The parent
watches the child's resident memory and kills it past ``--cap-mb`` or ``--seconds``, so the
machine is never at risk. The sandbox worker is a separate process and is not counted: what is
measured is the host that a server would put in front of untrusted input.

    python benchmarks/host_memory_attacks.py            # every attack
    python benchmarks/host_memory_attacks.py batch frame --cap-mb 3000

Run it against another checkout (e.g. the code before a fix) with
``PYTHONPATH=/path/to/checkout/src python benchmarks/host_memory_attacks.py``.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from security.attack_helpers import (
    FIND_WORKER,
    FORGE_CALL_FRAME,
    SCRIPTED_RUN,
    run_watched,
)

_RAW_SERVER = """
import socket, threading
def serve_raw(respond):
    # A one-thread HTTP server on 127.0.0.1 answering each request with respond() bytes.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    def loop():
        while True:
            conn, _ = sock.accept()
            data = b""
            while b"\\r\\n\\r\\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\\r\\n\\r\\n")
            length = int([l.split(b":")[1] for l in head.split(b"\\r\\n")
                          if l.lower().startswith(b"content-length")][0])
            while len(body) < length:
                body += conn.recv(1 << 20)
            try:
                conn.sendall(respond())
            except OSError:
                pass
            conn.close()
    threading.Thread(target=loop, daemon=True).start()
    return f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
"""

_SANDBOX_CELL = """
from ctxfold.sandbox import ProcessSandbox
def handler(request):
    return {{}} if request.kind == "budget" else ["ok"] * len(request.items)
with ProcessSandbox() as sandbox:
    sandbox.start([], handler)
    result = sandbox.execute({cell!r}, timeout=120)
    print(result.stdout.strip(), (result.error or "")[:80], flush=True)
"""

_PATCH = FIND_WORKER + (
    'type(_find_worker())._restore_scaffold = lambda self: ["n" * 100] * 400_000\n'
    'print("patched")\n'
)

# Each attack: the code the child runs after SCRIPTED_RUN.
ATTACKS: dict[str, str] = {
    # 1. llm_batch of 300,000 tiny items on a budget of 100 sub-calls.
    "batch": """
run(["r = llm_batch([''] * 300_000)\\nprint(len(r), r[-1][:70])"],
    ScriptedModel(lambda m: "ok"), sub_calls=100)
""",
    # 2. One ~40 MB channel frame holding a list of tiny objects.
    "frame": _SANDBOX_CELL.format(cell=FORGE_CALL_FRAME.format(count=3_000_000)),
    # 3. Code patches the worker's scaffold so that a cell-result field carries ~40 MB.
    "restored": f"""
run([{_PATCH!r}, "print(1)", "print(2)"], ScriptedModel(lambda m: "ok"))
""",
    # 4. A 40 MB sub-call prompt to a server that reports no token usage.
    "tokens": """
from ctxfold.testing.fake_openai import FakeOpenAIServer
with FakeOpenAIServer("ok", include_usage=False) as server:
    run(["r = llm_query('word ' * 8_000_000)\\nprint(r[:60])"], f"openai:fake@{server.base_url}")
""",
    # 5. A sub-model server whose gzip reply inflates to 1 GiB.
    "inflate": _RAW_SERVER
    + """
import zlib
deflate = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip, built without holding 1 GiB
payload = b"".join([deflate.compress(b" " * (1 << 20)) for _ in range(1024)] + [deflate.flush()])
def respond():
    return (b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\n"
            b"Content-Encoding: gzip\\r\\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\\r\\n\\r\\n" + payload)
run(["r = llm_query('hello')\\nprint(r[:60])"], f"openai:fake@{serve_raw(respond)}")
""",
}


def run_attack(name: str, cap_mb: float, seconds: float) -> tuple[float, float, str]:
    """Run one attack in a watched child; (peak MB, seconds, outcome)."""
    started = time.monotonic()
    ran = run_watched(SCRIPTED_RUN + textwrap.dedent(ATTACKS[name]), cap_mb=cap_mb, seconds=seconds)
    elapsed = time.monotonic() - started
    if ran.returncode is None:
        return ran.peak_mb, elapsed, "killed at the memory cap or the time limit"
    last = [line for line in ran.output.splitlines() if line.strip()][-1:] or [""]
    return ran.peak_mb, elapsed, f"exit {ran.returncode}: {last[0][:90]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("attacks", nargs="*", help=f"some of: {', '.join(ATTACKS)} (default: all)")
    parser.add_argument("--cap-mb", type=float, default=6000, help="kill a child past this RSS")
    parser.add_argument("--seconds", type=float, default=240, help="kill a child after this")
    args = parser.parse_args()
    unknown = sorted(set(args.attacks) - set(ATTACKS))
    if unknown:
        parser.error(f"unknown attack(s): {', '.join(unknown)}")
    import ctxfold

    print(f"ctxfold from {Path(ctxfold.__file__).parent}")
    print("| attack | host peak RSS (MB) | seconds | outcome |\n|---|---|---|---|")
    for name in args.attacks or list(ATTACKS):
        peak, elapsed, outcome = run_attack(name, args.cap_mb, args.seconds)
        print(f"| {name} | {peak:,.0f} | {elapsed:.1f} | {outcome} |", flush=True)


if __name__ == "__main__":
    main()
