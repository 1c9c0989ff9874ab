"""Gives a verdict through the worklist page in headless Chromium, as a radiologist would.

Usage: page_verdict.py URL TOKEN STUDY_UID RESULT_ID agree|disagree NOTE

Chromium is driven over the DevTools protocol: the page is opened, the token typed into the
form it shows, the study's row clicked, the note typed and the verdict's button clicked. Prints
the JSON {"said": <the page's text after recording>, "recorded": <the verdict's id>}.
"""
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket


def open_chromium():
    """Headless Chromium with a fresh profile, and its page's DevTools connection."""
    profile = tempfile.mkdtemp(prefix="chromium-")
    chromium = subprocess.Popen(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
         f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port = devtools_port(profile)
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        return chromium, Devtools(websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30))
    except BaseException:
        chromium.kill()
        raise


def main():
    url, token, study, result, verdict, note = sys.argv[1:7]
    chromium, cdp = open_chromium()
    try:
        cdp.call("Page.navigate", url=url)
        # the node has tokens: the page asks for one
        cdp.until("getComputedStyle(document.getElementById('token')).display === 'block'")
        cdp.run("document.getElementById('tokenInput').value = %s; document.getElementById('tokenSave').click()"
                % json.dumps(token))
        recorded, said = record_verdict(cdp, study, result, verdict, note)
        print(json.dumps({"said": said, "recorded": recorded}))
    finally:
        chromium.kill()
        chromium.wait()


def record_verdict(cdp, study, result, verdict, note):
    """Opens the study's row, types the note and clicks the verdict: (its id, what the page said)."""
    row = "document.querySelector('tr.study[data-uid=%s]')" % json.dumps(study)
    cdp.until(row)
    cdp.run(row + ".click()")
    form = "document.querySelector('.verdict[data-result=\"%s\"]')" % result
    cdp.until(form)
    cdp.run(form + ".querySelector('.note').value = %s" % json.dumps(note))
    cdp.run(form + ".querySelector('button[data-verdict=%s]').click()" % json.dumps(verdict))
    recorded = cdp.until(form + ".dataset.recorded")
    return int(recorded), cdp.run(form + ".querySelector('.said').textContent")


def devtools_port(profile):
    path = os.path.join(profile, "DevToolsActivePort")
    for _ in range(300):
        if os.path.exists(path):
            lines = open(path).read().split()
            if lines:
                return int(lines[0])
        time.sleep(0.1)
    sys.exit("chromium did not open its DevTools port")


class Devtools:
    def __init__(self, ws):
        self.ws, self.next_id = ws, 0

    def call(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self.next_id:
                if "error" in message:
                    sys.exit(f"{method}: {message['error']}")
                return message["result"]

    def run(self, expression):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            sys.exit(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def until(self, expression, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            # an element comes back as {} (returned by value): found all the same
            value = self.run(f"(() => {{ try {{ return {expression}; }} catch (e) {{ return null; }} }})()")
            if value is not None and value is not False and value != "":
                return value
            time.sleep(0.1)
        sys.exit(f"the page never showed: {expression}\n" + str(self.run("document.body.innerText")))


if __name__ == "__main__":
    main()
