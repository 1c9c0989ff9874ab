#!/usr/bin/env python3
"""An HL7 v2 receiver over MLLP for the tests: keeps every message it receives and answers
with the acknowledgment the test asks for.

  mllp_receiver.py --port 0 --out DIR [--answer AA|AE|AR|none] [--answer-file F] [--tls CERT KEY]

--port 0 picks a free port; the first line on stdout is then `listening on PORT` (flushed).
Each message is written to DIR/<n>.hl7 (n from 1, in arrival order), atomically (a temporary
file renamed), before it is answered, so a test that saw the ACK finds the file. The answer is
--answer, unless --answer-file names a file that exists: its content (AA, AE, AR or none) is
read for each message, so a test can change the answer while the receiver runs. `none` keeps
the connection open without answering. The ACK is MSH + MSA (MSA-2 = the received MSH-10), v2.5.1.
After each message, one line on stdout: `received N CONTROL_ID answered CODE`.
"""

import argparse
import datetime
import os
import socketserver
import ssl
import sys
import threading

START, END = b"\x0b", b"\x1c\x0d"
MAX_MESSAGE = 16 << 20
ANSWERS = ("AA", "AE", "AR", "none")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--out", required=True)
    parser.add_argument("--answer", choices=ANSWERS, default="AA")
    parser.add_argument("--answer-file")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    return parser.parse_args()


class Receiver:
    def __init__(self, args):
        self.args = args
        self.count = 0
        self.lock = threading.Lock()
        os.makedirs(args.out, exist_ok=True)

    def answer(self):
        if self.args.answer_file and os.path.exists(self.args.answer_file):
            with open(self.args.answer_file, encoding="utf-8") as f:
                answer = f.read().strip()
            if answer in ANSWERS:
                return answer
        return self.args.answer

    def keep(self, message: bytes) -> int:
        """Writes the message to DIR/<n>.hl7 atomically and returns n."""
        with self.lock:
            self.count += 1
            n = self.count
            path = os.path.join(self.args.out, f"{n}.hl7")
            tmp = path + ".tmp"
            with open(tmp, "wb") as f:
                f.write(message)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        return n


def say(line: str):
    """One line on stdout; a test that stopped reading it must not stop the receiver."""
    try:
        print(line, flush=True)
    except OSError:
        pass


def fields(message: bytes, name: str):
    text = message.decode("utf-8", errors="replace")
    for segment in text.replace("\n", "\r").split("\r"):
        if segment.startswith(name + "|"):
            return segment.split("|")
    return []


def ack(message: bytes, code: str, n: int) -> bytes:
    msh = fields(message, "MSH")
    get = lambda i: msh[i] if len(msh) > i else ""  # noqa: E731
    # split("|") puts MSH-2 at index 1, so MSH-n is at index n - 1.
    control_id = get(9)
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S+0000")
    text = "" if code == "AA" else f"|test receiver answers {code}"
    segments = [
        f"MSH|^~\\&|{get(4)}|{get(5)}|{get(2)}|{get(3)}|{now}||ACK^R01^ACK|ACK{n}|P|2.5.1",
        f"MSA|{code}|{control_id}{text}",
    ]
    return START + ("\r".join(segments) + "\r").encode("utf-8") + END


def read_frames(sock):
    """Yields each MLLP frame's content until the peer closes."""
    buffer = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return
        buffer += data
        while True:
            start = buffer.find(START)
            if start < 0:
                buffer = b""
                break
            end = buffer.find(END, start)
            if end < 0:
                if len(buffer) - start > MAX_MESSAGE:
                    return
                buffer = buffer[start:]
                break
            yield buffer[start + 1 : end]
            buffer = buffer[end + len(END) :]


def main():
    args = parse_args()
    receiver = Receiver(args)
    context = None
    if args.tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls[0], args.tls[1])

    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            sock = self.request
            if context is not None:
                try:
                    sock = context.wrap_socket(sock, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    say(f"TLS handshake failed: {e}")
                    return
            try:
                for message in read_frames(sock):
                    n = receiver.keep(message)
                    answer = receiver.answer()
                    msh = fields(message, "MSH")
                    control_id = msh[9] if len(msh) > 9 else ""
                    say(f"received {n} {control_id} answered {answer}")
                    if answer != "none":
                        sock.sendall(ack(message, answer, n))
            except (ConnectionError, ssl.SSLError, OSError):
                pass

    class Server(socketserver.ThreadingTCPServer):
        daemon_threads = True
        allow_reuse_address = True

    with Server((args.host, args.port), Handler) as server:
        print(f"listening on {server.server_address[1]}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    sys.exit(main())
