"""The volume id of the brick-store tests: ``tests/unit/conftest.py``'s ``store``
fixture opens its brick with it, and tests that reopen that brick use it too."""

from __future__ import annotations

import uuid

VOL = str(uuid.uuid4())
