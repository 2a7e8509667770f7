"""The plugin the worker hosts of ``tests/test_hosts.py`` load: one slow operation, nothing else.

Not ``tilechord_testplugin``: that one records every task message into Redis from a hook
inside the publish, on a connection of its own with no timeouts, so a host whose link is
cut would hang there and the fault tests would measure the test plugin, not tilechord.
"""

from __future__ import annotations

import time

from PIL import Image

import tilechord

#: The plugin's module name, for ``Settings(plugins=...)`` and ``TILECHORD_PLUGINS``.
HOSTS_PLUGINS = ("hosts_plugin",)


@tilechord.operation("host_sleep", kind="pixel", bounds={"seconds": (0, 120)})
def host_sleep(image: Image.Image, seconds: float = 1.0) -> Image.Image:
    """Sleep, then return the image unchanged: a tile that lasts long enough to be hit mid-way."""
    if image.width * image.height > 100:  # not on the client's tiny dry-run image
        time.sleep(seconds)
    return image.copy()
