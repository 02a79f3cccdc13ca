"""The conformance suite every binder passes (Watermill-style), one pytest test per scenario.

A binder hooks in with a short test file that provides one fixture,
``binder_config`` (the binder's options as under ``binder.binders.<name>``,
``type`` included), and imports the suite::

    import pytest
    from binder.testing.conformance import *  # noqa: F403

    @pytest.fixture
    def binder_config():
        return {"type": "kafka", "bootstrap-servers": "localhost:9092"}

Capabilities come from the binder type itself
(``binder.plugins.binder_types()[type].capabilities``). A scenario whose
capability the binder lacks is skipped with the reason ``binder lacks
<capability>``; one that tolerates redelivery compares after de-duplication.
Each scenario runs on its own fresh destination and group, and every
destination it declared is deleted with ``Binder.delete`` when it ends.
``BINDER_CONFORMANCE_TIMEOUT`` (seconds, default 10) bounds each wait.

``required-groups`` is checked with ``consumer_groups`` alone: the producer
creates the group up front, so even a backend that does not replay to new
groups keeps what was sent before the group's consumer started.

The scenarios, by theme: :mod:`.delivery`, :mod:`.groups`, :mod:`.partitions`,
:mod:`.retries`, :mod:`.lifecycle`, :mod:`.failures`, :mod:`.timing` (delays, expiry,
delayed retries), :mod:`.tools` (what ``binder groups`` and ``binder dlq`` need); their
fixtures are in :mod:`.fixtures`.
"""

from binder.testing.conformance import (
    delivery,
    failures,
    fixtures,
    groups,
    lifecycle,
    partitions,
    retries,
    timing,
    tools,
)
from binder.testing.conformance.delivery import *  # noqa: F403
from binder.testing.conformance.failures import *  # noqa: F403
from binder.testing.conformance.fixtures import *  # noqa: F403
from binder.testing.conformance.groups import *  # noqa: F403
from binder.testing.conformance.lifecycle import *  # noqa: F403
from binder.testing.conformance.partitions import *  # noqa: F403
from binder.testing.conformance.retries import *  # noqa: F403
from binder.testing.conformance.timing import *  # noqa: F403
from binder.testing.conformance.tools import *  # noqa: F403

__all__ = [
    *fixtures.__all__,
    *delivery.__all__,
    *failures.__all__,
    *groups.__all__,
    *lifecycle.__all__,
    *partitions.__all__,
    *retries.__all__,
    *timing.__all__,
    *tools.__all__,
]
