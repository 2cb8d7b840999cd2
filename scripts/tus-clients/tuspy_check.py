# tuspy against a real coffer: a multi-MiB file in chunks (sha1 checksums on), interrupted by
# kill -9 of the server (restarted on the same root and port) and, separately, by a dropped
# connection (a relay that cuts one PATCH off); each resumes from the server's offset to the
# exact sha256.
import hashlib, json, os, socket, subprocess, sys, threading, time, urllib.request
from tusclient import client

BIN, WORK = sys.argv[1], sys.argv[2]
MIB = 1024 * 1024

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

PORT = free_port()
BASE = f"http://127.0.0.1:{PORT}"
ENV = dict(os.environ,
           COFFER_SECRET_KEY=subprocess.check_output([BIN, "gen-secret"]).decode().strip(),
           COFFER_STORAGE__ROOT=os.path.join(WORK, "tuspy-storage"),
           COFFER_SERVER__BIND=f"127.0.0.1:{PORT}",
           COFFER_AUTH__ARGON2_MEMORY_KIB="1024", COFFER_AUTH__ARGON2_ITERATIONS="1",
           COFFER_RATE_LIMIT__LOGIN_PER_MINUTE="1000", COFFER_LOG__LEVEL="warn",
           # A dead PATCH's lock is a lease of twice this (at least 10 s).
           COFFER_LIMITS__UPLOAD_IDLE_TIMEOUT_SECS="2")

def start():
    err = open(os.path.join(WORK, "tuspy-server.err"), "ab")
    p = subprocess.Popen([BIN, "serve"], env=ENV, cwd=WORK, stdout=subprocess.PIPE, stderr=err)
    line = p.stdout.readline().decode()
    assert line.startswith("coffer listening on"), f"coffer did not start: {line!r}"
    return p

def call(method, path, token=None, body=None):
    req = urllib.request.Request(BASE + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"null")

def data(seed, n):
    """n bytes of UTF-8 text (a .txt upload), different per seed."""
    out, i = bytearray(), 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}{i}".encode()).hexdigest().encode() + b"\n"
        i += 1
    return bytes(out[:n])

def stored_sha256(token, upload_url):
    file_id = upload_url.rstrip("/").rsplit("/", 1)[1]
    return call("GET", f"/api/v1/files/{file_id}", token)["sha256"]

server = start()
try:
    call("POST", "/api/v1/auth/register", body={"username": "tuspy", "email": "tuspy@example.com",
                                                 "password": "Correct-Horse-9"})
    token = call("POST", "/api/v1/auth/login", body={"username": "tuspy",
                                                     "password": "Correct-Horse-9"})["access_token"]
    headers = {"Authorization": f"Bearer {token}"}

    # 1. kill -9 mid-upload, restart, resume.
    payload = data("kill", 6 * MIB + 12345)
    tus = client.TusClient(BASE + "/api/v1/uploads", headers=headers)
    up = tus.uploader(file_stream=__import__("io").BytesIO(payload), chunk_size=MIB,
                      metadata={"filename": "killed.txt"}, upload_checksum=True)
    up.upload(stop_at=2 * MIB)
    assert up.offset == 2 * MIB, up.offset
    server.kill()
    server.wait()
    try:
        up.upload_chunk()
        raise AssertionError("a PATCH to a dead server succeeded")
    except Exception:
        pass
    server = start()
    again = tus.uploader(file_stream=__import__("io").BytesIO(payload), chunk_size=MIB,
                         url=up.url, upload_checksum=True)
    resumed = again.offset
    assert 0 < resumed <= 3 * MIB, resumed
    again.upload()
    assert stored_sha256(token, up.url) == hashlib.sha256(payload).hexdigest()
    print(f"== tuspy: killed (-9) at {2 * MIB} bytes, resumed from {resumed}, exact sha256: ok")

    # 2. A dropped connection: a relay cuts the first PATCH off after 1.5 MiB.
    relay_port = free_port()
    cut = {"done": False}
    def pipe(src, dst, count):
        sent = 0
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                if count and not cut["done"] and sent + len(b) > 3 * MIB // 2:
                    cut["done"] = True
                    raise ConnectionError("cut")
                sent += len(b)
                dst.sendall(b)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
    def relay():
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", relay_port))
        ls.listen()
        while True:
            c, _ = ls.accept()
            u = socket.create_connection(("127.0.0.1", PORT))
            threading.Thread(target=pipe, args=(c, u, True), daemon=True).start()
            threading.Thread(target=pipe, args=(u, c, False), daemon=True).start()
    threading.Thread(target=relay, daemon=True).start()
    time.sleep(0.2)
    via = client.TusClient(f"http://127.0.0.1:{relay_port}/api/v1/uploads", headers=headers)
    payload = data("drop", 5 * MIB + 777)
    up = via.uploader(file_stream=__import__("io").BytesIO(payload), chunk_size=4 * MIB,
                      metadata={"filename": "dropped.txt"})
    try:
        up.upload()
        raise AssertionError("the relay did not cut the upload off")
    except AssertionError:
        raise
    except Exception:
        pass
    assert cut["done"]
    time.sleep(0.5)
    again = via.uploader(file_stream=__import__("io").BytesIO(payload), chunk_size=4 * MIB,
                         url=up.url)
    resumed = again.offset
    assert resumed <= 3 * MIB // 2, resumed
    again.upload()
    assert stored_sha256(token, up.url) == hashlib.sha256(payload).hexdigest()
    print(f"== tuspy: connection dropped, resumed from {resumed}, exact sha256: ok")
finally:
    server.kill()
    server.wait()
