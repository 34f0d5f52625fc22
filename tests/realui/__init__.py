"""The real Proxmox VE web UI in headless Chromium: see tests/test_realui.py."""
