"""`python -m devtools.wait_ready URL [--timeout S]`: wait until a deployed gateway is ready.

Polls URL/readyz (200 only when the gateway reaches the model and the model is
loaded) so `make compose-test`, `kind-test` and `eks-test` start sending photos
only when the stack can answer; a fresh EKS load balancer's DNS name, for one,
takes minutes to resolve. Standard library only: runs in the gateway venv.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request


def wait_ready(base_url: str, timeout: float, interval: float = 3.0) -> str:
    """'' once GET base_url/readyz answers 200, else the last problem seen at the deadline."""
    url = base_url.rstrip("/") + "/readyz"
    deadline = time.monotonic() + timeout
    problem = "no answer yet"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=min(10.0, timeout)) as response:
                if response.status == 200:
                    return ""
                problem = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code}: {exc.read(300).decode('utf-8', 'replace')}"
        except (urllib.error.URLError, OSError) as exc:
            problem = str(getattr(exc, "reason", exc))
        if time.monotonic() + interval > deadline:
            return problem
        time.sleep(interval)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="gateway base URL, e.g. http://localhost:9696")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    args = parser.parse_args(argv)
    print(f"waiting up to {args.timeout:g} s for {args.url}/readyz ...", flush=True)
    problem = wait_ready(args.url, args.timeout)
    if problem:
        print(f"not ready after {args.timeout:g} s: {problem}", file=sys.stderr)
        return 1
    print("ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
