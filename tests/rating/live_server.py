"""A `sparrow rate serve --scripted` process on 127.0.0.1 and a stdlib HTTP rater for it (restart and
load tests). Every loop here is bounded by a deadline."""
import http.cookiejar
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: str, port: int, *extra: str, timeout: float = 60.0) -> subprocess.Popen:
    """Start the server and wait until it answers (at most `timeout` s). Its output goes to `<db>.log`
    (a pipe nobody reads would fill and block the server's logging)."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    log = open(db + ".log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "sparrow_jax", "rate", "serve", "--scripted", "--db", db,
                             "--host", "127.0.0.1", "--port", str(port), *extra],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    log.close()
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            with open(db + ".log") as f:
                raise RuntimeError(f"the server exited with {proc.returncode}: {f.read()}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise TimeoutError(f"the server did not answer within {timeout} s")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class Rater:
    """One signed-in rater session over real HTTP."""

    def __init__(self, port: int, token: str, timeout: float = 30.0):
        self.base, self.timeout = f"http://127.0.0.1:{port}", timeout
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()), _NoRedirect())
        self.csrf = _csrf(self.get("/login")[1])
        status, _ = self.post("/login", {"token": token})
        assert status == 303, status
        self.csrf = _csrf(self.get("/")[1])

    def _open(self, request) -> tuple[int, str]:
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                return response.status, response.read().decode("utf-8")
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode("utf-8", "replace")

    def get(self, path: str) -> tuple[int, str]:
        return self._open(urllib.request.Request(self.base + path))

    def post(self, path: str, form: dict) -> tuple[int, str]:
        body = urllib.parse.urlencode({**form, "csrf_token": self.csrf}).encode()
        return self._open(urllib.request.Request(self.base + path, data=body, method="POST"))

    def compare_once(self, chosen: int = 0) -> tuple[str, int, float]:
        """Fetch the next comparison and answer it: (item id, status, seconds the submit took)."""
        _, html = self.get("/compare")
        item_id = re.search(r'name="item_id" value="([^"]+)"', html).group(1)
        form = {"item_id": item_id, "chosen": str(chosen)}
        for k in set(re.findall(r'name="supported_(\d+)"', html)):
            form[f"supported_{k}"] = form[f"plausible_{k}"] = "yes"
        start = time.perf_counter()
        status, _ = self.post("/compare", form)
        return item_id, status, time.perf_counter() - start


def _csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
