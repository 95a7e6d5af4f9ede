"""Makes the nephos fixtures (`nephos`, `nephos_cloud`) available to the tests in this folder.

In your project, copy `nephos_pytest.py` next to your tests (or anywhere on `sys.path`) and
either import its fixtures here, as below, or run `pytest -p nephos_pytest`.
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from nephos_pytest import *  # noqa: E402,F401,F403
