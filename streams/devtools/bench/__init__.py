"""``safeguard bench``: our consumer against its peers, in one run, on one machine.

Every mode uses the same embedded broker, the same simulated replica profile and time scale, and
the same events. See :mod:`streams.devtools.bench.runner` for what each mode measures.
"""

from __future__ import annotations
