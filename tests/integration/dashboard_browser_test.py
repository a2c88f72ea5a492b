#!/usr/bin/env python3
"""The dashboard in a real browser: headless Chromium driven by chromedriver.

A protected pair (ftvm primary and secondary, a shared-memory channel, each with
--metrics, --peer-metrics pointing at the other, and --dashboard-actions) runs on
this host. The test loads the primary's dashboard, waits until it shows the pair
protected, takes a screenshot and checks it (a PNG of the window's size, the pair
badge green, the page not blank), clicks the drill button (twice: the first click
arms it), and waits until the page shows the failover: the primary unreachable,
the secondary live, a last-failover line with its downtime, the pair badge no longer
green. It speaks WebDriver's HTTP/JSON protocol itself (the standard library only).

Environment: FTVM_BIN, FTVM_GUEST (meson sets them); CHROMIUM and CHROMEDRIVER
override /usr/bin/chromium and /usr/bin/chromedriver. Exit 0 pass, 1 fail, 77 skip
(no chromium or chromedriver: scripts/setup.sh installs them).
"""
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zlib

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"  # WebDriver's element reference key
WINDOW = (1100, 900)


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        raise Failure(f"{method} {url}: HTTP {e.code}: {e.read()[:500]!r}")


def wait_for(what, fn, timeout):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Failure as e:
            last = str(e)
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            last = str(e)
        time.sleep(0.2)
    raise Failure(f"timed out waiting for {what} (last: {last!r})")


class WebDriver:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"
        self.session = None

    def start(self, chromium):
        caps = {"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                # As root Chromium needs --no-sandbox; no GPU here.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         f"--window-size={WINDOW[0]},{WINDOW[1]}", "--force-device-scale-factor=1"],
            }}}}
        self.session = http("POST", self.base + "/session", caps)["value"]["sessionId"]

    def cmd(self, method, path, body=None):
        return http(method, f"{self.base}/session/{self.session}{path}", body)["value"]

    def find(self, css):
        return self.cmd("POST", "/element", {"using": "css selector", "value": css})[ELEMENT]

    def text(self, css):
        return self.cmd("GET", f"/element/{self.find(css)}/text")

    def quit(self):
        if self.session:
            try:
                http("DELETE", f"{self.base}/session/{self.session}", timeout=20)
            except Exception:
                pass


def png_info(png):
    """(width, height, rows(n)): rows(n) gives the first n rows as lists of RGB tuples."""
    check(png[:8] == b"\x89PNG\r\n\x1a\n", "the screenshot is not a PNG")
    pos, idat, ihdr = 8, b"", None
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        chunk = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    check(ihdr is not None, "the PNG has no header")
    width, height, depth, colour, _, _, interlace = ihdr
    check(depth == 8 and colour in (2, 6) and interlace == 0, f"unexpected PNG format {ihdr}")
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp

    def rows(n):
        out, prev = [], bytearray(stride)
        for y in range(min(n, height)):
            f = raw[y * (stride + 1)]
            line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                if f == 1:
                    line[i] = (line[i] + a) & 255
                elif f == 2:
                    line[i] = (line[i] + b) & 255
                elif f == 3:
                    line[i] = (line[i] + (a + b) // 2) & 255
                elif f == 4:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            out.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(width)])
            prev = line
        return out

    return width, height, rows


def screenshot(wd, path):
    wd.cmd("POST", "/execute/sync", {"script": "window.scrollTo(0, 0);", "args": []})
    png = base64.b64decode(wd.cmd("GET", "/screenshot"))
    with open(path, "wb") as f:
        f.write(png)
    return png


def badge_colour(wd, png, css):
    """The colour inside the left padding of the badge at `css`, and the PNG's size."""
    # Where it is in the viewport (the screenshot's frame; WebDriver's element rect
    # is relative to the document, which a click may have scrolled).
    rect = wd.cmd("POST", "/execute/sync", {
        "script": "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
                  "return {x: r.left, y: r.top, width: r.width, height: r.height};", "args": [css]})
    width, height, rows = png_info(png)
    x, y = int(rect["x"]) + 5, int(rect["y"] + rect["height"] / 2)
    check(0 <= x < width and 0 <= y < height, f"badge {css} at {rect} is outside the screenshot")
    return rows(y + 1)[y][x], (width, height), rows


