"""The app as the public-Space tests serve it: `python tests/serve_app.py PORT MEMORY_BYTES DNS_LOG`.

What app.py does (build the demo, launch it with `launch_options()`), in a process of its own whose address space is
capped once the models are loaded (`RLIMIT_AS`: loaded size + MEMORY_BYTES), so a decode that escaped the decode
workers fails the test with a MemoryError instead of exhausting the machine; and every host name the process looks
up (`socket.getaddrinfo`) is appended to DNS_LOG, so a test can show that nothing was resolved for a client's URL.
"""

from __future__ import annotations

import resource
import socket
import sys
import threading


def main(port: int, memory_bytes: int, dns_log: str) -> None:
    lookup, log_lock = socket.getaddrinfo, threading.Lock()

    def recorded_getaddrinfo(host, *args, **kwargs):
        with log_lock, open(dns_log, "a", encoding="utf-8") as log:
            log.write(f"{host}\n")
        return lookup(host, *args, **kwargs)

    socket.getaddrinfo = recorded_getaddrinfo  # before the app is imported: nothing resolves unseen

    from chexreason.app import build_demo, configure_logging, launch_options

    configure_logging()
    demo = build_demo("tiny")
    with open("/proc/self/status", encoding="ascii") as status:
        loaded = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (loaded + memory_bytes, resource.RLIM_INFINITY))
    print(f"serving under RLIMIT_AS {(loaded + memory_bytes) / 2**30:.1f} GiB", flush=True)
    demo.launch(server_name="127.0.0.1", server_port=port, **launch_options())


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
