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
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

_COMMON = """
import json, os, socket, threading, time, zlib
import ctxfold
from ctxfold import Budget, RLM
from ctxfold.models import ScriptedModel

def code(src):
    return "Running.\\n```python\\n" + src + "\\n```"

def scripted_run(cells, sub_model, **budget):
    replies = [code(c) for c in cells] + [code("answer['content'] = 'x'; answer['ready'] = True")]
    root = ScriptedModel(replies * 2)
    rlm = RLM(root, sub_model, budget=Budget(iterations=len(cells) + 2, **budget),
              prompt_profile="concise")
    try:
        result = rlm.run("q", "some input")
    finally:
        rlm.close()
    print("stop:", result.stop_reason, "sub_calls:", result.usage.sub_calls, flush=True)

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

# Each attack: the code the child runs after _COMMON.
ATTACKS: dict[str, str] = {
    # 1. llm_batch of 300,000 tiny items on a budget of 100 sub-calls.
    "batch": """
scripted_run(["r = llm_batch([''] * 300_000)\\nprint(len(r), r[-1][:70])"],
             ScriptedModel(lambda m: "ok"), sub_calls=100)
""",
    # 2. One ~40 MB channel frame holding a list of tiny objects.
    "frame": """
from ctxfold.sandbox import ProcessSandbox
def handler(request):
    return {} if request.kind == "budget" else ["ok"] * len(request.items)
forge = '''
import os, struct, json
pipes = []
for fd in map(int, os.listdir('/proc/self/fd')):
    try:
        if fd > 2 and os.readlink(f'/proc/self/fd/{fd}').startswith('pipe:'):
            pipes.append(fd)
    except OSError:
        pass
body = b'{"op":"call","id":99,"kind":"llm","items":[' + b','.join([b'{"prompt":""}'] * 3_000_000) + b']}'
for fd in pipes:
    try:
        os.write(fd, struct.pack('>I', len(body)) + body)
    except OSError:
        pass
import time; time.sleep(3)
print('sent', len(body))
'''
with ProcessSandbox() as sandbox:
    sandbox.start([], handler)
    result = sandbox.execute(forge, timeout=120)
    print(result.stdout.strip(), (result.error or '')[:80], flush=True)
""",
    # 3. Code patches the worker's scaffold so that a cell-result field carries ~40 MB.
    "restored": """
patch = '''
def _find(fn, seen=None):
    for cell in fn.__closure__ or ():
        value = cell.cell_contents
        if type(value).__name__ == "_Worker":
            return value
        if callable(value) and getattr(value, "__closure__", None):
            found = _find(value)
            if found is not None:
                return found
w = _find(llm_query)
type(w)._restore_scaffold = lambda self: ["n" * 100] * 400_000
print("patched")
'''
scripted_run([patch, "print(1)", "print(2)"], ScriptedModel(lambda m: "ok"))
""",
    # 4. A 40 MB sub-call prompt to a server that reports no token usage.
    "tokens": """
from ctxfold.testing.fake_openai import FakeOpenAIServer
with FakeOpenAIServer("ok", include_usage=False) as server:
    sub = f"openai:fake@{server.base_url}"
    scripted_run(["r = llm_query('word ' * 8_000_000)\\nprint(r[:60])"], sub)
""",
    # 5. A sub-model server whose gzip reply inflates to 1 GiB.
    "inflate": """
deflate = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip, built without holding 1 GiB
payload = b"".join([deflate.compress(b" " * (1 << 20)) for _ in range(1024)] + [deflate.flush()])
def respond():
    return (b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Encoding: gzip\\r\\n"
            b"Content-Length: " + str(len(payload)).encode() + b"\\r\\n\\r\\n" + payload)
url = serve_raw(respond)
scripted_run(["r = llm_query('hello')\\nprint(r[:60])"], f"openai:fake@{url}")
""",
}


def _rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of ``pid`` in MB, from /proc."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) / 1024
    except (OSError, ValueError):
        pass
    return values["VmRSS"], values["VmHWM"]


def run_attack(name: str, cap_mb: float, seconds: float) -> tuple[float, float, str]:
    """Run one attack in a child; (peak MB, seconds, outcome)."""
    source = _COMMON + textwrap.dedent(ATTACKS[name])
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-c", source],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    peak, outcome = 0.0, ""
    while child.poll() is None:
        rss, hwm = _rss_mb(child.pid)
        peak = max(peak, hwm, rss)
        elapsed = time.monotonic() - started
        if rss > cap_mb or elapsed > seconds:
            child.kill()
            outcome = f"killed at {'the memory cap' if rss > cap_mb else 'the time limit'}"
            break
        time.sleep(0.02)
    output, _ = child.communicate()
    elapsed = time.monotonic() - started
    if not outcome:
        last = [line for line in output.splitlines() if line.strip()][-1:] or [""]
        outcome = f"exit {child.returncode}: {last[0][:90]}"
    return peak, elapsed, outcome


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
