#!/usr/bin/env python3
"""Drives `lmforge serve` with the official `openai` Python package: a completion, a chat
completion, a streamed chat completion (with usage), a listing of models, and an error, printing
what the client got. Installs `openai` from PyPI into a throwaway venv on first use.

  python3 scripts/check_openai_client.py LMFORGE_BINARY MODEL_DIR [--adapter DIR]
  python3 scripts/check_openai_client.py --url http://127.0.0.1:8080/v1   (a running server)

Exit status 0 when every call succeeded and the schemas parsed in the client."""
import argparse, os, subprocess, sys, tempfile, venv

def ensure_openai():
    try:
        import openai  # noqa: F401
        return
    except ImportError:
        pass
    env = os.path.join(tempfile.gettempdir(), "lmforge-openai-client")
    py = os.path.join(env, "bin", "python")
    if not os.path.exists(py):
        venv.create(env, with_pip=True)
    subprocess.check_call([py, "-m", "pip", "install", "-q", "openai"])
    os.execv(py, [py] + sys.argv)

ensure_openai()
import openai  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("lmforge", nargs="?")
ap.add_argument("model", nargs="?")
ap.add_argument("--adapter")
ap.add_argument("--url")
args = ap.parse_args()

server = None
if args.url:
    base = args.url
else:
    cmd = [args.lmforge, "serve", "--model", args.model, "--port", "0", "--model-id", "lmforge-model"]
    if args.adapter:
        cmd += ["--adapter", args.adapter]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = server.stdout.readline().strip()
    base = line.removeprefix("listening on ") + "/v1"
print(f"openai {openai.__version__} -> {base}")
client = openai.OpenAI(base_url=base, api_key="unused")
try:
    model = client.models.list().data[0].id
    print(f"models.list: {model}")
    prompt = "Summarize in one line:\nThe ls command lists information about the files in a directory.\n"
    c = client.completions.create(model=model, prompt=prompt, max_tokens=16, temperature=0, logprobs=2)
    print(f"completions.create: finish={c.choices[0].finish_reason} usage={c.usage.model_dump()} text={c.choices[0].text!r}")
    print(f"  logprobs[0]: {c.choices[0].logprobs.tokens[0]!r} {c.choices[0].logprobs.token_logprobs[0]:.4f}")
    messages = [{"role": "system", "content": "Answer in one line."},
                {"role": "user", "content": "What does ls do?"}]
    r = client.chat.completions.create(model=model, max_tokens=24, temperature=0, messages=messages)
    print(f"chat.completions.create: finish={r.choices[0].finish_reason} usage={r.usage.model_dump()} "
          f"content={r.choices[0].message.content!r}")
    pieces, usage, finish = [], None, None
    for chunk in client.chat.completions.create(model=model, max_tokens=24, temperature=0, stream=True,
                                                stream_options={"include_usage": True}, messages=messages):
        if chunk.usage:
            usage = chunk.usage.model_dump()
        for ch in chunk.choices:
            pieces.append(ch.delta.content or "")
            finish = ch.finish_reason or finish
    print(f"chat stream: {len(pieces)} chunks, finish={finish} usage={usage} content={''.join(pieces)!r}")
    assert "".join(pieces) == r.choices[0].message.content, "the stream differs from the response"
    try:
        client.completions.create(model=model, prompt="x", max_tokens=100000)
        raise SystemExit("an over-long request was accepted")
    except openai.BadRequestError as e:
        print(f"error as the client sees it: {e.status_code} {e.body['message'][:90]}...")
    print("ok")
finally:
    if server:
        server.terminate()
        server.wait()
