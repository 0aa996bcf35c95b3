#!/usr/bin/env python3
"""A tiny stateful TCP service: the thing the demo live-migrates.

It accepts ONE connection and answers every line ``N`` with ``N COUNT TOTAL``:
COUNT is how many messages it has received so far and TOTAL the sum of their
numbers. Both live only in this process's memory, so a client can tell from
the replies whether a migration lost, repeated or reordered anything, or lost
the service's state. It exits when the client closes the connection.

    python3 echo_service.py [--port 7000]

Standard library only; CRIU can checkpoint it like any other process (run it
with stdio on /dev/null or a file, not on a pipe or terminal you keep).
"""

from __future__ import annotations

import argparse
import socket


def serve(conn: socket.socket) -> None:
    count = total = 0
    with conn, conn.makefile("rb") as lines:
        for line in lines:
            n = int(line)
            count += 1
            total += n
            conn.sendall(f"{n} {count} {total}\n".encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=7000)
    args = parser.parse_args()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", args.port))
        srv.listen(1)
        conn, _ = srv.accept()
    serve(conn)


if __name__ == "__main__":
    main()
