#!/usr/bin/env python3
"""UDP request/response ping-pong: the fallback of `tapyard bench` when sockperf is
not installed. Results are labelled "python3 fallback": the interpreter adds
its own per-message cost (some microseconds), so compare these figures only
with figures from the same tool.

  pingpong.py server IP PORT            echo every datagram back to its sender
  pingpong.py client IP PORT SECONDS SIZE
      send SIZE bytes, wait for the echo, repeat back to back for SECONDS
      (after 0.2 s of warm-up); print "messages p50_us p99_us lost"
"""
import socket
import sys
import time


def server(ip, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port))
    buf = bytearray(65536)
    while True:
        n, peer = s.recvfrom_into(buf)
        s.sendto(memoryview(buf)[:n], peer)


def percentile(sorted_values, p):
    # nearest rank, as tapyard bench does for ping (cli/bench/schema.rs)
    if not sorted_values:
        return float("nan")
    k = max(1, min(len(sorted_values), int(-(-p * len(sorted_values) // 1))))
    return sorted_values[k - 1]


def client(ip, port, seconds, size):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((ip, port))
    s.settimeout(1.0)
    msg = bytes(size)
    rtts = []
    lost = 0
    clock = time.perf_counter_ns
    start = clock()
    warm_end = start + 200_000_000
    end = warm_end + int(seconds * 1e9)
    while True:
        t0 = clock()
        if t0 >= end:
            break
        s.send(msg)
        try:
            s.recv(65536)
        except socket.timeout:
            lost += 1
            continue
        t1 = clock()
        if t0 >= warm_end:
            rtts.append((t1 - t0) / 1000.0)
    rtts.sort()
    print(f"{len(rtts)} {percentile(rtts, 0.50):.1f} {percentile(rtts, 0.99):.1f} {lost}")


def main(argv):
    if len(argv) >= 4 and argv[1] == "server":
        server(argv[2], int(argv[3]))
    elif len(argv) >= 6 and argv[1] == "client":
        client(argv[2], int(argv[3]), float(argv[4]), int(argv[5]))
    else:
        sys.stderr.write(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
