"""What the tests and the benchmark both drive from the outside: pgparent as a process, its /metrics, its /proc.

Not part of the installed package (the demo, which ships, keeps its own small /metrics reader). Each module is one
concern, its API small and kept stable for both callers:

- `harness.waiting`: `eventually(fn)`, the one way to wait for something to become true;
- `harness.metrics`: an exposition's samples by name and labels (prometheus_client's parser), and one scrape;
- `harness.proc`: what Linux's /proc says about a process (CPU seconds, threads, sockets, memory);
- `harness.daemon`: `pgparent run` as a real process, with its config file, JSON logs, /metrics and signals;
- `harness.proxy`: a TCP proxy that can black-hole a connection without closing it;
- `harness.terminal`: a real terminal (tmux) to type keys into and read the screen of (`pgparent top`).
"""
