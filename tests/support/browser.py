"""Where the browser tests find Chromium (Debian's; Playwright's own download fails here) and keep their screenshots."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("MICROSCOPE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("MICROSCOPE_TEST_ARTIFACTS") or ROOT / "test-artifacts")
# Without these, Chromium keeps reaching for Google's hosts, which this network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