def main():
    ftvm, guest = os.environ.get("FTVM_BIN"), os.environ.get("FTVM_GUEST")
    if not ftvm or not guest:
        print("FTVM_BIN and FTVM_GUEST must be set (meson test sets them)")
        return 1
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    chromedriver = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
    for tool in (chromium, chromedriver):
        if not shutil.which(tool):
            print(f"SKIP: {tool} is not installed (scripts/setup.sh installs chromium and chromium-driver)")
            return 77
    work = tempfile.mkdtemp(prefix="ftvm-dashboard-")
    os.mkdir(os.path.join(work, "arbiter"))
    p_port, s_port, d_port = free_port(), free_port(), free_port()
    p_addr, s_addr = f"127.0.0.1:{p_port}", f"127.0.0.1:{s_port}"
    channel = "shm:" + os.path.join(work, "channel.sock")
    procs = {}

    def start(name, args):
        err = open(os.path.join(work, name + ".err"), "w")
        procs[name] = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)

    def stderr_of(name):
        with open(os.path.join(work, name + ".err")) as f:
            return f.read()

    start("primary", [ftvm, "primary", "--listen", channel, "--arbiter", os.path.join(work, "arbiter"),
                      "--guest", guest, "--app", "timers", "--arg", "ticks=1000000", "--arg", "period_us=5000",
                      "--console", os.path.join(work, "primary.console"), "--name", "host-a", "--vm-name", "web1",
                      "--metrics", p_addr, "--peer-metrics", s_addr, "--dashboard-actions"])
    start("secondary", [ftvm, "secondary", "--connect", channel, "--arbiter", os.path.join(work, "arbiter"),
                        "--console", os.path.join(work, "secondary.console"), "--name", "host-b",
                        "--metrics", s_addr, "--peer-metrics", p_addr, "--dashboard-actions"])
    start("chromedriver", [chromedriver, f"--port={d_port}"])
    wd = WebDriver(d_port)
    try:
        wait_for("chromedriver", lambda: http("GET", wd.base + "/status", timeout=5)["value"]["ready"], 30)
        wait_for("the pair to be protected",
                 lambda: '"state":"protected"' in urllib.request.urlopen(
                     f"http://{s_addr}/api/status", timeout=5).read().decode(), 60)
        wd.start(chromium)
        wd.cmd("POST", "/url", {"url": f"http://{p_addr}/"})

        # The page shows the pair protected, and both sides.
        wait_for("the page to show the pair PROTECTED", lambda: wd.text("#pair-state") == "PROTECTED", 30)
        wait_for("the peer's card", lambda: "host-b" in wd.text("#side-peer") and "secondary" in wd.text("#side-peer"),
                 30)
        self_card = wd.text("#side-self")
        check("host-a" in self_card and "primary" in self_card, f"this VMM's card: {self_card!r}")
        check(wd.text("#vm") == "VM web1", f"the VM's name: {wd.text('#vm')!r}")
        time.sleep(1.5)  # a few samples in the plots
        inner = wd.cmd("POST", "/execute/sync",
                       {"script": "return [window.innerWidth, window.innerHeight];", "args": []})
        png = screenshot(wd, os.path.join(work, "protected.png"))
        colour, size, rows = badge_colour(wd, png, "#pair-state")
        check(list(size) == inner, f"screenshot {size} is not the window's size {inner}")
        r, g, b = colour
        check(g > r + 60 and g > b + 40, f"the PROTECTED badge is not green: {colour}")
        distinct = {px for row in rows(200) for px in row[::7]}
        check(len(distinct) > 20, f"the page looks blank ({len(distinct)} colours in its top rows)")

        # The drill: the first click arms the button, the second sends it.
        drill = wd.find("#drill")
        check(wd.cmd("GET", f"/element/{drill}/enabled"), "the drill button is disabled")
        wd.cmd("POST", f"/element/{drill}/click", {})
        check(wd.text("#drill").startswith("Confirm"), f"the drill button did not arm: {wd.text('#drill')!r}")
        wd.cmd("POST", f"/element/{drill}/click", {})
        wait_for("the drill's answer", lambda: "ends now as if its host died" in wd.text("#message"), 20)
        code = procs["primary"].wait(timeout=30)
        check(code == 6, f"the primary exited {code}, not 6 (ended by the drill)\n{stderr_of('primary')}")

        # The page shows the failover: the secondary live, the old primary gone.
        line = wait_for("the failover line",
                        lambda: (lambda t: t if "Last failover: host-b" in t else "")(wd.text("#failover")), 60)
        check("took over at position" in line and "downtime" in line and " ms" in line, f"failover line: {line!r}")
        wait_for("the secondary LIVE", lambda: "LIVE" in wd.text("#side-peer .state"), 30)
        wait_for("this VMM shown unreachable", lambda: "UNREACHABLE" in wd.text("#side-self .state"), 30)
        pair = wd.text("#pair-state")
        check(pair.startswith("UNPROTECTED"), f"pair badge after the failover: {pair!r}")
        png = screenshot(wd, os.path.join(work, "failed-over.png"))
        colour, _, _ = badge_colour(wd, png, "#pair-state")
        r, g, b = colour
        check(r > g and r > b + 100, f"the UNPROTECTED badge is not orange: {colour}")
        print(f"PASS: screenshots in {work}")
        return 0
    except Failure as e:
        print(f"FAIL: {e}\nwork dir {work}\n--- primary\n{stderr_of('primary')[-3000:]}\n"
              f"--- secondary\n{stderr_of('secondary')[-3000:]}\n--- chromedriver\n{stderr_of('chromedriver')[-2000:]}")
        return 1
    finally:
        wd.quit()
        for name, p in procs.items():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


if __name__ == "__main__":
    sys.exit(main())
