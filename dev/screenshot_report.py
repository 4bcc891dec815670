"""Screenshot a run's report.html in headless Chromium (Debian's package, driven by playwright).

    .venv/bin/python dev/screenshot_report.py RUN_DIR OUT.png [--full-page] [--colours 256]

After `refine demo`: `dev/screenshot_report.py runs/demo report.png --full-page --colours 256`.
No screenshot is kept in the repository (it went stale). It never downloads a browser: it needs
/usr/bin/chromium (apt-get install chromium). tests/test_report.py runs it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--full-page", action="store_true", help="the whole page, not one screen")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=900)
    parser.add_argument("--colours", type=int, help="reduce to this many colours: a smaller PNG")
    args = parser.parse_args()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": args.width, "height": args.height})
        page.goto((args.run_dir / "report.html").resolve().as_uri(), wait_until="load")
        page.screenshot(path=args.out, full_page=args.full_page)
        browser.close()
    if args.colours:
        image = Image.open(args.out).convert("RGB")
        image.quantize(
            args.colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
        ).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
