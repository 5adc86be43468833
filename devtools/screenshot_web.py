"""Screenshot of the gateway's web page after classifying a photo (the README's picture).

    python -m devtools.screenshot_web PHOTO [--gateway http://localhost:9696] [--out docu/images/web.png]

Drives Debian's headless Chromium through Playwright (never downloads a browser);
the gateway must be running (`make serve`) with a trained model for a telling picture.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]  # fmt: skip
PHONE = {"width": 390, "height": 844}


def screenshot(gateway: str, photo: Path, out: Path) -> str:
    """Upload `photo` on the page, wait for the answer, save a full-page PNG; returns the label."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=PHONE)
            page.goto(gateway.rstrip("/") + "/")
            page.set_input_files("#file", str(photo))
            page.wait_for_selector("#result:not([hidden]), #status.error", timeout=60_000)
            if page.is_visible("#status.error"):
                raise SystemExit(f"the page shows an error: {page.text_content('#status')}")
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
            return page.text_content("#label") or ""
        finally:
            browser.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("photo", type=Path)
    parser.add_argument("--gateway", default="http://localhost:9696")
    parser.add_argument("--out", type=Path, default=Path("docu/images/web.png"))
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} not found: apt-get install chromium")
    label = screenshot(args.gateway, args.photo, args.out)
    print(f"{args.photo}: {label}; page saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
