"""The floor under a request-response round trip on this machine: two processes echo 50
bytes over a loopback TCP connection (TCP_NODELAY), N times, one message in flight.

    python3 benches/tcp_pingpong.py               # wherever the scheduler puts them
    taskset -c 0 python3 benches/tcp_pingpong.py  # both on one CPU

Prints p50 and p99 of the round trip. docs/performance.md uses it to tell the cost of waking
an idle CPU from the cost of a Check.
"""

import os
import socket
import time

N = 20000


def main():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    if os.fork() == 0:
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = conn.recv(100)
            if not data:
                os._exit(0)
            conn.send(data)
    client = socket.create_connection(("127.0.0.1", port))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies = []
    for _ in range(N):
        t = time.perf_counter()
        client.send(b"x" * 50)
        client.recv(100)
        latencies.append(time.perf_counter() - t)
    client.close()
    os.wait()
    latencies.sort()
    print("p50 %.1f us, p99 %.1f us" % (latencies[N // 2] * 1e6, latencies[int(N * 0.99)] * 1e6))


if __name__ == "__main__":
    main()
