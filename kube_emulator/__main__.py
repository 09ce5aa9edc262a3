"""``python -m kube_emulator``: serve the Kubernetes API EMULATOR until stopped."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType

from .controllers import MODES
from .emulator import KubeEmulator

BANNER = (
    "kube-emulator: this is an EMULATOR of the Kubernetes API for tests and sandboxes, "
    "NOT a cluster: objects are stored in memory and no container ever runs."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kube_emulator",
        description="Serve an in-memory EMULATOR of the Kubernetes API over plain HTTP (not a "
        "cluster: nothing runs; workload status is simulated).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=6443, help="port (0: pick a free one)")
    parser.add_argument("--kubeconfig", help="write a kubeconfig for the emulator to this path")
    parser.add_argument("--context", default="emulator", help="context name in the kubeconfig")
    parser.add_argument("--namespace", default="default", help="the kubeconfig's namespace")
    parser.add_argument(
        "--workloads",
        choices=MODES,
        default="ready",
        help="how Deployments, StatefulSets and Jobs roll out (default: ready)",
    )
    parser.add_argument(
        "--token-auth-file",
        help='static bearer tokens, kube-apiserver\'s CSV: token,user,uid,"group1,group2"',
    )
    parser.add_argument(
        "--anonymous-auth",
        action="store_true",
        help="requests without a token act as system:anonymous (default: 401, as on k3s)",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="log every request")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(message)s",
        stream=sys.stderr,
    )

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with KubeEmulator(
        args.port,
        host=args.host,
        workloads=args.workloads,
        token_file=args.token_auth_file,
        anonymous_auth=args.anonymous_auth,
    ) as kube:
        print(BANNER, flush=True)
        print(f"kube-emulator: serving at {kube.url} (workloads: {args.workloads})", flush=True)
        if args.kubeconfig:
            path = kube.write_kubeconfig(
                args.kubeconfig, context=args.context, namespace=args.namespace
            )
            print(
                f"kube-emulator: kubeconfig written to {path} (context {args.context!r}, "
                "an admin token: group system:masters)",
                flush=True,
            )
        print("kube-emulator: press Ctrl-C (or send SIGTERM) to stop", flush=True)
        stop.wait()
    print("kube-emulator: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
