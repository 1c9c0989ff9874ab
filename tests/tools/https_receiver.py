#!/usr/bin/env python3
"""A FHIR server or webhook endpoint for tests: records every POST and answers what it is told.

Each request's body goes to OUT/<n>.json and its method, path, headers and the status answered to
OUT/<n>.headers.json (header names in lower case; n = 1, 2, ...; each file written to a temporary name and renamed, the body
first, so a reader that sees <n>.headers.json sees the whole request). The answer is --status, or
the first word of --status-file's content when that file exists (read at each request: a test
switches between 200, 503, 400 ... while the receiver runs); the rest of that file's content, if
any, is the OperationOutcome's diagnostics. 4xx and 5xx answers carry an OperationOutcome, 2xx a
transaction-response Bundle (FHIR) or {"ok": true}.

With --secret, the X-Pneumotriage-Signature header is checked (HMAC-SHA256 of the body, compared
in constant time) and "signature_ok" recorded. With --tls CERT KEY it speaks HTTPS (and with
--client-ca, requires a client certificate signed by it); plain HTTP otherwise.

usage: https_receiver.py --port P --out DIR [--tls CERT KEY [--client-ca CA]] [--status CODE]
                         [--status-file F] [--secret S]
Prints "listening on PORT" (the port chosen when P is 0) once it accepts connections.
"""

import argparse
import hashlib
import hmac
import json
import os
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 16 * 1024 * 1024
SIGNATURE_HEADER = "X-Pneumotriage-Signature"


def write_atomically(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def answer_for(args):
    """(status, diagnostics) for this request."""
    status, diagnostics = args.status, None
    if args.status_file and os.path.exists(args.status_file):
        with open(args.status_file, encoding="utf-8") as f:
            words = f.read().strip().split(None, 1)
        if words:
            status = int(words[0])
            diagnostics = words[1] if len(words) > 1 else None
    return status, diagnostics


def outcome(status, diagnostics):
    code = "transient" if status in (408, 429) or status >= 500 else "invalid"
    return {
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error",
            "code": code,
            "diagnostics": diagnostics or f"https_receiver answered {status} as told",
        }],
    }


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    counter = 0
    lock = threading.Lock()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.reply(413, outcome(413, "body too large"))
            return
        body = self.rfile.read(length)
        status, diagnostics = answer_for(self.server.args)
        with Receiver.lock:
            Receiver.counter += 1
            n = Receiver.counter
        record = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "status": status,
            "signature_ok": self.signature_ok(body),
        }
        out = self.server.args.out
        write_atomically(os.path.join(out, f"{n}.json"), body)
        write_atomically(os.path.join(out, f"{n}.headers.json"), json.dumps(record, indent=1).encode())
        if status >= 400:
            self.reply(status, outcome(status, diagnostics))
        elif "fhir" in (self.headers.get("Content-Type") or ""):
            self.reply(status, {"resourceType": "Bundle", "type": "transaction-response"})
        else:
            self.reply(status, {"ok": True})

    def signature_ok(self, body):
        secret = self.server.args.secret
        if secret is None:
            return None
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.headers.get(SIGNATURE_HEADER) or "")

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        fhir = "fhir" in (self.headers.get("Content-Type") or "")
        self.send_header("Content-Type", "application/fhir+json" if fhir else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        sys.stderr.write("https_receiver: " + (format % args) + "\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def finish_request(self, request, client_address):
        # The TLS handshake happens here, in the connection's thread, so that a slow or refused
        # client does not hold up the accept loop.
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                sys.stderr.write(f"https_receiver: TLS refused {client_address}: {e}\n")
                request.close()
                return
        super().finish_request(request, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--client-ca")
    parser.add_argument("--status", type=int, default=200)
    parser.add_argument("--status-file")
    parser.add_argument("--secret")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    server = Server(("127.0.0.1", args.port), Receiver)
    server.args = args
    server.tls = None
    if args.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(*args.tls)
        if args.client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(args.client_ca)
        server.tls = context
    print(f"listening on {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
